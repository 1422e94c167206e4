/*
 * tests/unit/check_server.c - the server's own parsers: token-id arrays
 * read without a cJSON node per id (srv_parse_json_ids) - which arrays are
 * taken, that strings and other values are left as they were, that a
 * client cannot forge the stand-in object - and the JSON body checks.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/srv.h"
#include "tests/unit/suites.h"

/* "[a, a+1, ..., a+n-1]" with the given separator. */
static char *int_list(int a, int n, const char *sep)
{
    size_t cap = (size_t)n * 16 + 8, k = 0;
    char *s = malloc(cap);
    k += (size_t)snprintf(s + k, cap - k, "[");
    for (int i = 0; i < n; i++)
        k += (size_t)snprintf(s + k, cap - k, "%s%d", i ? sep : "", a + i);
    snprintf(s + k, cap - k, "]");
    return s;
}

static cJSON *parse(const char *body, struct srv_ids *ids, struct srv_error *err)
{
    return srv_parse_json_ids(body, strlen(body), ids, err);
}

START_TEST(long_int_arrays_become_runs)
{
    char *list = int_list(100, 40, ", "), *nested1 = int_list(-5, 33, ","), body[4096];
    snprintf(body, sizeof(body), "{\"prompt\": %s, \"more\": [%s, [1, 2]], \"n\": 2}", list,
             nested1);
    struct srv_ids ids;
    struct srv_error err;
    cJSON *o = parse(body, &ids, &err);
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(ids.n_runs, 2);
    const int32_t *v;
    int n;
    ck_assert(srv_ids_get(&ids, cJSON_GetObjectItem(o, "prompt"), &v, &n));
    ck_assert_int_eq(n, 40);
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(v[i], 100 + i);
    const cJSON *more = cJSON_GetObjectItem(o, "more");
    ck_assert(srv_ids_get(&ids, more->child, &v, &n));
    ck_assert_int_eq(n, 33);
    ck_assert_int_eq(v[0], -5);
    ck_assert_int_eq(v[32], 27);
    /* a short array stays an array; other values are untouched */
    ck_assert(cJSON_IsArray(more->child->next));
    ck_assert(!srv_ids_get(&ids, more->child->next, &v, &n));
    ck_assert_int_eq(cJSON_GetObjectItem(o, "n")->valueint, 2);
    cJSON_Delete(o);
    srv_ids_free(&ids);
    free(list);
    free(nested1);
}
END_TEST

START_TEST(strings_and_non_integers_are_left_alone)
{
    char *list = int_list(1, 40, ","), body[4096];
    /* in a string (after an escaped quote, too), with a float, past int32, with a leading zero */
    snprintf(body, sizeof(body),
             "{\"a\": \"x\\\"%s\", \"b\": [1.5, %s, \"c\": [3000000000, %s, \"d\": %s}", list,
             list + 1, list + 1, list);
    struct srv_ids ids;
    struct srv_error err;
    cJSON *o = parse(body, &ids, &err);
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(ids.n_runs, 1); /* only d */
    char want[1024];
    snprintf(want, sizeof(want), "x\"%s", list);
    ck_assert_str_eq(cJSON_GetObjectItem(o, "a")->valuestring, want);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "b")), 41);
    ck_assert(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "c"), 0)->valuedouble == 3e9);
    const int32_t *v;
    int n;
    ck_assert(srv_ids_get(&ids, cJSON_GetObjectItem(o, "d"), &v, &n) && n == 40);
    cJSON_Delete(o);
    srv_ids_free(&ids);
    /* leading zeros are not JSON integers: left to cJSON (which takes them, as before) */
    char *odd = int_list(0, 40, ",0");
    snprintf(body, sizeof(body), "{\"d\": %s}", odd);
    o = parse(body, &ids, &err);
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(ids.n_runs, 0);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "d")), 40);
    cJSON_Delete(o);
    srv_ids_free(&ids);
    free(odd);
    free(list);
}
END_TEST

START_TEST(the_stand_in_cannot_be_forged)
{
    char *list = int_list(7, 40, ","), body[4096];
    struct srv_ids ids;
    struct srv_error err;
    cJSON *o = parse("{\"prompt\": {\"\\u0001\": 0}}", &ids, &err);
    const int32_t *v;
    int n;
    ck_assert_ptr_nonnull(o);
    ck_assert(!srv_ids_get(&ids, cJSON_GetObjectItem(o, "prompt"), &v, &n));
    cJSON_Delete(o);
    srv_ids_free(&ids);
    /* with a real run present, neither an old-style key nor a guessed one aliases it */
    snprintf(body, sizeof(body),
             "{\"x\": %s, \"p\": {\"\\u0001\": 0}, \"q\": {\"ids-0000000000000000\": 0}}", list);
    o = parse(body, &ids, &err);
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(ids.n_runs, 1);
    ck_assert(srv_ids_get(&ids, cJSON_GetObjectItem(o, "x"), &v, &n));
    ck_assert(!srv_ids_get(&ids, cJSON_GetObjectItem(o, "p"), &v, &n));
    ck_assert(!srv_ids_get(&ids, cJSON_GetObjectItem(o, "q"), &v, &n));
    cJSON_Delete(o);
    srv_ids_free(&ids);
    free(list);
}
END_TEST

START_TEST(bodies_are_checked_as_before)
{
    struct srv_ids ids;
    struct srv_error err;
    ck_assert_ptr_null(parse("[1, 2]", &ids, &err));
    ck_assert_uint_eq(err.status, 400);
    ck_assert_ptr_null(parse("{\"a\": 1} x", &ids, &err));
    ck_assert_ptr_null(parse("{\"a\": \"\\u0000\"}", &ids, &err));
    ck_assert_ptr_null(parse("{\"a\": \"\x01\"}", &ids, &err));
    ck_assert_ptr_null(parse("{\"a\": \"\xff\"}", &ids, &err));
    ck_assert(strstr(err.message, "UTF-8") != NULL);
}
END_TEST

Suite *server_suite(void)
{
    Suite *s = suite_create("server");
    TCase *tc = tcase_create("ids");
    tcase_add_test(tc, long_int_arrays_become_runs);
    tcase_add_test(tc, strings_and_non_integers_are_left_alone);
    tcase_add_test(tc, the_stand_in_cannot_be_forged);
    tcase_add_test(tc, bodies_are_checked_as_before);
    suite_add_tcase(s, tc);
    return s;
}

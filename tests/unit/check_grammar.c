/*
 * tests/unit/check_grammar.c - the grammar engine: schemas, regexes, GBNF
 * and choices against accepting and rejecting texts (the schema and regex
 * cases are tests/fixtures/grammar_cases.json, checked against python's
 * jsonschema and re by tests/fixtures/make_grammar_cases.py), refusals
 * that name what they refuse, and token masks against a slow reference
 * that tries every token of the real vocabulary.
 */
#include <check.h>
#include <pthread.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine/engine.h"
#include "grammar/gram.h"
#include "tests/unit/suites.h"
#include "tokenizer/tokenizer.h"

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)len + 1);
    if (p && fread(p, 1, (size_t)len, f) != (size_t)len) {
        free(p);
        p = NULL;
    }
    fclose(f);
    if (p) {
        p[len] = 0;
        *n = (size_t)len;
    }
    return p;
}

static cJSON *cases(void)
{
    size_t n;
    char *s = slurp("tests/fixtures/grammar_cases.json", &n);
    ck_assert_msg(s, "tests/fixtures/grammar_cases.json is missing");
    cJSON *c = cJSON_Parse(s);
    free(s);
    ck_assert(c);
    return c;
}

/* 1 when the whole text is a sentence of g. */
static int matches(struct gram *g, const char *text, size_t n)
{
    struct gram_matcher *m;
    ck_assert_int_eq(gram_matcher_create(g, &m), 0);
    int ok = gram_feed(m, text, n) == 0 && gram_can_end(m);
    gram_matcher_destroy(m);
    return ok;
}

static struct gram *compile(enum gram_kind k, const char *src, char *err, size_t errlen)
{
    struct gram *g = NULL;
    int rc = gram_compile(k, src, strlen(src), NULL, NULL, &g, err, errlen);
    return rc ? NULL : g;
}

/* Runs every accept / reject list of the cases under key; returns the failures. */
static int run_cases(const cJSON *list, const char *src_key, enum gram_kind kind, int *n_texts)
{
    int bad = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, list)
    {
        const cJSON *src = cJSON_GetObjectItem(c, src_key);
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        char *text = cJSON_IsString(src) ? strdup(src->valuestring) : cJSON_PrintUnformatted(src);
        char err[512];
        struct gram *g = compile(kind, text, err, sizeof(err));
        free(text);
        if (!g) {
            fprintf(stderr, "case %s: does not compile: %s\n", name, err);
            bad++;
            continue;
        }
        static const char *const lists[] = {"accept", "reject", "reject_grammar"};
        for (int l = 0; l < 3; l++) {
            const cJSON *t;
            cJSON_ArrayForEach(t, cJSON_GetObjectItem(c, lists[l]))
            {
                int want = l == 0;
                int got = matches(g, t->valuestring, strlen(t->valuestring));
                (*n_texts)++;
                if (got != want) {
                    fprintf(stderr, "case %s: %s %s but should be %s\n", name, t->valuestring,
                            got ? "accepted" : "rejected", want ? "accepted" : "rejected");
                    bad++;
                }
            }
        }
        gram_unref(g);
    }
    return bad;
}

START_TEST(schemas_accept_and_reject_what_jsonschema_says)
{
    cJSON *c = cases();
    const cJSON *list = cJSON_GetObjectItem(c, "schema_cases");
    ck_assert_int_ge(cJSON_GetArraySize(list), 100);
    int n = 0;
    int bad = run_cases(list, "schema", GRAM_JSON_SCHEMA, &n);
    ck_assert_msg(bad == 0, "%d of %d schema texts judged wrongly (see stderr)", bad, n);
    cJSON_Delete(c);
}
END_TEST

START_TEST(regexes_accept_and_reject_what_python_re_says)
{
    cJSON *c = cases();
    int n = 0;
    int bad = run_cases(cJSON_GetObjectItem(c, "regex_cases"), "regex", GRAM_REGEX, &n);
    ck_assert_msg(bad == 0, "%d of %d regex texts judged wrongly (see stderr)", bad, n);
    cJSON_Delete(c);
}
END_TEST

START_TEST(unsupported_schema_keywords_are_refused_by_name_and_path)
{
    cJSON *c = cases();
    const cJSON *u;
    int bad = 0;
    cJSON_ArrayForEach(u, cJSON_GetObjectItem(c, "unsupported"))
    {
        char *text = cJSON_PrintUnformatted(cJSON_GetObjectItem(u, "schema"));
        const char *kw = cJSON_GetObjectItem(u, "keyword")->valuestring;
        const char *path = cJSON_GetObjectItem(u, "path")->valuestring;
        char err[512] = "", want_kw[128], want_path[300];
        struct gram *g = NULL;
        int rc =
            gram_compile(GRAM_JSON_SCHEMA, text, strlen(text), NULL, NULL, &g, err, sizeof(err));
        snprintf(want_kw, sizeof(want_kw), "'%s'", kw);
        snprintf(want_path, sizeof(want_path), "at '%s'", path);
        if (rc != -EINVAL || !strstr(err, want_kw) || !strstr(err, want_path)) {
            fprintf(stderr, "unsupported %s: rc %d, message \"%s\" (wanted %s %s)\n", text, rc, err,
                    want_kw, want_path);
            bad++;
        }
        gram_unref(g);
        free(text);
    }
    cJSON_ArrayForEach(u, cJSON_GetObjectItem(c, "regex_unsupported"))
    {
        const char *re = cJSON_GetObjectItem(u, "regex")->valuestring;
        const char *what = cJSON_GetObjectItem(u, "construct")->valuestring;
        char err[512] = "";
        struct gram *g = compile(GRAM_REGEX, re, err, sizeof(err));
        if (g || !strstr(err, what) || !strstr(err, "not supported")) {
            fprintf(stderr, "regex %s: message \"%s\" (wanted %s)\n", re, err, what);
            bad++;
        }
        gram_unref(g);
    }
    ck_assert_msg(bad == 0, "%d refusals did not name what they refuse", bad);
    cJSON_Delete(c);
}
END_TEST

START_TEST(gbnf_grammars_in_llama_cpp_syntax)
{
    /* llama.cpp's grammars/json.gbnf, as users have it */
    const char *json =
        "root   ::= object\n"
        "value  ::= object | array | string | number | (\"true\" | \"false\" | \"null\") ws\n"
        "object ::=\n"
        "  \"{\" ws (\n"
        "            string \":\" ws value\n"
        "    (\",\" ws string \":\" ws value)*\n"
        "  )? \"}\" ws\n"
        "array  ::=\n"
        "  \"[\" ws (\n"
        "            value\n"
        "    (\",\" ws value)*\n"
        "  )? \"]\" ws\n"
        "string ::=\n"
        "  \"\\\"\" (\n"
        "    [^\"\\\\\\x7F\\x00-\\x1F] |\n"
        "    \"\\\\\" ([\"\\\\bfnrt] | \"u\" [0-9a-fA-F]{4}) # escapes\n"
        "  )* \"\\\"\" ws\n"
        "number ::= (\"-\"? ([0-9] | [1-9] [0-9]{0,15})) (\".\" [0-9]+)? ([eE] [-+]? [0-9] "
        "[1-9]{0,15})? ws\n"
        "# Optional space: by convention, applied in this grammar after literal chars when "
        "allowed\n"
        "ws ::= | \" \" | \"\\n\" [ \\t]{0,20}\n";
    char err[256];
    struct gram *g = compile(GRAM_GBNF, json, err, sizeof(err));
    ck_assert_msg(g, "json.gbnf: %s", err);
    static const char *const yes[] = {"{}", "{\"a\": [1, 2.5, -3e4, \"x\\n\", true, null]}",
                                      "{\"é\":{\"b\":[]}}"};
    static const char *const no[] = {"[]", "{\"a\" 1}", "{\"a\":01}", "{'a':1}",
                                     "{\"a\":\"\x01\"}"};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        ck_assert_msg(matches(g, yes[i], strlen(yes[i])), "json.gbnf refuses %s", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        ck_assert_msg(!matches(g, no[i], strlen(no[i])), "json.gbnf accepts %s", no[i]);
    gram_unref(g);
    /* repetition bounds, classes with code points, dot, alternatives on a new line */
    g = compile(GRAM_GBNF,
                "root ::= greeting \" \" name{1,2} \"!\"?\n"
                "greeting ::= \"hi\"\n | \"hello\"\n"
                "name ::= [A-Z] [a-zé-ü]* | [\\u4e00-\\u9fff]+ | \"<\" . \">\"\n",
                err, sizeof(err));
    ck_assert_msg(g, "%s", err);
    ck_assert(matches(g, "hi Ann!", 7));
    ck_assert(matches(g, "hello AnnBé", strlen("hello AnnBé")));
    ck_assert(matches(g, "hi 中文", strlen("hi 中文")));
    ck_assert(matches(g, "hi <\n>", 6));
    ck_assert(!matches(g, "hi ann", 6));
    ck_assert(!matches(g, "hi AnnBobCy", 11));
    ck_assert(!matches(g, "hey Ann", 7));
    gram_unref(g);
}
END_TEST

START_TEST(gbnf_errors_name_the_problem)
{
    static const struct {
        const char *src, *want;
    } bad[] = {
        {"root ::= foo\n", "'foo' is used but not defined"},
        {"start ::= \"a\"\n", "no rule 'root'"},
        {"root ::= root \"a\" | \"b\"\n", "left-recursive"},
        {"root ::= x\nx ::= y? x \"a\"\ny ::= \"b\"\n", "left-recursive"},
        {"root ::= \"a\n", "closing quote"},
        {"root ::= \"a\"\nroot ::= \"b\"\n", "defined twice"},
        {"root ::= [b-a]\n", "before its start"},
        {"root ::= \"a\"{3,1}\n", "n < m"},
        {"root ::= <|tok|>\n", "token references"},
        {"root ::= (\"a\"\n", "closing )"},
        {"root \"a\"\n", "::="},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char err[256] = "";
        struct gram *g = compile(GRAM_GBNF, bad[i].src, err, sizeof(err));
        ck_assert_msg(!g, "accepted: %s", bad[i].src);
        ck_assert_msg(strstr(err, bad[i].want), "%s: message \"%s\" lacks \"%s\"", bad[i].src, err,
                      bad[i].want);
    }
}
END_TEST

START_TEST(choices_and_json_object)
{
    char err[256];
    struct gram *g =
        compile(GRAM_CHOICE, "[\"positive\", \"negative\", \"neutral\"]", err, sizeof(err));
    ck_assert_msg(g, "%s", err);
    ck_assert(matches(g, "negative", 8));
    ck_assert(!matches(g, "neg", 3));
    ck_assert(!matches(g, "negatives", 9));
    gram_unref(g);
    ck_assert(!compile(GRAM_CHOICE, "[1, 2]", err, sizeof(err)));
    ck_assert(strstr(err, "array of strings"));
    ck_assert(!compile(GRAM_CHOICE, "[]", err, sizeof(err)));
    g = compile(GRAM_JSON_OBJECT, "", err, sizeof(err));
    ck_assert_msg(g, "%s", err);
    ck_assert(matches(g, "{\"a\": [1, {\"b\": null}]}", strlen("{\"a\": [1, {\"b\": null}]}")));
    ck_assert(!matches(g, "[1]", 3));
    ck_assert(!matches(g, "{\"a\": }", 7));
    gram_unref(g);
}
END_TEST

#define MATCHES(g, s) matches(g, s, strlen(s))

START_TEST(tool_calls_follow_the_tools_schemas)
{
    char err[256];
    const char *weather = "{\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\", "
                          "\"properties\": {\"city\": {\"type\": \"string\"}, \"unit\": {\"enum\": "
                          "[\"c\", \"f\"]}}, \"required\": [\"city\", \"unit\"]}}";
    char src[1024];
    /* Hermes: each call in its tags, parallel calls on their own lines */
    snprintf(src, sizeof src,
             "{\"tools\": [%s, {\"name\": \"now\"}], \"call_prefix\": \"<tool_call>\\n\", "
             "\"call_suffix\": \"\\n</tool_call>\", \"sep\": \"\\n\", \"min\": 1, \"max\": -1}",
             weather);
    struct gram *g = compile(GRAM_TOOL_CALLS, src, err, sizeof(err));
    ck_assert_msg(g, "%s", err);
    const char *one =
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", "
        "\"unit\": \"c\"}}\n</tool_call>";
    ck_assert(MATCHES(g, one));
    char two[512];
    snprintf(two, sizeof two,
             "%s\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>", one);
    ck_assert(MATCHES(g, two));
    ck_assert(!MATCHES(g, "")); /* min 1 */
    ck_assert(!MATCHES(g, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
                          "\"Paris\"}}\n</tool_call>")); /* unit is required */
    ck_assert(
        !MATCHES(g, "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>"));
    ck_assert(
        !MATCHES(g, "Sure! <tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>"));
    gram_unref(g);
    /* Mistral: one list after a marker; a named choice allows one call only */
    snprintf(src, sizeof src,
             "{\"tools\": [%s], \"prefix\": \"[TOOL_CALLS][\", \"suffix\": \"]\", \"sep\": \", \", "
             "\"max\": 1}",
             weather);
    g = compile(GRAM_TOOL_CALLS, src, err, sizeof(err));
    ck_assert_msg(g, "%s", err);
    ck_assert(
        MATCHES(g, "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", "
                   "\"unit\": \"f\"}}]"));
    ck_assert(!MATCHES(g, "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": "
                          "\"Oslo\", \"unit\": \"f\"}}, {\"name\": \"get_weather\", \"arguments\": "
                          "{\"city\": \"Oslo\", \"unit\": \"f\"}}]"));
    gram_unref(g);
    /* Llama 3: "parameters" instead of "arguments" */
    snprintf(src, sizeof src, "{\"tools\": [%s], \"args_key\": \"parameters\"}", weather);
    g = compile(GRAM_TOOL_CALLS, src, err, sizeof(err));
    ck_assert_msg(g, "%s", err);
    ck_assert(MATCHES(g,
                      "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\", \"unit\": "
                      "\"c\"}}"));
    gram_unref(g);
    /* bad specs and bad schemas name the problem */
    ck_assert(!compile(GRAM_TOOL_CALLS, "{\"tools\": []}", err, sizeof(err)));
    ck_assert_msg(strstr(err, "non-empty tools"), "%s", err);
    ck_assert(!compile(GRAM_TOOL_CALLS, "{\"tools\": [{\"parameters\": {}}]}", err, sizeof(err)));
    ck_assert_msg(strstr(err, "tools[0] needs a name"), "%s", err);
    ck_assert(!compile(GRAM_TOOL_CALLS,
                       "{\"tools\": [{\"name\": \"a\", \"parameters\": {\"type\": \"object\", "
                       "\"propertyNames\": {}}}]}",
                       err, sizeof(err)));
    ck_assert_msg(strstr(err, "/tools/0/parameters"), "%s", err);
}
END_TEST

START_TEST(limits_are_errors_not_hangs)
{
    char err[256];
    struct gram_limits lim;
    gram_limits_default(&lim);
    lim.max_depth = 8;
    /* nesting past max_depth */
    char deep[512] = "";
    for (int i = 0; i < 20; i++)
        strcat(deep, "{\"type\":\"array\",\"items\":");
    strcat(deep, "true");
    for (int i = 0; i < 20; i++)
        strcat(deep, "}");
    struct gram *g = NULL;
    ck_assert_int_eq(
        gram_compile(GRAM_JSON_SCHEMA, deep, strlen(deep), NULL, &lim, &g, err, sizeof(err)),
        -E2BIG);
    ck_assert_msg(strstr(err, "deep"), "%s", err);
    /* element count */
    lim.max_depth = 64;
    lim.max_positions = 1000;
    const char *big = "root ::= \"a\"{5000}\n";
    ck_assert_int_eq(gram_compile(GRAM_GBNF, big, strlen(big), NULL, &lim, &g, err, sizeof(err)),
                     -E2BIG);
    const char *wide = "{\"type\":\"string\",\"maxLength\":100000}";
    ck_assert_int_eq(
        gram_compile(GRAM_JSON_SCHEMA, wide, strlen(wide), NULL, &lim, &g, err, sizeof(err)),
        -E2BIG);
    /* source size */
    lim.max_source = 10;
    ck_assert_int_eq(gram_compile(GRAM_GBNF, big, strlen(big), NULL, &lim, &g, err, sizeof(err)),
                     -E2BIG);
    /* an ambiguous grammar: the stacks double with each byte until the limit */
    gram_limits_default(&lim);
    lim.max_stacks = 64;
    const char *amb = "root ::= x*\nx ::= \"a\" | \"a\" | \"aa\"\n";
    g = NULL;
    ck_assert_int_eq(gram_compile(GRAM_GBNF, amb, strlen(amb), NULL, &lim, &g, err, sizeof(err)),
                     0);
    struct gram_matcher *m;
    ck_assert_int_eq(gram_matcher_create(g, &m), 0);
    char as[200];
    memset(as, 'a', sizeof(as));
    int rc = gram_feed(m, as, sizeof(as));
    ck_assert_msg(rc == 0 || rc == -E2BIG, "rc %d", rc);
    gram_matcher_destroy(m);
    gram_unref(g);
}
END_TEST

/* ---- masks on the real vocabulary ---- */

struct vocab_fixture {
    struct eng_vocab *ev;
    const struct tok *t;
    struct gram_vocab *v;
    int n;
    const char **bytes;
    size_t *lens;
};

static void vocab_open(struct vocab_fixture *f)
{
    char err[256];
    ck_assert_msg(eng_vocab_open(test_model_path(), NULL, &f->ev, err, sizeof(err)) == 0, "%s",
                  err);
    f->t = eng_vocab_tok(f->ev);
    f->n = (int)tok_n_vocab(f->t);
    f->bytes = calloc((size_t)f->n, sizeof(*f->bytes));
    f->lens = calloc((size_t)f->n, sizeof(*f->lens));
    for (int i = 0; i < f->n; i++) {
        enum tok_type ty = tok_type(f->t, i);
        if (ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_UNKNOWN || ty == TOK_TYPE_UNUSED)
            continue;
        f->bytes[i] = tok_piece(f->t, i, 0, &f->lens[i]);
    }
    ck_assert_int_eq(gram_vocab_create(f->n, f->bytes, f->lens, &f->v, err, sizeof(err)), 0);
}

static void vocab_close(struct vocab_fixture *f)
{
    gram_vocab_destroy(f->v);
    free(f->bytes);
    free(f->lens);
    eng_vocab_close(f->ev);
}

/*
 * Walks doc's tokens; at every `every`-th step and the last the mask must
 * hold exactly the tokens whose bytes the grammar accepts after the text so
 * far (tried one by one).
 */
static void masks_match_reference_every(struct vocab_fixture *f, enum gram_kind kind,
                                        const char *src, const char *doc, int every)
{
    char err[256];
    struct gram *g = NULL;
    ck_assert_msg(gram_compile(kind, src, strlen(src), f->v, NULL, &g, err, sizeof(err)) == 0, "%s",
                  err);
    int32_t *ids = NULL;
    int64_t n_ids = tok_encode_alloc(f->t, doc, strlen(doc), 0, &ids);
    ck_assert_int_gt(n_ids, 0);
    struct gram_matcher *m, *ref;
    ck_assert_int_eq(gram_matcher_create(g, &m), 0);
    ck_assert_int_eq(gram_matcher_create(g, &ref), 0);
    uint32_t *mask = malloc(sizeof(uint32_t) * (size_t)((f->n + 31) / 32));
    size_t done = 0; /* bytes of doc consumed */
    for (int64_t k = 0; k < n_ids; k++) {
        ck_assert_int_ge(gram_mask(m, mask), 0);
        if (k % every && k != n_ids - 1) {
            ck_assert_msg((mask[ids[k] >> 5] >> (ids[k] & 31)) & 1, "token %d of %s not allowed",
                          (int)k, doc);
            ck_assert_int_eq(gram_accept_token(m, ids[k]), 0);
            done += f->lens[ids[k]];
            continue;
        }
        int wrong = 0;
        for (int t = 0; t < f->n; t++) {
            gram_matcher_reset(ref);
            ck_assert_int_eq(gram_feed(ref, doc, done), 0);
            int want = f->lens[t] && gram_feed(ref, f->bytes[t], f->lens[t]) == 0;
            int got = (mask[t >> 5] >> (t & 31)) & 1;
            if (want != got && wrong++ < 3)
                fprintf(stderr, "step %lld after \"%.*s\": token %d '%.*s' %s the mask\n",
                        (long long)k, (int)done, doc, t, (int)f->lens[t], f->bytes[t],
                        got ? "wrongly in" : "missing from");
        }
        ck_assert_msg(!wrong, "%d tokens wrong at step %lld of %s", wrong, (long long)k, doc);
        ck_assert_int_eq(gram_accept_token(m, ids[k]), 0);
        done += f->lens[ids[k]];
    }
    ck_assert(gram_can_end(m));
    free(mask);
    free(ids);
    gram_matcher_destroy(ref);
    gram_matcher_destroy(m);
    gram_unref(g);
}

static void masks_match_reference(struct vocab_fixture *f, enum gram_kind kind, const char *src,
                                  const char *doc)
{
    masks_match_reference_every(f, kind, src, doc, 1);
}

START_TEST(masks_equal_trying_every_token)
{
    struct vocab_fixture f;
    vocab_open(&f);
    masks_match_reference(
        &f, GRAM_JSON_SCHEMA,
        "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":12},"
        "\"age\":{\"type\":\"integer\",\"minimum\":-3,\"maximum\":120},\"tags\":{\"type\":"
        "\"array\",\"items\":{\"enum\":[\"a b\",\"x\\\"y\"]},\"maxItems\":3},\"when\":{\"type\":"
        "\"string\",\"format\":\"date\"}},\"required\":[\"name\",\"age\"]}",
        "{\n  \"name\": \"Ann \\\"é\\\"\",\n  \"age\": -3,\n  \"tags\": [\"x\\\"y\", \"a b\"],"
        " \"when\": \"2024-11-30\"}");
    masks_match_reference(&f, GRAM_REGEX, "\\(\\d{3}\\) [a-z]+(, [a-z]+)*\\.", "(123) abc, de.");
    masks_match_reference(&f, GRAM_GBNF,
                          "root ::= item (\"\\n\" item)*\nitem ::= \"- \" [^\\n]{1,30}\n",
                          "- milk\n- eggs and ham");
    vocab_close(&f);
}
END_TEST

START_TEST(masks_deep_in_long_repetitions_equal_trying_every_token)
{
    /* repetitions longer than any token: positions more than a token's
     * length above the chain's bottom share one table (gram_tables_build) */
    struct vocab_fixture f;
    vocab_open(&f);
    char doc[512];
    const char *words = "Forty-two quick brown foxes jumped over thirty lazy dogs, twice; ";
    size_t n = 0;
    doc[n++] = '"';
    for (; n < 1 + 210; n++)
        doc[n] = words[(n - 1) % strlen(words)];
    doc[n++] = '"';
    doc[n] = '\0';
    masks_match_reference_every(
        &f, GRAM_JSON_SCHEMA, "{\"type\":\"string\",\"minLength\":150,\"maxLength\":214}", doc, 6);
    masks_match_reference_every(&f, GRAM_REGEX, "\"[A-Za-z ,;-]{100,200}[a-z ,;-]{0,300}\"", doc,
                                6);
    vocab_close(&f);
}
END_TEST

struct compile_job {
    const struct gram_vocab *v;
    const char *src;
    struct gram *g[3];
    int rc;
};

static void *compile_thread(void *arg)
{
    struct compile_job *j = arg;
    char err[256];
    for (int i = 0; i < 3 && !j->rc; i++)
        j->rc = gram_compile(GRAM_JSON_SCHEMA, j->src, strlen(j->src), j->v, NULL, &j->g[i], err,
                             sizeof(err));
    return NULL;
}

START_TEST(grammars_compile_on_two_threads_at_once)
{
    /* the server compiles on several HTTP workers at once: the same tables as alone */
    struct vocab_fixture f;
    vocab_open(&f);
    const char *src[2] = {
        "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":30},"
        "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}}},\"required\":[\"name\"]}",
        "{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"minimum\":-50,\"maximum\":5000},"
        "\"minItems\":2,\"maxItems\":12}"};
    const char *doc[2] = {"{\"name\": \"Ann Lee\", \"tags\": [\"a\", \"b c\"]}", "[12, -7, 4999]"};
    struct compile_job jobs[2] = {{f.v, src[0], {0}, 0}, {f.v, src[1], {0}, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, compile_thread, &jobs[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    uint32_t *want = malloc(sizeof(uint32_t) * (size_t)((f.n + 31) / 32));
    uint32_t *got = malloc(sizeof(uint32_t) * (size_t)((f.n + 31) / 32));
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(jobs[i].rc, 0);
        struct compile_job alone = {f.v, src[i], {0}, 0};
        compile_thread(&alone);
        ck_assert_int_eq(alone.rc, 0);
        struct gram_stats a, b;
        gram_get_stats(alone.g[0], &a);
        int32_t *ids = NULL;
        int64_t n_ids = tok_encode_alloc(f.t, doc[i], strlen(doc[i]), 0, &ids);
        ck_assert_int_gt(n_ids, 0);
        for (int k = 0; k < 3; k++) {
            gram_get_stats(jobs[i].g[k], &b);
            ck_assert_int_eq(b.positions, a.positions);
            ck_assert_int_eq(b.uncertain, a.uncertain);
            ck_assert_uint_eq(b.table_bytes, a.table_bytes);
            /* the same masks along a document */
            struct gram_matcher *ma, *mb;
            ck_assert_int_eq(gram_matcher_create(alone.g[0], &ma), 0);
            ck_assert_int_eq(gram_matcher_create(jobs[i].g[k], &mb), 0);
            for (int64_t t = 0; t < n_ids; t++) {
                ck_assert_int_eq(gram_mask(ma, want), 1);
                ck_assert_int_eq(gram_mask(mb, got), 1);
                ck_assert(!memcmp(want, got, sizeof(uint32_t) * (size_t)((f.n + 31) / 32)));
                ck_assert_int_eq(gram_accept_token(ma, ids[t]), 0);
                ck_assert_int_eq(gram_accept_token(mb, ids[t]), 0);
            }
            gram_matcher_destroy(ma);
            gram_matcher_destroy(mb);
            gram_unref(jobs[i].g[k]);
        }
        free(ids);
        for (int k = 0; k < 3; k++)
            gram_unref(alone.g[k]);
    }
    free(want);
    free(got);
    vocab_close(&f);
}
END_TEST

START_TEST(masks_hold_only_tokens_the_grammar_takes_and_end_tokens_never)
{
    struct vocab_fixture f;
    vocab_open(&f);
    char err[256];
    struct gram *g = NULL;
    const char *src = "[\"yes\", \"no\"]";
    ck_assert_int_eq(gram_compile(GRAM_CHOICE, src, strlen(src), f.v, NULL, &g, err, sizeof(err)),
                     0);
    struct gram_matcher *m;
    ck_assert_int_eq(gram_matcher_create(g, &m), 0);
    uint32_t *mask = malloc(sizeof(uint32_t) * (size_t)((f.n + 31) / 32));
    ck_assert_int_eq(gram_mask(m, mask), 1);
    int allowed = 0;
    for (int t = 0; t < f.n; t++)
        if ((mask[t >> 5] >> (t & 31)) & 1) {
            allowed++;
            ck_assert_msg(f.lens[t] && (f.bytes[t][0] == 'y' || f.bytes[t][0] == 'n'),
                          "token %d allowed", t);
            ck_assert(!tok_is_eog(f.t, t));
        }
    ck_assert_int_ge(allowed, 2); /* at least "y" and "n" */
    ck_assert(!gram_can_end(m));
    ck_assert_int_eq(gram_feed(m, "yes", 3), 0);
    ck_assert(gram_can_end(m));
    ck_assert(gram_done(m));
    ck_assert_int_eq(gram_mask(m, mask), 0); /* complete: only an end token may come */
    ck_assert_int_eq(gram_feed(m, "s", 1), -EINVAL);
    free(mask);
    gram_matcher_destroy(m);
    gram_unref(g);
    vocab_close(&f);
}
END_TEST

Suite *grammar_suite(void)
{
    Suite *s = suite_create("grammar");
    TCase *tc = tcase_create("compile");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, schemas_accept_and_reject_what_jsonschema_says);
    tcase_add_test(tc, tool_calls_follow_the_tools_schemas);
    tcase_add_test(tc, regexes_accept_and_reject_what_python_re_says);
    tcase_add_test(tc, unsupported_schema_keywords_are_refused_by_name_and_path);
    tcase_add_test(tc, gbnf_grammars_in_llama_cpp_syntax);
    tcase_add_test(tc, gbnf_errors_name_the_problem);
    tcase_add_test(tc, choices_and_json_object);
    tcase_add_test(tc, limits_are_errors_not_hangs);
    suite_add_tcase(s, tc);
    TCase *tm = tcase_create("masks");
    tcase_set_timeout(tm, 600);
    tcase_add_test(tm, masks_equal_trying_every_token);
    tcase_add_test(tm, masks_deep_in_long_repetitions_equal_trying_every_token);
    tcase_add_test(tm, grammars_compile_on_two_threads_at_once);
    tcase_add_test(tm, masks_hold_only_tokens_the_grammar_takes_and_end_tokens_never);
    suite_add_tcase(s, tm);
    return s;
}

/*
 * tests/unit/check_gguf.c - the GGUF loader: the default model loads with the
 * values a user would see, every value type round-trips, and truncated or
 * malicious files give a one-line error instead of a crash.
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "tests/unit/gguf_writer.h"
#include "tests/unit/suites.h"
#include "util/quant.h"

/* Parses a private heap copy of exactly n bytes, so ASan sees any over-read. */
static int parse_copy(const void *p, size_t n, struct gguf_file **f, char *err, size_t errlen)
{
    void *copy = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(copy);
    memcpy(copy, p, n);
    int rc = gguf_parse(copy, n, f, err, errlen);
    if (rc == 0) {
        /* the file keeps pointing into the buffer: hand it to the caller's free */
        (*f)->mapped = 0;
        return 0;
    }
    free(copy);
    return rc;
}

static void close_copy(struct gguf_file *f)
{
    if (f) {
        void *base = (void *)f->base;
        gguf_close(f);
        free(base);
    }
}

/* The file must be refused with a one-line message containing `needle`. */
static void expect_error(const struct gw *w, const char *needle)
{
    char err[512] = "";
    struct gguf_file *f = NULL;
    int rc = parse_copy(w->p, w->n, &f, err, sizeof(err));
    ck_assert_msg(rc < 0, "accepted a broken file (expected an error with '%s')", needle);
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(err, needle) != NULL, "error '%s' does not mention '%s'", err, needle);
    ck_assert_ptr_null(strchr(err, '\n'));
}

START_TEST(default_model_loads)
{
    char err[512];
    struct gguf_file *f = NULL;
    int rc = gguf_open(test_model_path(), &f, err, sizeof(err));
    ck_assert_msg(rc == 0, "cannot open %s: %s", test_model_path(), err);
    ck_assert(f->version == 3 || f->version == 2);
    struct gguf_str s;
    ck_assert_int_eq(gguf_get_str(f, "general.architecture", &s), 0);
    ck_assert(s.n == 5 && memcmp(s.p, "llama", 5) == 0);
    int64_t n;
    ck_assert_int_eq(gguf_get_int(f, "llama.embedding_length", &n), 0);
    ck_assert_int_eq(n, 576);
    ck_assert_int_eq(gguf_get_int(f, "llama.block_count", &n), 0);
    ck_assert_int_eq(n, 30);
    const struct gguf_value *tokens;
    ck_assert_int_eq(gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &tokens), 0);
    ck_assert_uint_eq(tokens->v.arr.n, 49152);
    ck_assert_int_eq(gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_TYPE_INT32, &tokens), -EINVAL);
    ck_assert_int_eq(gguf_get_int(f, "no.such.key", &n), -ENOENT);
    ck_assert_uint_eq(f->data_offset % f->alignment, 0);

    const struct gguf_tensor *t = gguf_find_tensor(f, "token_embd.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(t->ne[0], 576);
    ck_assert_uint_eq(t->ne[1], 49152);
    ck_assert_ptr_nonnull(gguf_find_tensor(f, "blk.29.ffn_down.weight"));
    ck_assert_ptr_null(gguf_find_tensor(f, "blk.30.ffn_down.weight"));
    /* the first embedding row dequantizes to finite, not-all-zero values */
    float row[576];
    ck_assert_int_eq(qt_dequant(t->type, t->data, row, 576), 0);
    int nonzero = 0;
    for (int i = 0; i < 576; i++) {
        ck_assert(isfinite(row[i]) && fabsf(row[i]) < 100.0f);
        nonzero += row[i] != 0.0f;
    }
    ck_assert_int_gt(nonzero, 400);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const struct gguf_tensor *x = &f->tensors[i];
        ck_assert((const uint8_t *)x->data + x->nbytes <= f->base + f->size);
    }
    gguf_close(f);
}
END_TEST

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

START_TEST(truncated_model_fails_cleanly)
{
    char err[512];
    struct gguf_file *f = NULL;
    ck_assert_int_eq(gguf_open(test_model_path(), &f, err, sizeof(err)), 0);
    uint64_t data_end = f->data_offset;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        uint64_t e = f->data_offset + f->tensors[i].offset + f->tensors[i].nbytes;
        data_end = e > data_end ? e : data_end;
    }
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (int k = 0; k < 50; k++) {
        /* half in the header and metadata, half in the tensor data */
        uint64_t off = k < 25 ? rng_next(&seed) % f->data_offset
                              : f->data_offset + rng_next(&seed) % (data_end - f->data_offset);
        struct gguf_file *g = NULL;
        err[0] = '\0';
        int rc = parse_copy(f->base, (size_t)off, &g, err, sizeof(err));
        ck_assert_msg(rc == -EINVAL, "truncation at %llu: rc %d", (unsigned long long)off, rc);
        ck_assert_msg(err[0] && !strchr(err, '\n'), "truncation at %llu: message '%s'",
                      (unsigned long long)off, err);
    }
    gguf_close(f);
}
END_TEST

/* A valid file with one value of every type, nested arrays and two tensors. */
static void build_all_types(struct gw *w, uint32_t alignment)
{
    gw_header(w, 3, 2, 16);
    unsigned char b;
    gw_str(w, "t.u8"), gw_u32(w, GGUF_TYPE_UINT8), b = 200, gw_bytes(w, &b, 1);
    gw_str(w, "t.i8"), gw_u32(w, GGUF_TYPE_INT8), b = 0x80, gw_bytes(w, &b, 1);
    gw_str(w, "t.u16"), gw_u32(w, GGUF_TYPE_UINT16), gw_bytes(w, "\xff\xff", 2);
    gw_str(w, "t.i16"), gw_u32(w, GGUF_TYPE_INT16), gw_bytes(w, "\xfe\xff", 2);
    gw_kv_u32(w, "t.u32", 4000000000u);
    gw_str(w, "t.i32"), gw_u32(w, GGUF_TYPE_INT32), gw_u32(w, (uint32_t)-7);
    gw_str(w, "t.f32"), gw_u32(w, GGUF_TYPE_FLOAT32), gw_f32(w, 1.5f);
    gw_kv_bool(w, "t.bool", 1);
    gw_kv_str(w, "t.str", "héllo");
    gw_str(w, "t.u64"), gw_u32(w, GGUF_TYPE_UINT64), gw_u64(w, 1ull << 40);
    gw_str(w, "t.i64"), gw_u32(w, GGUF_TYPE_INT64), gw_u64(w, (uint64_t)-5);
    gw_str(w, "t.f64"), gw_u32(w, GGUF_TYPE_FLOAT64);
    double d = -2.25;
    uint64_t du;
    memcpy(&du, &d, 8);
    gw_u64(w, du);
    const int32_t iv[3] = {1, -2, 3};
    gw_kv_arr_i32(w, "t.arr", 3, iv);
    /* [[ "a", "bc" ], []] : an array of arrays of strings */
    gw_str(w, "t.nested"), gw_u32(w, GGUF_TYPE_ARRAY), gw_u32(w, GGUF_TYPE_ARRAY), gw_u64(w, 2);
    gw_u32(w, GGUF_TYPE_STRING), gw_u64(w, 2), gw_str(w, "a"), gw_str(w, "bc");
    gw_u32(w, GGUF_TYPE_STRING), gw_u64(w, 0);
    gw_kv_u32(w, "general.alignment", alignment);
    const char *names[2] = {"x", "yy"};
    gw_kv_arr_str(w, "t.strs", 2, names, NULL);
    uint64_t ne1[1] = {4}, ne2[2] = {32, 2};
    gw_tensor(w, "a.weight", 1, ne1, QT_F32, 0);
    gw_tensor(w, "b.weight", 2, ne2, QT_Q8_0, alignment);
    gw_pad(w, alignment);
    float fv[4] = {1, 2, 3, 4};
    for (int i = 0; i < 4; i++)
        gw_f32(w, fv[i]);
    gw_pad(w, alignment);
    unsigned char q[68] = {0};
    q[0] = 0x00, q[1] = 0x3c; /* d = 1.0 */
    q[2] = 5;                 /* first element 5 */
    gw_bytes(w, q, sizeof(q));
}

START_TEST(every_value_type)
{
    struct gw w = {0};
    build_all_types(&w, 64);
    char err[512];
    struct gguf_file *f = NULL;
    ck_assert_msg(parse_copy(w.p, w.n, &f, err, sizeof(err)) == 0, "%s", err);
    int64_t i;
    double d;
    int b;
    struct gguf_str s;
    ck_assert_int_eq(gguf_get_int(f, "t.u8", &i), 0);
    ck_assert_int_eq(i, 200);
    ck_assert_int_eq(gguf_get_int(f, "t.i8", &i), 0);
    ck_assert_int_eq(i, -128);
    ck_assert_int_eq(gguf_get_int(f, "t.u16", &i), 0);
    ck_assert_int_eq(i, 65535);
    ck_assert_int_eq(gguf_get_int(f, "t.i16", &i), 0);
    ck_assert_int_eq(i, -2);
    ck_assert_int_eq(gguf_get_int(f, "t.u32", &i), 0);
    ck_assert_int_eq(i, 4000000000ll);
    ck_assert_int_eq(gguf_get_int(f, "t.i32", &i), 0);
    ck_assert_int_eq(i, -7);
    ck_assert_int_eq(gguf_get_int(f, "t.u64", &i), 0);
    ck_assert_int_eq(i, 1ll << 40);
    ck_assert_int_eq(gguf_get_int(f, "t.i64", &i), 0);
    ck_assert_int_eq(i, -5);
    ck_assert_int_eq(gguf_get_float(f, "t.f32", &d), 0);
    ck_assert(d == 1.5);
    ck_assert_int_eq(gguf_get_float(f, "t.f64", &d), 0);
    ck_assert(d == -2.25);
    ck_assert_int_eq(gguf_get_bool(f, "t.bool", &b), 0);
    ck_assert_int_eq(b, 1);
    ck_assert_int_eq(gguf_get_str(f, "t.str", &s), 0);
    ck_assert(s.n == 6 && memcmp(s.p, "héllo", 6) == 0);
    ck_assert_int_eq(gguf_get_int(f, "t.str", &i), -EINVAL);
    ck_assert_int_eq(gguf_get_float(f, "t.u8", &d), -EINVAL);

    const struct gguf_value *v;
    ck_assert_int_eq(gguf_get_arr(f, "t.arr", GGUF_TYPE_INT32, &v), 0);
    ck_assert_uint_eq(v->v.arr.n, 3);
    int32_t iv[3];
    memcpy(iv, v->v.arr.data, sizeof(iv));
    ck_assert(iv[0] == 1 && iv[1] == -2 && iv[2] == 3);
    ck_assert_int_eq(gguf_get_arr(f, "t.nested", GGUF_TYPE_ARRAY, &v), 0);
    ck_assert_uint_eq(v->v.arr.n, 2);
    const struct gguf_value *in = &v->v.arr.items[0];
    ck_assert_uint_eq(in->v.arr.type, GGUF_TYPE_STRING);
    ck_assert_uint_eq(in->v.arr.n, 2);
    ck_assert(in->v.arr.items[1].v.str.n == 2 && memcmp(in->v.arr.items[1].v.str.p, "bc", 2) == 0);
    ck_assert_uint_eq(v->v.arr.items[1].v.arr.n, 0);

    ck_assert_uint_eq(f->alignment, 64);
    ck_assert_uint_eq(f->data_offset % 64, 0);
    const struct gguf_tensor *t = gguf_find_tensor(f, "a.weight");
    ck_assert_ptr_nonnull(t);
    float fv[4];
    memcpy(fv, t->data, sizeof(fv));
    ck_assert(fv[0] == 1 && fv[3] == 4);
    t = gguf_find_tensor(f, "b.weight");
    ck_assert_uint_eq(t->nbytes, 68);
    float out[64];
    ck_assert_int_eq(qt_dequant(t->type, t->data, out, 64), 0);
    ck_assert(out[0] == 5.0f && out[1] == 0.0f);
    close_copy(f);
    gw_free(&w);
}
END_TEST

START_TEST(hostile_headers)
{
    struct gw w = {0};
    gw_bytes(&w, "GGUX", 4), gw_u32(&w, 3), gw_u64(&w, 0), gw_u64(&w, 0);
    expect_error(&w, "bad magic");
    gw_free(&w);
    gw_header(&w, 1, 0, 0);
    expect_error(&w, "version 1");
    gw_free(&w);
    gw_header(&w, 0x03000000, 0, 0);
    expect_error(&w, "big-endian");
    gw_free(&w);
    gw_bytes(&w, "GGUF\x03\x00", 6);
    expect_error(&w, "truncated");
    gw_free(&w);
    gw_header(&w, 3, 1ull << 60, 0);
    expect_error(&w, "tensor count");
    gw_free(&w);
    gw_header(&w, 3, UINT64_MAX, 0);
    expect_error(&w, "tensor count");
    gw_free(&w);
    gw_header(&w, 3, 0, 1ull << 62);
    expect_error(&w, "metadata count");
    gw_free(&w);
}
END_TEST

START_TEST(hostile_metadata)
{
    struct gw w = {0};
    /* a key whose length runs past the end of the file */
    gw_header(&w, 3, 0, 1), gw_u64(&w, 1000), gw_bytes(&w, "abc", 3);
    gw_bytes(&w, "0123456789", 10);
    expect_error(&w, "truncated");
    gw_free(&w);
    /* a string value whose length runs past the end */
    gw_header(&w, 3, 0, 1), gw_str(&w, "k"), gw_u32(&w, GGUF_TYPE_STRING), gw_u64(&w, 1ull << 62);
    gw_bytes(&w, "0123456789", 10);
    expect_error(&w, "truncated");
    gw_free(&w);
    /* a key longer than the limit */
    gw_header(&w, 3, 0, 1), gw_u64(&w, 70000);
    for (int i = 0; i < 7001; i++)
        gw_bytes(&w, "0123456789", 10);
    expect_error(&w, "limit");
    gw_free(&w);
    /* an unknown value type */
    gw_header(&w, 3, 0, 1), gw_str(&w, "k"), gw_u32(&w, 13), gw_u64(&w, 0);
    expect_error(&w, "unknown value type 13");
    gw_free(&w);
    /* an array claiming more elements than the file holds */
    gw_header(&w, 3, 0, 1), gw_str(&w, "k"), gw_u32(&w, GGUF_TYPE_ARRAY);
    gw_u32(&w, GGUF_TYPE_UINT64), gw_u64(&w, 1ull << 61), gw_u64(&w, 1);
    expect_error(&w, "claims");
    gw_free(&w);
    gw_header(&w, 3, 0, 1), gw_str(&w, "k"), gw_u32(&w, GGUF_TYPE_ARRAY);
    gw_u32(&w, GGUF_TYPE_STRING), gw_u64(&w, UINT64_MAX), gw_u64(&w, 1);
    expect_error(&w, "claims");
    gw_free(&w);
    /* an array of an unknown element type */
    gw_header(&w, 3, 0, 1), gw_str(&w, "k"), gw_u32(&w, GGUF_TYPE_ARRAY), gw_u32(&w, 77);
    gw_u64(&w, 0);
    expect_error(&w, "unknown type 77");
    gw_free(&w);
    /* arrays nested deeper than the limit */
    gw_header(&w, 3, 0, 1), gw_str(&w, "k"), gw_u32(&w, GGUF_TYPE_ARRAY);
    for (int i = 0; i < GGUF_MAX_NESTING + 2; i++)
        gw_u32(&w, GGUF_TYPE_ARRAY), gw_u64(&w, 1);
    gw_u32(&w, GGUF_TYPE_UINT8), gw_u64(&w, 0);
    expect_error(&w, "nests");
    gw_free(&w);
    /* a bool that is neither 0 nor 1 */
    gw_header(&w, 3, 0, 1), gw_str(&w, "k"), gw_u32(&w, GGUF_TYPE_BOOL), gw_bytes(&w, "\x02", 1);
    expect_error(&w, "bool");
    gw_free(&w);
    /* the same key twice */
    gw_header(&w, 3, 0, 2), gw_kv_u32(&w, "a.b", 1), gw_kv_u32(&w, "a.b", 2);
    expect_error(&w, "appears twice");
    gw_free(&w);
    /* alignment: not a power of two, wrong type */
    gw_header(&w, 3, 0, 1), gw_kv_u32(&w, "general.alignment", 48);
    expect_error(&w, "power of two");
    gw_free(&w);
    gw_header(&w, 3, 0, 1), gw_kv_u32(&w, "general.alignment", 0);
    expect_error(&w, "power of two");
    gw_free(&w);
    gw_header(&w, 3, 0, 1), gw_kv_str(&w, "general.alignment", "32");
    expect_error(&w, "expected uint32");
    gw_free(&w);
}
END_TEST

/* A one-tensor file: header, the tensor info as given, then `data` bytes. */
static void one_tensor(struct gw *w, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                       uint64_t offset, size_t data)
{
    gw_header(w, 3, 1, 0);
    gw_tensor(w, "blk.0.attn_q.weight", n_dims, ne, type, offset);
    gw_pad(w, 32);
    for (size_t i = 0; i < data; i++)
        gw_bytes(w, "\0", 1);
}

START_TEST(hostile_tensors)
{
    struct gw w = {0};
    uint64_t ne40[2] = {1ull << 40, 1};
    one_tensor(&w, 2, ne40, QT_F32, 0, 64);
    expect_error(&w, "past the end");
    gw_free(&w);
    uint64_t huge[3] = {1ull << 40, 1ull << 40, 1ull << 40};
    one_tensor(&w, 3, huge, QT_F32, 0, 64);
    expect_error(&w, "too large");
    gw_free(&w);
    uint64_t ne[2] = {32, 2};
    one_tensor(&w, 2, ne, 99, 0, 256);
    expect_error(&w, "unknown tensor type 99");
    gw_free(&w);
    one_tensor(&w, 2, ne, 0xffffffffu, 0, 256);
    expect_error(&w, "unknown tensor type");
    gw_free(&w);
    one_tensor(&w, 2, ne, QT_F32, 1ull << 20, 256);
    expect_error(&w, "past the end");
    gw_free(&w);
    one_tensor(&w, 2, ne, QT_F32, UINT64_MAX - 31, 256);
    expect_error(&w, "past the end");
    gw_free(&w);
    one_tensor(&w, 2, ne, QT_F32, 4, 512);
    expect_error(&w, "alignment");
    gw_free(&w);
    uint64_t odd[1] = {33};
    one_tensor(&w, 1, odd, QT_Q4_0, 0, 256);
    expect_error(&w, "block size");
    gw_free(&w);
    uint64_t zero[2] = {32, 0};
    one_tensor(&w, 2, zero, QT_F32, 0, 256);
    expect_error(&w, "size 0");
    gw_free(&w);
    uint64_t five[5] = {1, 1, 1, 1, 1};
    one_tensor(&w, 5, five, QT_F32, 0, 256);
    expect_error(&w, "dimensions");
    gw_free(&w);
    one_tensor(&w, 0, five, QT_F32, 0, 256);
    expect_error(&w, "dimensions");
    gw_free(&w);
    /* two tensors with one name */
    gw_header(&w, 3, 2, 0);
    gw_tensor(&w, "t", 1, ne, QT_F32, 0);
    gw_tensor(&w, "t", 1, ne, QT_F32, 128);
    gw_pad(&w, 32);
    for (int i = 0; i < 256; i++)
        gw_bytes(&w, "\0", 1);
    expect_error(&w, "appears twice");
    gw_free(&w);
    /* the good case of the same shape loads */
    one_tensor(&w, 2, ne, QT_F32, 0, 256);
    struct gguf_file *f = NULL;
    char err[256];
    ck_assert_msg(parse_copy(w.p, w.n, &f, err, sizeof(err)) == 0, "%s", err);
    ck_assert_uint_eq(f->tensors[0].nbytes, 256);
    close_copy(f);
    gw_free(&w);
}
END_TEST

START_TEST(open_errors)
{
    char err[512];
    struct gguf_file *f = NULL;
    ck_assert_int_eq(gguf_open("/nonexistent/model.gguf", &f, err, sizeof(err)), -ENOENT);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/model.gguf"));
    ck_assert_int_eq(gguf_open("/", &f, err, sizeof(err)), -EINVAL);
    char path[] = "/tmp/cinfer-empty-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(gguf_open(path, &f, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "empty"));
    unlink(path);
}
END_TEST

Suite *gguf_suite(void)
{
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("gguf");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, default_model_loads);
    tcase_add_test(tc, truncated_model_fails_cleanly);
    tcase_add_test(tc, every_value_type);
    tcase_add_test(tc, hostile_headers);
    tcase_add_test(tc, hostile_metadata);
    tcase_add_test(tc, hostile_tensors);
    tcase_add_test(tc, open_errors);
    suite_add_tcase(s, tc);
    return s;
}

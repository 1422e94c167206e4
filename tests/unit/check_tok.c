/*
 * tests/unit/check_tok.c - the byte-level BPE tokenizer against llama.cpp's
 * ids for the default model (tests/fixtures/tokenizer_smollm2.json, made by
 * tests/fixtures/make_tokenizer_fixture.py), special tokens, the incremental
 * detokenizer, and the pre-tokenizers of other model families.
 */
#include <cJSON.h>
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/vocab.h"
#include "tests/unit/suites.h"
#include "tests/utf8_oracle.h"
#include "tokenizer/internal.h"

#define FIXTURE "tests/fixtures/tokenizer_smollm2.json"

static struct gguf_file *g_file;
static struct tok *g_tok;
static cJSON *g_fixture;

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    if (p) {
        p[n] = '\0';
        *len = (size_t)n;
    }
    return p;
}

static void setup(void)
{
    char err[512];
    ck_assert_msg(gguf_open(test_model_path(), &g_file, err, sizeof(err)) == 0, "%s", err);
    ck_assert_msg(eng_tokenizer_load(g_file, NULL, &g_tok, err, sizeof(err)) == 0, "%s", err);
    size_t n;
    char *s = slurp(FIXTURE, &n);
    ck_assert_msg(s != NULL, "cannot read " FIXTURE);
    g_fixture = cJSON_Parse(s);
    free(s);
    ck_assert_msg(g_fixture != NULL, FIXTURE " is not JSON");
}

static void teardown(void)
{
    cJSON_Delete(g_fixture);
    tok_destroy(g_tok);
    gguf_close(g_file);
}

/* Encodes and compares with a JSON array of ids; returns 1 when equal. */
static int same_ids(const char *text, size_t len, unsigned flags, const cJSON *want, char *why,
                    size_t whylen)
{
    size_t cap = 3 * len + 2;
    int32_t *ids = malloc(cap * sizeof(*ids));
    int64_t n = tok_encode(g_tok, text, len, flags, ids, cap);
    int ok = n == cJSON_GetArraySize(want);
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, want)
    {
        if (!ok || i >= n)
            break;
        if (ids[i] != (int32_t)it->valuedouble) {
            ok = 0;
            snprintf(why, whylen, "id %d: got %d, want %d", i, ids[i], (int)it->valuedouble);
        }
        i++;
    }
    if (!ok && n != cJSON_GetArraySize(want))
        snprintf(why, whylen, "got %lld ids, want %d", (long long)n, cJSON_GetArraySize(want));
    free(ids);
    return ok;
}

START_TEST(parity_with_llamacpp)
{
    const cJSON *cases = cJSON_GetObjectItem(g_fixture, "cases");
    ck_assert_int_ge(cJSON_GetArraySize(cases), 200);
    int n = 0, bad = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases)
    {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        char why[128] = "";
        if (!same_ids(text, strlen(text), 0, cJSON_GetObjectItem(c, "ids"), why, sizeof(why))) {
            fprintf(stderr, "case %d (%.40s): %s\n", n, text, why);
            bad++;
        }
        if (!same_ids(text, strlen(text), TOK_PARSE_SPECIAL, cJSON_GetObjectItem(c, "ids_special"),
                      why, sizeof(why))) {
            fprintf(stderr, "case %d special (%.40s): %s\n", n, text, why);
            bad++;
        }
        n++;
    }
    ck_assert_msg(bad == 0, "%d of %d encodings differ from llama.cpp", bad, 2 * n);
}
END_TEST

START_TEST(detokenizer_streams_whole_characters)
{
    const cJSON *cases = cJSON_GetObjectItem(g_fixture, "cases");
    const cJSON *c;
    int held = 0;
    cJSON_ArrayForEach(c, cases)
    {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        const char *ref = cJSON_GetObjectItem(c, "detok")->valuestring;
        struct tok_detok d;
        struct buf out = {0};
        tok_detok_init(&d, g_tok, 0);
        const cJSON *id;
        size_t prev = 0;
        cJSON_ArrayForEach(id, cJSON_GetObjectItem(c, "ids"))
        {
            ck_assert_int_eq(tok_detok_feed(&d, (int32_t)id->valuedouble, &out), 0);
            /* after every token the text so far is whole characters */
            ck_assert_msg(utf8_oracle_valid((unsigned char *)out.p, out.n), "broken UTF-8 in '%s'",
                          text);
            held += d.n_hold > 0;
            ck_assert(out.n >= prev);
            prev = out.n;
        }
        ck_assert_int_eq(d.n_hold, 0);
        ck_assert_int_eq(tok_detok_flush(&d, &out), 0);
        ck_assert_uint_eq(out.n, strlen(ref));
        ck_assert_msg(out.n == 0 || memcmp(out.p, ref, out.n) == 0, "'%s' decodes differently",
                      text);
        ck_assert_msg(out.n == 0 || strcmp(out.p, text) == 0, "'%s' does not round-trip", text);
        free(out.p);
    }
    /* the corpus has characters split across byte tokens: some bytes were held */
    ck_assert_int_gt(held, 0);
}
END_TEST

START_TEST(detokenizer_replaces_impossible_bytes)
{
    /* byte tokens of "é" = C3 A9 split in two, then a lone continuation byte */
    int32_t c3 = tok_map_get(&g_tok->vocab, "\xc3\x83", 2); /* byte 0xC3 as a GPT-2 char */
    int32_t a9 = tok_map_get(&g_tok->vocab, "\xc2\xa9", 2); /* byte 0xA9 */
    ck_assert_int_ge(c3, 0);
    ck_assert_int_ge(a9, 0);
    struct tok_detok d;
    struct buf out = {0};
    tok_detok_init(&d, g_tok, 0);
    ck_assert_int_eq(tok_detok_feed(&d, c3, &out), 0);
    ck_assert_uint_eq(out.n, 0); /* held */
    ck_assert_int_eq(tok_detok_feed(&d, a9, &out), 0);
    ck_assert_str_eq(out.p, "é");
    ck_assert_int_eq(tok_detok_feed(&d, a9, &out), 0); /* can never start a character */
    ck_assert_str_eq(out.p, "é\xef\xbf\xbd");
    ck_assert_int_eq(tok_detok_feed(&d, c3, &out), 0);
    ck_assert_int_eq(tok_detok_flush(&d, &out), 0); /* unfinished at the end */
    ck_assert_str_eq(out.p, "é\xef\xbf\xbd\xef\xbf\xbd");
    ck_assert_int_eq(tok_detok_feed(&d, -1, &out), -EINVAL);
    ck_assert_int_eq(tok_detok_feed(&d, 49152, &out), -EINVAL);
    free(out.p);
}
END_TEST

START_TEST(special_tokens_only_when_asked)
{
    const char *s = "<|im_start|>user\nHi<|im_end|>";
    int32_t ids[64];
    int64_t n = tok_encode(g_tok, s, strlen(s), TOK_PARSE_SPECIAL, ids, 64);
    ck_assert_int_eq(n, 5);
    ck_assert_int_eq(ids[0], 1);
    ck_assert_int_eq(ids[4], 2);
    n = tok_encode(g_tok, s, strlen(s), 0, ids, 64);
    ck_assert_int_gt(n, 5);
    for (int64_t i = 0; i < n; i++)
        ck_assert_int_gt(ids[i], 16); /* no control token from plain text */
    /* BOS only on request */
    n = tok_encode(g_tok, "Hi", 2, TOK_ADD_BOS, ids, 64);
    ck_assert_int_eq(ids[0], tok_bos(g_tok));
    ck_assert_int_eq(n, 2);
    /* control tokens print as nothing unless asked */
    size_t len;
    ck_assert_str_eq(tok_piece(g_tok, 2, 0, &len), "");
    ck_assert_str_eq(tok_piece(g_tok, 2, 1, &len), "<|im_end|>");
    ck_assert(tok_is_eog(g_tok, 2));
    ck_assert(!tok_is_eog(g_tok, 1000));
    ck_assert_ptr_null(tok_piece(g_tok, 49152, 1, &len));
    /* a short buffer: the result says how many are needed */
    n = tok_encode(g_tok, "Hello world, hello", 18, 0, ids, 1);
    ck_assert_int_eq(n, 4);
}
END_TEST

START_TEST(invalid_utf8_reads_as_replacement)
{
    int32_t a[16], b[16];
    int64_t na = tok_encode(g_tok, "x\xffy", 3, 0, a, 16);
    int64_t nb = tok_encode(g_tok, "x\xef\xbf\xbdy", 5, 0, b, 16);
    ck_assert_int_eq(na, nb);
    ck_assert_mem_eq(a, b, (size_t)na * sizeof(*a));
    /* every byte value alone encodes to at most 3 tokens (U+FFFD) */
    for (int c = 0; c < 256; c++) {
        char s = (char)c;
        int64_t n = tok_encode(g_tok, &s, 1, 0, a, 16);
        ck_assert(n >= 0 && n <= 3);
    }
    /* control bytes without a token of their own are dropped, as llama.cpp
     * 0.3.16 does: "a\x04b" -> [81, 82], "\x04" -> [] */
    ck_assert_int_eq(tok_encode(g_tok,
                                "a\x04"
                                "b",
                                3, 0, a, 16),
                     2);
    ck_assert(a[0] == 81 && a[1] == 82);
    ck_assert_int_eq(tok_encode(g_tok, "\x04", 1, 0, a, 16), 0);
}
END_TEST

START_TEST(byte_alphabet_round_trips)
{
    int seen[324] = {0};
    for (int b = 0; b < 256; b++) {
        uint32_t cp = tok_byte_to_cp((uint8_t)b);
        ck_assert_uint_lt(cp, 324);
        ck_assert_int_eq(seen[cp]++, 0);
        ck_assert_int_eq(tok_cp_to_byte(cp), b);
    }
    ck_assert_uint_eq(tok_byte_to_cp(' '), 0x120);  /* 'Ġ' */
    ck_assert_uint_eq(tok_byte_to_cp('\n'), 0x10a); /* 'Ċ' */
    ck_assert_int_eq(tok_cp_to_byte(0x4e00), -1);
}
END_TEST

/* A toy vocabulary: every byte, plus whole words (of the given types, or
 * normal); merges none. */
static struct tok *toy_typed(const char *model, const char *pre, const char *const *words,
                             const int32_t *word_types, size_t nw, char *err, size_t errlen,
                             int *rc)
{
    size_t n = 256 + nw;
    struct tok_bytes *tokens = calloc(n, sizeof(*tokens));
    char(*chars)[4] = calloc(256, 4);
    for (int b = 0; b < 256; b++) {
        size_t k = tok_utf8_encode(tok_byte_to_cp((uint8_t)b), chars[b]);
        tokens[b] = (struct tok_bytes){chars[b], k};
    }
    int32_t *types = malloc(n * sizeof(*types));
    for (size_t i = 0; i < n; i++)
        types[i] = i >= 256 && word_types ? word_types[i - 256] : TOK_TYPE_NORMAL;
    for (size_t i = 0; i < nw; i++)
        tokens[256 + i] = (struct tok_bytes){words[i], strlen(words[i])};
    struct tok_desc d = {.types = types,
                         .model = model,
                         .pre = pre,
                         .n_vocab = n,
                         .tokens = tokens,
                         .bos = -1,
                         .eos = -1,
                         .eot = -1,
                         .unk = -1,
                         .pad = -1,
                         .add_bos = -1,
                         .add_space_prefix = -1};
    struct tok *t = NULL;
    *rc = tok_create(&d, &t, err, errlen);
    free(types);
    free(tokens);
    free(chars);
    return t;
}

static struct tok *toy(const char *model, const char *pre, const char *const *words, size_t nw,
                       char *err, size_t errlen, int *rc)
{
    return toy_typed(model, pre, words, NULL, nw, err, errlen, rc);
}

START_TEST(llama3_pre_tokenizer_splits)
{
    /* llama-bpe ignores merges for whole words, so each pre-token that is in
     * the vocabulary comes out as one id and shows where the regex split */
    static const char *const words[] = {"Hello",
                                        "\xc4\xa0world",
                                        "123",
                                        "45",
                                        "'LL",
                                        "\xc4\xa0\xc4\xa0",
                                        "\xc4\xa0!!\xc4\x8a\xc4\x8a",
                                        "\xc4\x8a\xc4\x8a"};
    char err[256];
    int rc;
    struct tok *t = toy("gpt2", "llama-bpe", words, 8, err, sizeof(err), &rc);
    ck_assert_msg(rc == 0, "%s", err);
    int32_t ids[32];
    /* Hello | Ġworld | 123 | 45 | 'LL | ĠĠ | Ġ!!ĊĊ (newlines stick to punctuation) */
    const char *s = "Hello world12345'LL   !!\n\n";
    int64_t n = tok_encode(t, s, strlen(s), 0, ids, 32);
    ck_assert_int_eq(n, 7);
    for (int i = 0; i < 7; i++)
        ck_assert_msg(ids[i] == 256 + i, "piece %d: %d", i, ids[i]);
    /* x | ĊĊ | y : a newline run after a letter is its own piece */
    n = tok_encode(t, "x\n\ny", 4, 0, ids, 32);
    ck_assert_int_eq(n, 3);
    ck_assert(ids[0] == 'x' && ids[1] == 263 && ids[2] == 'y');
    ck_assert_int_eq(tok_add_bos(t), 1); /* Llama 3 wants BOS by default */
    tok_destroy(t);
}
END_TEST

START_TEST(special_tokens_never_split_characters)
{
    /* a control token that is a lone UTF-8 continuation byte (a broken vocab)
     * must not cut "你" (E4 BD A0) apart, even with special parsing on */
    static const char *const words[] = {"\xa0", "<ok>"};
    static const int32_t types[] = {TOK_TYPE_CONTROL, TOK_TYPE_CONTROL};
    char err[256];
    int rc;
    struct tok *t = toy_typed("gpt2", "qwen2", words, types, 2, err, sizeof(err), &rc);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(tok_encode(t, "<ok>", 4, TOK_PARSE_SPECIAL, NULL, 0), 1);
    int32_t ids[16];
    int64_t n = tok_encode(t, "\xe4\xbd\xa0", 3, TOK_PARSE_SPECIAL, ids, 16);
    ck_assert_int_eq(n, 3);
    ck_assert(ids[0] == 0xe4 && ids[1] == 0xbd && ids[2] == 0xa0);
    tok_destroy(t);
}
END_TEST

START_TEST(create_refuses_unknown_kinds)
{
    static const char *const words[] = {"a"};
    char err[256];
    int rc;
    struct tok *t = toy("bert", NULL, words, 1, err, sizeof(err), &rc);
    ck_assert_ptr_null(t);
    ck_assert_int_eq(rc, -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "bert"));
    t = toy("gpt2", "no-such-pre", words, 1, err, sizeof(err), &rc);
    ck_assert_ptr_null(t);
    ck_assert_ptr_nonnull(strstr(err, "no-such-pre"));
    t = toy("gpt2", "qwen2", words, 1, err, sizeof(err), &rc);
    ck_assert_int_eq(rc, 0);
    tok_destroy(t);
}
END_TEST

Suite *tok_suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("bpe");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, parity_with_llamacpp);
    tcase_add_test(tc, detokenizer_streams_whole_characters);
    tcase_add_test(tc, detokenizer_replaces_impossible_bytes);
    tcase_add_test(tc, special_tokens_only_when_asked);
    tcase_add_test(tc, invalid_utf8_reads_as_replacement);
    tcase_add_test(tc, byte_alphabet_round_trips);
    tcase_add_test(tc, llama3_pre_tokenizer_splits);
    tcase_add_test(tc, special_tokens_never_split_characters);
    tcase_add_test(tc, create_refuses_unknown_kinds);
    suite_add_tcase(s, tc);
    return s;
}

/*
 * tests/unit/check_spm.c - the SentencePiece path.  The test trains its own
 * model with spm_train (Debian package sentencepiece) on
 * tests/fixtures/spm_train.txt, writes the trained pieces, scores and types
 * into a vocab-only GGUF the way convert scripts do, loads that GGUF through
 * our loader and tokenizer, and compares with spm_encode on the 220 lines of
 * tests/fixtures/spm_strings.txt.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/vocab.h"
#include "tests/unit/gguf_writer.h"
#include "tests/unit/suites.h"
#include "tokenizer/spm_c.h"

#define TRAIN "tests/fixtures/spm_train.txt"
#define STRINGS "tests/fixtures/spm_strings.txt"

static char g_dir[64];
static char g_model[128], g_gguf[128], g_expect[128];

/* Reads a file into lines (without their '\n'); returns the count or -1. */
static int read_lines(const char *path, char ***lines)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    int n = 0, cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t k;
    *lines = NULL;
    while ((k = getline(&line, &lcap, f)) >= 0) {
        if (k > 0 && line[k - 1] == '\n')
            line[--k] = '\0';
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            *lines = realloc(*lines, (size_t)cap * sizeof(**lines));
        }
        (*lines)[n++] = strdup(line);
    }
    free(line);
    fclose(f);
    return n;
}

static void free_lines(char **lines, int n)
{
    for (int i = 0; i < n; i++)
        free(lines[i]);
    free(lines);
}

/* Trains the model and writes the GGUF, once for the whole suite. */
static void setup(void)
{
    strcpy(g_dir, "/tmp/cinfer-spm-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
    snprintf(g_model, sizeof(g_model), "%s/m.model", g_dir);
    snprintf(g_gguf, sizeof(g_gguf), "%s/vocab.gguf", g_dir);
    snprintf(g_expect, sizeof(g_expect), "%s/expect.txt", g_dir);
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "spm_train --input=" TRAIN " --model_prefix=%s/m --vocab_size=1000 "
             "--model_type=bpe --byte_fallback=true --character_coverage=1.0 "
             "--normalization_rule_name=identity --remove_extra_whitespaces=false "
             "--add_dummy_prefix=true --num_threads=1 >%s/train.log 2>&1",
             g_dir, g_dir);
    ck_assert_msg(system(cmd) == 0, "spm_train failed (see %s/train.log)", g_dir);
    snprintf(cmd, sizeof(cmd), "spm_encode --model=%s --output_format=id < " STRINGS " > %s",
             g_model, g_expect);
    ck_assert_msg(system(cmd) == 0, "spm_encode failed");

    /* the trained vocabulary, as a GGUF carries it */
    struct spm_c *sp = NULL;
    char err[256];
    ck_assert_msg(spm_c_create_from_file(g_model, &sp, err, sizeof(err)) == 0, "%s", err);
    struct spm_c_vocab v;
    spm_c_get_vocab(sp, &v);
    ck_assert_uint_eq(v.n, 1000);
    const char **texts = malloc(v.n * sizeof(*texts));
    size_t *lens = malloc(v.n * sizeof(*lens));
    for (size_t i = 0; i < v.n; i++) {
        texts[i] = v.pieces[i].p;
        lens[i] = v.pieces[i].n;
    }
    struct gw w = {0};
    gw_header(&w, 3, 0, 9);
    gw_kv_str(&w, "general.architecture", "llama");
    gw_kv_str(&w, "tokenizer.ggml.model", "llama");
    gw_kv_arr_str(&w, "tokenizer.ggml.tokens", v.n, texts, lens);
    gw_kv_arr_f32(&w, "tokenizer.ggml.scores", v.n, v.scores);
    gw_kv_arr_i32(&w, "tokenizer.ggml.token_type", v.n, v.types);
    gw_kv_u32(&w, "tokenizer.ggml.unknown_token_id", 0);
    gw_kv_u32(&w, "tokenizer.ggml.bos_token_id", 1);
    gw_kv_u32(&w, "tokenizer.ggml.eos_token_id", 2);
    gw_kv_bool(&w, "tokenizer.ggml.add_space_prefix", 1);
    ck_assert_int_eq(gw_save(&w, g_gguf), 0);
    gw_free(&w);
    free(texts);
    free(lens);
    spm_c_destroy(sp);
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", g_dir);
}

static struct tok *load(const char *spm_file, struct gguf_file **g)
{
    char err[512];
    struct tok *t = NULL;
    ck_assert_msg(gguf_open(g_gguf, g, err, sizeof(err)) == 0, "%s", err);
    ck_assert_msg(eng_tokenizer_load(*g, spm_file, &t, err, sizeof(err)) == 0, "%s", err);
    return t;
}

/* Every line encodes to spm_encode's ids; returns the number of mismatches. */
static int compare_all(struct tok *t)
{
    char **in = NULL, **want = NULL;
    int n = read_lines(STRINGS, &in);
    int m = read_lines(g_expect, &want);
    ck_assert_int_eq(n, 220);
    ck_assert_int_eq(m, n);
    int bad = 0;
    for (int i = 0; i < n; i++) {
        size_t len = strlen(in[i]);
        int32_t *ids = malloc((3 * len + 2) * sizeof(*ids));
        int64_t k = tok_encode(t, in[i], len, 0, ids, 3 * len + 2);
        char got[8192];
        size_t o = 0;
        got[0] = '\0';
        for (int64_t j = 0; j < k && o < sizeof(got) - 16; j++)
            o += (size_t)snprintf(got + o, sizeof(got) - o, j ? " %d" : "%d", ids[j]);
        if (strcmp(got, want[i]) != 0) {
            if (bad < 5)
                fprintf(stderr, "line %d '%s':\n  ours %s\n  spm  %s\n", i + 1, in[i], got,
                        want[i]);
            bad++;
        }
        free(ids);
    }
    free_lines(in, n);
    free_lines(want, m);
    return bad;
}

START_TEST(gguf_vocab_matches_spm_encode)
{
    struct gguf_file *g = NULL;
    struct tok *t = load(NULL, &g);
    int bad = compare_all(t);
    ck_assert_msg(bad == 0, "%d of 220 lines differ from spm_encode", bad);
    tok_destroy(t);
    gguf_close(g);
}
END_TEST

START_TEST(tokenizer_model_file_matches_spm_encode)
{
    struct gguf_file *g = NULL;
    struct tok *t = load(g_model, &g);
    int bad = compare_all(t);
    ck_assert_msg(bad == 0, "%d of 220 lines differ from spm_encode with --tokenizer", bad);
    tok_destroy(t);
    gguf_close(g);
}
END_TEST

START_TEST(detokenizer_undoes_the_dummy_prefix)
{
    struct gguf_file *g = NULL;
    struct tok *t = load(NULL, &g);
    char **in = NULL;
    int n = read_lines(STRINGS, &in);
    for (int i = 0; i < n; i++) {
        size_t len = strlen(in[i]);
        int32_t *ids = malloc((3 * len + 2) * sizeof(*ids));
        int64_t k = tok_encode(t, in[i], len, TOK_ADD_BOS, ids, 3 * len + 2);
        ck_assert_int_eq(ids[0], 1);
        struct tok_detok d;
        struct buf out = {0};
        tok_detok_init(&d, t, TOK_DETOK_STRIP_SPACE);
        for (int64_t j = 0; j < k; j++)
            ck_assert_int_eq(tok_detok_feed(&d, ids[j], &out), 0);
        ck_assert_int_eq(tok_detok_flush(&d, &out), 0);
        buf_append(&out, "", 0);
        /* BOS prints nothing; the dummy-prefix space of the first word goes */
        ck_assert_msg(strcmp(out.p, in[i]) == 0, "line %d: '%s' came back as '%s'", i + 1, in[i],
                      out.p);
        free(out.p);
        free(ids);
    }
    free_lines(in, n);
    /* without the strip flag the first piece keeps its space (a continuation) */
    int32_t ids[8];
    int64_t k = tok_encode(t, "the", 3, 0, ids, 8);
    ck_assert_int_ge(k, 1);
    size_t len;
    const char *p = tok_piece(t, ids[0], 0, &len);
    ck_assert(len >= 1 && p[0] == ' ');
    tok_destroy(t);
    gguf_close(g);
}
END_TEST

START_TEST(special_text_parsed_only_when_asked)
{
    struct gguf_file *g = NULL;
    struct tok *t = load(NULL, &g);
    int32_t ids[32];
    int64_t k = tok_encode(t, "<s>hi</s>", 9, TOK_PARSE_SPECIAL, ids, 32);
    ck_assert_int_ge(k, 3);
    ck_assert_int_eq(ids[0], 1);
    ck_assert_int_eq(ids[k - 1], 2);
    k = tok_encode(t, "<s>hi</s>", 9, 0, ids, 32);
    for (int64_t j = 0; j < k; j++)
        ck_assert(ids[j] != 1 && ids[j] != 2);
    tok_destroy(t);
    gguf_close(g);
}
END_TEST

START_TEST(bad_vocabularies_are_refused)
{
    /* no <unk> piece: sentencepiece refuses, we report it */
    struct spm_c_bytes p[2] = {{"a", 1}, {"b", 1}};
    struct spm_c_vocab v = {.n = 2, .pieces = p, .add_dummy_prefix = 1};
    struct spm_c *sp = NULL;
    char err[256];
    ck_assert_int_eq(spm_c_create(&v, &sp, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_null(sp);
    ck_assert_ptr_nonnull(strstr(err, "sentencepiece"));
    /* an empty piece */
    struct spm_c_bytes q[2] = {{"<unk>", 5}, {"", 0}};
    int32_t types[2] = {2, 1};
    v.pieces = q;
    v.types = types;
    ck_assert_int_eq(spm_c_create(&v, &sp, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "empty"));
    ck_assert_int_eq(spm_c_create_from_file("/nonexistent.model", &sp, err, sizeof(err)), -ENOENT);
    ck_assert_int_eq(spm_c_create_from_file(STRINGS, &sp, err, sizeof(err)), -EINVAL);
}
END_TEST

Suite *spm_suite(void)
{
    Suite *s = suite_create("sentencepiece");
    TCase *tc = tcase_create("spm");
    tcase_set_timeout(tc, 120);
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_add_test(tc, gguf_vocab_matches_spm_encode);
    tcase_add_test(tc, tokenizer_model_file_matches_spm_encode);
    tcase_add_test(tc, detokenizer_undoes_the_dummy_prefix);
    tcase_add_test(tc, special_text_parsed_only_when_asked);
    tcase_add_test(tc, bad_vocabularies_are_refused);
    suite_add_tcase(s, tc);
    return s;
}

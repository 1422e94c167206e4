/*
 * tests/unit/check_cli.c - bin/cinfer as a user runs it: help and version on
 * every subcommand, exit codes, `cinfer tokenize` against llama.cpp's ids on
 * the whole corpus, and hostile GGUF files (exit 2, a one-line message, no
 * sanitizer report when the binary is built with ASan).
 */
#include <cJSON.h>
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "tests/unit/gguf_writer.h"
#include "tests/unit/suites.h"
#include "util/quant.h"

static char g_dir[64];

static void setup(void)
{
    strcpy(g_dir, "/tmp/cinfer-cli-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", g_dir);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return strdup("");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    size_t k = fread(p, 1, (size_t)n, f);
    p[k] = '\0';
    fclose(f);
    return p;
}

struct result {
    int status; /* exit code, or 128 + signal */
    char *out, *err;
};

static void result_free(struct result *r)
{
    free(r->out);
    free(r->err);
}

/* Runs bin/cinfer with args (NULL-terminated) and `in` on stdin. */
static struct result run(const char *in, size_t in_len, const char *const *args)
{
    char pin[128], pout[128], perr[128];
    snprintf(pin, sizeof(pin), "%s/stdin", g_dir);
    snprintf(pout, sizeof(pout), "%s/stdout", g_dir);
    snprintf(perr, sizeof(perr), "%s/stderr", g_dir);
    FILE *f = fopen(pin, "wb");
    ck_assert_ptr_nonnull(f);
    if (in_len)
        ck_assert_uint_eq(fwrite(in, 1, in_len, f), in_len);
    fclose(f);
    const char *argv[32] = {test_bin_path()};
    int n = 1;
    for (; args[n - 1] && n < 31; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int i = open(pin, O_RDONLY), o = open(pout, O_WRONLY | O_CREAT | O_TRUNC, 0600),
            e = open(perr, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (i < 0 || o < 0 || e < 0 || dup2(i, 0) < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
            _exit(127);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    struct result r;
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    r.out = slurp(pout);
    r.err = slurp(perr);
    return r;
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

START_TEST(help_and_version_everywhere)
{
    struct result r = run("", 0, ARGS("--help"));
    ck_assert_int_eq(r.status, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "tokenize"));
    ck_assert_ptr_nonnull(strstr(r.out, "serve"));
    result_free(&r);
    r = run("", 0, ARGS("--version"));
    ck_assert_int_eq(r.status, 0);
    ck_assert_str_eq(r.out, "cinfer " CINFER_VERSION "\n");
    result_free(&r);
    static const char *const cmds[] = {"tokenize", "serve", "run", "bench", "template"};
    for (int i = 0; i < 5; i++) {
        r = run("", 0, ARGS(cmds[i], "--help"));
        ck_assert_msg(r.status == 0, "cinfer %s --help: %d", cmds[i], r.status);
        ck_assert_ptr_nonnull(strstr(r.out, cmds[i]));
        result_free(&r);
        r = run("", 0, ARGS(cmds[i], "--version"));
        ck_assert_int_eq(r.status, 0);
        ck_assert_str_eq(r.out, "cinfer " CINFER_VERSION "\n");
        result_free(&r);
    }
}
END_TEST

START_TEST(usage_errors_exit_2)
{
    const char *m = test_model_path();
    const char *const *cases[] = {
        ARGS("nonsense"),
        ARGS("tokenize", "hello"),
        ARGS("tokenize", "-m", m),
        ARGS("tokenize", "-m", m, "a", "b"),
        ARGS("tokenize", "-m", m, "--stdin", "a"),
        ARGS("tokenize", "-m", m, "--frobnicate", "a"),
        ARGS("tokenize", "-m"),
        ARGS("tokenize", "-m", "/nonexistent.gguf", "a"),
        ARGS("template", "-m", m),
        ARGS("template", "--messages", "-"),
        ARGS("template", "-m", m, "--messages", "/nonexistent.json"),
        ARGS("template", "-m", m, "--messages", "-", "--chat-template", "/nonexistent.jinja"),
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        struct result r = run("", 0, cases[i]);
        ck_assert_msg(r.status == 2, "case %zu: exit %d (%s)", i, r.status, r.err);
        ck_assert_msg(strncmp(r.err, "cinfer", 6) == 0, "case %zu: stderr '%s'", i, r.err);
        ck_assert_str_eq(r.out, "");
        result_free(&r);
    }
    struct result r = run("", 0, (const char *const[]){NULL});
    ck_assert_int_eq(r.status, 2);
    result_free(&r);
}
END_TEST

START_TEST(tokenize_matches_reference_on_corpus)
{
    char *s = slurp("tests/fixtures/tokenizer_smollm2.json");
    cJSON *fx = cJSON_Parse(s);
    free(s);
    ck_assert_ptr_nonnull(fx);
    const cJSON *c;
    int n = 0, bad = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(fx, "cases"))
    {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        const cJSON *ids = cJSON_GetObjectItem(c, "ids");
        const cJSON *ids_sp = cJSON_GetObjectItem(c, "ids_special");
        char *want = cJSON_PrintUnformatted(ids);
        struct result r =
            run(text, strlen(text), ARGS("tokenize", "-m", test_model_path(), "--stdin"));
        if (r.status != 0 || strlen(r.out) != strlen(want) + 1 ||
            strncmp(r.out, want, strlen(want))) {
            fprintf(stderr, "case %d: cinfer printed %s, llama.cpp %s\n", n, r.out, want);
            bad++;
        }
        result_free(&r);
        cJSON_free(want);
        if (!cJSON_Compare(ids, ids_sp, 1)) { /* special text in it: check --special too */
            want = cJSON_PrintUnformatted(ids_sp);
            r = run(text, strlen(text),
                    ARGS("tokenize", "-m", test_model_path(), "--stdin", "--special"));
            if (r.status != 0 || strncmp(r.out, want, strlen(want))) {
                fprintf(stderr, "case %d --special: %s vs %s\n", n, r.out, want);
                bad++;
            }
            result_free(&r);
            cJSON_free(want);
        }
        n++;
    }
    cJSON_Delete(fx);
    ck_assert_int_ge(n, 200);
    ck_assert_msg(bad == 0, "%d of %d strings differ", bad, n);
}
END_TEST

START_TEST(tokenize_flags)
{
    const char *m = test_model_path();
    struct result r = run("", 0, ARGS("tokenize", "-m", m, "--bos", "Hello"));
    ck_assert_int_eq(r.status, 0);
    ck_assert_str_eq(r.out, "[1,19556]\n");
    result_free(&r);
    r = run("", 0, ARGS("tokenize", "-m", m, "--pieces", "Hello world"));
    ck_assert_int_eq(r.status, 0);
    ck_assert_str_eq(r.out,
                     "[{\"id\":19556,\"piece\":\"Hello\"},{\"id\":905,\"piece\":\" world\"}]\n");
    result_free(&r);
    r = run("", 0, ARGS("tokenize", "-m", m, "--special", "--pieces", "<|im_end|>"));
    ck_assert_str_eq(r.out, "[{\"id\":2,\"piece\":\"<|im_end|>\"}]\n");
    result_free(&r);
    r = run("", 0, ARGS("tokenize", "-m", m, ""));
    ck_assert_int_eq(r.status, 0);
    ck_assert_str_eq(r.out, "[]\n");
    result_free(&r);
}
END_TEST

/* The binary must refuse the file with exit 2 and one line on stderr. */
static void expect_refused(const char *path, const char *what)
{
    struct result r = run("", 0, ARGS("tokenize", "-m", path, "hello"));
    ck_assert_msg(r.status == 2, "%s: exit %d, stderr: %s", what, r.status, r.err);
    ck_assert_msg(strstr(r.err, "Sanitizer") == NULL && strstr(r.err, "runtime error") == NULL,
                  "%s: sanitizer report: %s", what, r.err);
    size_t len = strlen(r.err);
    ck_assert_msg(len > 0 && r.err[len - 1] == '\n' && strchr(r.err, '\n') == r.err + len - 1,
                  "%s: not one line: '%s'", what, r.err);
    ck_assert_str_eq(r.out, "");
    result_free(&r);
}

START_TEST(truncated_models_exit_2)
{
    char err[256], path[128];
    struct gguf_file *f = NULL;
    ck_assert_int_eq(gguf_open(test_model_path(), &f, err, sizeof(err)), 0);
    snprintf(path, sizeof(path), "%s/cut.gguf", g_dir);
    uint64_t seed = 0x2545f4914f6cdd1dull;
    for (int k = 0; k < 50; k++) {
        seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
        uint64_t off = seed % (f->size - 1);
        FILE *o = fopen(path, "wb");
        ck_assert_ptr_nonnull(o);
        ck_assert_uint_eq(fwrite(f->base, 1, (size_t)off, o), off);
        fclose(o);
        char what[64];
        snprintf(what, sizeof(what), "truncated at %llu", (unsigned long long)off);
        expect_refused(path, what);
    }
    gguf_close(f);
}
END_TEST

START_TEST(crafted_models_exit_2)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/bad.gguf", g_dir);
    struct gw w = {0};
    gw_header(&w, 3, 1ull << 50, 0); /* huge tensor count */
    ck_assert_int_eq(gw_save(&w, path), 0);
    expect_refused(path, "huge tensor count");
    gw_free(&w);

    uint64_t big[2] = {1ull << 40, 4}, ne[2] = {32, 2};
    gw_header(&w, 3, 1, 0);
    gw_tensor(&w, "w", 2, big, QT_F32, 0); /* a dimension of 2^40 */
    gw_pad(&w, 32);
    ck_assert_int_eq(gw_save(&w, path), 0);
    expect_refused(path, "dimension 2^40");
    gw_free(&w);

    gw_header(&w, 3, 1, 0);
    gw_tensor(&w, "w", 2, ne, 1234, 0); /* unknown type */
    ck_assert_int_eq(gw_save(&w, path), 0);
    expect_refused(path, "unknown type");
    gw_free(&w);

    gw_header(&w, 3, 0, 1);
    gw_str(&w, "tokenizer.ggml.model"), gw_u32(&w, 8), gw_u64(&w, 1ull << 40); /* string past end */
    gw_bytes(&w, "gpt2", 4);
    ck_assert_int_eq(gw_save(&w, path), 0);
    expect_refused(path, "string length past the end");
    gw_free(&w);

    gw_header(&w, 3, 1, 0);
    gw_tensor(&w, "w", 2, ne, QT_F32, 1ull << 30); /* offset past the end */
    gw_pad(&w, 32);
    for (int i = 0; i < 256; i++)
        gw_bytes(&w, "\0", 1);
    ck_assert_int_eq(gw_save(&w, path), 0);
    expect_refused(path, "offset past the end");
    gw_free(&w);

    gw_header(&w, 3, 0, 1);
    gw_kv_str(&w, "general.architecture", "llama"); /* valid GGUF without a tokenizer */
    ck_assert_int_eq(gw_save(&w, path), 0);
    expect_refused(path, "no tokenizer");
    gw_free(&w);

    gw_header(&w, 3, 0, 2);
    gw_kv_str(&w, "tokenizer.ggml.model", "gpt2");
    const char *toks[2] = {"a", "b"};
    gw_kv_arr_str(&w, "tokenizer.ggml.tokens", 2, toks, NULL); /* gpt2 without merges */
    ck_assert_int_eq(gw_save(&w, path), 0);
    expect_refused(path, "no merges");
    gw_free(&w);

    ck_assert_int_eq(gw_save(&w, path), 0); /* empty file */
    expect_refused(path, "empty file");
}
END_TEST

START_TEST(run_generates_the_reference_text)
{
    char *s = slurp("tests/fixtures/greedy_smollm2.json");
    cJSON *fx = cJSON_Parse(s);
    free(s);
    ck_assert_ptr_nonnull(fx);
    const cJSON *p0 = cJSON_GetArrayItem(cJSON_GetObjectItem(fx, "prompts"), 0);
    const char *prompt = cJSON_GetObjectItem(p0, "prompt")->valuestring;
    const char *text = cJSON_GetObjectItem(p0, "text")->valuestring;
    struct result r = run(
        "", 0,
        ARGS("run", "-m", test_model_path(), "-p", prompt, "-n", "32", "--temp", "0", "-t", "2"));
    ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
    ck_assert_msg(strcmp(r.out, text) == 0, "got '%s'\nwant '%s'", r.out, text);
    ck_assert_ptr_nonnull(strstr(r.err, "tok/s"));
    result_free(&r);
    cJSON_Delete(fx);
}
END_TEST

/* --kernels scalar: the reference loops, the same greedy text as the default (widest) path */
START_TEST(run_kernels_give_the_same_text)
{
    const char *m = test_model_path();
    struct result a = run("", 0,
                          ARGS("run", "-m", m, "-p", "The capital of France is", "-n", "12",
                               "--temp", "0", "-t", "2"));
    struct result s = run("", 0,
                          ARGS("run", "-m", m, "-p", "The capital of France is", "-n", "12",
                               "--temp", "0", "-t", "2", "--kernels", "scalar"));
    ck_assert_msg(a.status == 0 && s.status == 0, "exit %d, %d: %s %s", a.status, s.status, a.err,
                  s.err);
    ck_assert_ptr_nonnull(strstr(s.err, "kernels scalar"));
    ck_assert_msg(strcmp(a.out, s.out) == 0, "default '%s' vs scalar '%s'", a.out, s.out);
    ck_assert_msg(strlen(a.out) > 0, "nothing generated");
    result_free(&a);
    result_free(&s);
}
END_TEST

START_TEST(run_seed_repeats)
{
    const char *m = test_model_path();
    struct result a = run(
        "", 0,
        ARGS("run", "-m", m, "-p", "Once upon a time", "-n", "24", "--seed", "5", "--temp", "1.0"));
    struct result b = run(
        "", 0,
        ARGS("run", "-m", m, "-p", "Once upon a time", "-n", "24", "--seed", "5", "--temp", "1.0"));
    struct result c = run(
        "", 0,
        ARGS("run", "-m", m, "-p", "Once upon a time", "-n", "24", "--seed", "6", "--temp", "1.0"));
    ck_assert_int_eq(a.status, 0);
    ck_assert(strlen(a.out) > 10);
    ck_assert_str_eq(a.out, b.out);
    ck_assert_str_ne(a.out, c.out);
    result_free(&a);
    result_free(&b);
    result_free(&c);
    /* a chat prompt answers and stops at the end of its turn */
    struct result d = run("", 0,
                          ARGS("run", "-m", m, "-p", "Name the capital of France.", "--chat",
                               "--temp", "0", "-n", "64"));
    ck_assert_int_eq(d.status, 0);
    ck_assert_ptr_nonnull(strstr(d.out, "Paris"));
    ck_assert_ptr_null(strstr(d.out, "<|im_end|>"));
    result_free(&d);
}
END_TEST

START_TEST(run_and_bench_refuse_bad_input)
{
    const char *m = test_model_path();
    const char *const *cases[] = {
        ARGS("run", "-m", m),
        ARGS("run", "-p", "x"),
        ARGS("run", "-m", m, "-p", "x", "--temp", "warm"),
        ARGS("run", "-m", m, "-p", "x", "--top-p", "0"),
        ARGS("run", "-m", m, "-p", "x", "-n", "-3"),
        ARGS("run", "-m", m, "-p", "x", "--chat-template", "vicuna"),
        ARGS("run", "-m", "/nonexistent.gguf", "-p", "x"),
        ARGS("bench", "-m", m, "-r", "0"),
        ARGS("bench", "-m", m, "--batch", "x"),
        ARGS("bench", "-m", m, "-d", "-1"),
        ARGS("bench", "-m", m, "-d", "deep"),
        ARGS("bench"),
        ARGS("run", "-m", m, "-p", "x", "--kernels", "avx9"),
        ARGS("bench", "-m", m, "--kernels", "fast"),
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        struct result r = run("", 0, cases[i]);
        ck_assert_msg(r.status == 2, "case %zu: exit %d (%s)", i, r.status, r.err);
        ck_assert_str_eq(r.out, "");
        result_free(&r);
    }
}
END_TEST

START_TEST(bench_reports_json_rows)
{
    struct result r = run("", 0,
                          ARGS("bench", "-m", test_model_path(), "-p", "16", "-n", "4", "-r", "2",
                               "--batch", "3", "-d", "5", "--json", "-t", "2"));
    ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
    char *line2 = strchr(r.out, '\n');
    ck_assert_ptr_nonnull(line2);
    *line2++ = '\0';
    cJSON *a = cJSON_Parse(r.out), *b = cJSON_Parse(line2);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_str_eq(cJSON_GetObjectItem(a, "test")->valuestring, "pp16 @ d5");
    ck_assert_str_eq(cJSON_GetObjectItem(b, "test")->valuestring, "tg4@b3 @ d5");
    ck_assert(cJSON_GetObjectItem(a, "tokens_per_s")->valuedouble > 0);
    ck_assert(cJSON_GetObjectItem(b, "stddev")->valuedouble >= 0);
    ck_assert_int_eq(cJSON_GetObjectItem(b, "threads")->valueint, 2);
    cJSON_Delete(a);
    cJSON_Delete(b);
    result_free(&r);
}
END_TEST

Suite *cli_suite(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("cli");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, help_and_version_everywhere);
    tcase_add_test(tc, usage_errors_exit_2);
    tcase_add_test(tc, tokenize_matches_reference_on_corpus);
    tcase_add_test(tc, tokenize_flags);
    tcase_add_test(tc, truncated_models_exit_2);
    tcase_add_test(tc, crafted_models_exit_2);
    tcase_add_test(tc, run_generates_the_reference_text);
    tcase_add_test(tc, run_seed_repeats);
    tcase_add_test(tc, run_kernels_give_the_same_text);
    tcase_add_test(tc, run_and_bench_refuse_bad_input);
    tcase_add_test(tc, bench_reports_json_rows);
    suite_add_tcase(s, tc);
    return s;
}

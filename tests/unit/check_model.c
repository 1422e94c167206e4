/*
 * tests/unit/check_model.c - the model on the default SmolLM2 against
 * llama.cpp (tests/fixtures/greedy_smollm2.json, made by
 * tests/fixtures/make_greedy_fixture.py with llama-cpp-python 0.3.16), batch
 * invariance bit for bit, and clear refusals of models we cannot run.
 *
 * Two comparisons with llama.cpp.  With exact_llamacpp (weights as the GGUF
 * stores them, a lone token's attention in llama.cpp's decode order), every
 * kernel follows llama.cpp's AVX2 arithmetic, so the greedy text and its
 * logits match to 1e-3: this pins the whole model down.  As cinfer runs
 * (packed weights, one attention order), the matmuls round differently
 * (kernels.h) and that moves the 8-bit activation roundings, hence the
 * logits, by about as much as llama.cpp's own distance from an all-f32 run
 * (0.20 vs 0.22 RMS when measured): there the logits must stay close and the
 * greedy choice may differ only where llama.cpp's top two were close.
 */
#include <cJSON.h>
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/vocab.h"
#include "engine/model.h"
#include "kv-cache/kv.h"
#include "tests/unit/gguf_writer.h"
#include "tests/unit/suites.h"
#include "util/quant.h"

#define FIXTURE "tests/fixtures/greedy_smollm2.json"

static struct gguf_file *g_file;
static struct tok *g_tok;
static struct model *g_model;          /* packed weights, as cinfer runs */
static struct model *g_model_unpacked; /* exact_llamacpp: the GGUF's layout */
static struct dev g_dev, g_dev_unpacked;

static void setup(void)
{
    char err[512];
    ck_assert_msg(gguf_open(test_model_path(), &g_file, err, sizeof(err)) == 0, "%s", err);
    ck_assert_msg(eng_tokenizer_load(g_file, NULL, &g_tok, err, sizeof(err)) == 0, "%s", err);
    struct dev_config cfg = {.threads = 2}, cfg_u = {.threads = 2, .exact_llamacpp = 1};
    ck_assert_int_eq(dev_create("cpu", &cfg, &g_dev, NULL, 0), 0);
    ck_assert_int_eq(dev_create("cpu", &cfg_u, &g_dev_unpacked, NULL, 0), 0);
    ck_assert_msg(model_load(g_file, &g_dev, &g_model, err, sizeof(err)) == 0, "%s", err);
    ck_assert_msg(model_load(g_file, &g_dev_unpacked, &g_model_unpacked, err, sizeof(err)) == 0,
                  "%s", err);
    /* the default model is Q4_1 with a Q8_0 output: both pack */
    ck_assert(g_model->layers[0].wq.packed && g_model->output.packed);
    ck_assert(!g_model_unpacked->layers[0].wq.packed && !g_model_unpacked->output.packed);
}

static void teardown(void)
{
    model_free(g_model);
    model_free(g_model_unpacked);
    dev_destroy(&g_dev);
    dev_destroy(&g_dev_unpacked);
    tok_destroy(g_tok);
    gguf_close(g_file);
}

static cJSON *load_fixture_at(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s: cannot open", path);
    static char buf[1 << 20];
    size_t len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = '\0';
    cJSON *fx = cJSON_Parse(buf);
    ck_assert_ptr_nonnull(fx);
    return fx;
}

static cJSON *load_fixture(void)
{
    return load_fixture_at(FIXTURE);
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* One sequence: its block table and tokens so far. */
struct seq {
    struct kv_seq kv;
    int32_t tokens[256];
    int n;
};

/* the sequences of a batch being built, by block table, and each token's place */
struct tabs {
    int n;
    const int32_t *t[8];
    int32_t nb[8];
    int32_t seq[256], pos[256];
};

/* token i of the batch is at position pos of s */
static void tabs_put(struct tabs *tb, int i, const struct kv_seq *s, int32_t pos)
{
    int k = 0;
    while (k < tb->n && tb->t[k] != s->blocks)
        k++;
    if (k == tb->n) {
        tb->t[k] = s->blocks;
        tb->nb[k] = s->n_blocks;
        tb->n++;
    }
    tb->seq[i] = k;
    tb->pos[i] = pos;
}

/* the batch of n tokens ids placed in tb */
static struct model_batch tabs_batch(const struct tabs *tb, int n, const int32_t *ids,
                                     const uint8_t *want)
{
    return (struct model_batch){n, ids, tb->pos, tb->seq, want, NULL, tb->n, tb->t, tb->nb, NULL, NULL};
}

/* the whole of s's tokens in one batch, as the reference ran; logits of the last */
static void prefill(struct model *m, struct model_kv *kv, struct kv_pool *pool, struct seq *s,
                    float *logits)
{
    struct tabs tb = {0};
    uint8_t want[256] = {0};
    ck_assert_int_eq(kv_alloc_slots(pool, &s->kv, s->n), 0);
    for (int i = 0; i < s->n; i++)
        tabs_put(&tb, i, &s->kv, i);
    want[s->n - 1] = 1;
    struct model_batch b = tabs_batch(&tb, s->n, s->tokens, want);
    ck_assert_int_eq(model_forward(m, kv, &b, logits), 0);
}

/* appends `token` to s and runs it alone (a decode step); logits of it */
static void decode(struct model *m, struct model_kv *kv, struct kv_pool *pool, struct seq *s,
                   int32_t token, float *logits)
{
    ck_assert_int_eq(kv_alloc_slots(pool, &s->kv, 1), 0);
    s->tokens[s->n] = token;
    struct tabs tb = {0};
    tabs_put(&tb, 0, &s->kv, s->n);
    uint8_t w1 = 1;
    struct model_batch b1 = tabs_batch(&tb, 1, &s->tokens[s->n], &w1);
    s->n++;
    ck_assert_int_eq(model_forward(m, kv, &b1, logits), 0);
}

/*
 * llama.cpp's greedy tokens (fixture fx) from `model` run as the reference
 * ran (the prompt in one batch, then a token a step): every step's token,
 * and its logit within 1e-3.
 */
static void greedy_check(struct model *model, const struct tok *tk, cJSON *fx)
{
    struct kv_pool *pool = NULL;
    struct model_kv kv;
    ck_assert_int_eq(kv_pool_create(64, 16, &pool), 0);
    ck_assert_int_eq(model_kv_init(model, &kv, 64, 16, QT_F16), 0);
    float *logits = malloc(sizeof(float) * model->hp.n_vocab);
    int prompts = 0, near_ties = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(fx, "prompts"))
    {
        const char *text = cJSON_GetObjectItem(p, "prompt")->valuestring;
        struct seq s = {0};
        kv_seq_init(&s.kv);
        s.n = (int)tok_encode(tk, text, strlen(text), 0, s.tokens, 256);
        const cJSON *pid = cJSON_GetObjectItem(p, "prompt_ids");
        ck_assert_int_eq(s.n, cJSON_GetArraySize(pid));
        for (int i = 0; i < s.n; i++)
            ck_assert_int_eq(s.tokens[i], (int)cJSON_GetArrayItem(pid, i)->valuedouble);
        /* prefill in one batch, then one token per step, as the reference ran */
        prefill(model, &kv, pool, &s, logits);
        int step = 0;
        const cJSON *st;
        cJSON_ArrayForEach(st, cJSON_GetObjectItem(p, "steps"))
        {
            int want_id = (int)cJSON_GetObjectItem(st, "id")->valuedouble;
            double ref = cJSON_GetObjectItem(st, "logit")->valuedouble;
            double margin = ref - cJSON_GetObjectItem(st, "second_logit")->valuedouble;
            int got = argmax(logits, model->hp.n_vocab);
            if (got != want_id) {
                /* allowed only at a near-tie of the reference (none in this fixture) */
                ck_assert_msg(margin < 0.01, "prompt %d step %d: %d instead of %d (margin %.4f)",
                              prompts, step, got, want_id, margin);
                near_ties++;
                break;
            }
            ck_assert_msg(fabs(logits[got] - ref) < 1e-3, "prompt %d step %d: logit %.5f vs %.5f",
                          prompts, step, logits[got], ref);
            decode(model, &kv, pool, &s, got, logits);
            step++;
        }
        ck_assert_int_eq(step + near_ties, 32);
        kv_free_seq(pool, &s.kv);
        prompts++;
    }
    ck_assert_int_eq(prompts, 8);
    ck_assert_int_eq(near_ties, 0);
    free(logits);
    model_kv_free(model, &kv);
    kv_pool_destroy(pool);
}

START_TEST(greedy_matches_llamacpp)
{
    cJSON *fx = load_fixture();
    greedy_check(g_model_unpacked, g_tok, fx);
    cJSON_Delete(fx);
}
END_TEST

/*
 * The second real model (make model-qwen; skipped loudly without it):
 * Qwen2.5-Coder-0.5B-Instruct Q4_K_M, whose Q4_K, Q5_0, Q6_K and Q8_0
 * tensors take the K-quant and 32-block kernels, under exact_llamacpp
 * against tests/fixtures/greedy_qwen2.5-coder.json (llama-cpp-python 0.3.16
 * built for AVX2 only, tests/fixtures/make_greedy_fixture.py).
 */
#define QWEN_MODEL "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
#define QWEN_FIXTURE "tests/fixtures/greedy_qwen2.5-coder.json"

START_TEST(qwen_greedy_matches_llamacpp)
{
    const char *path = getenv("CINFER_QWEN_MODEL") ? getenv("CINFER_QWEN_MODEL") : QWEN_MODEL;
    if (access(path, R_OK)) {
        printf("SKIP: qwen_greedy_matches_llamacpp: no %s (make model-qwen fetches it)\n", path);
        return;
    }
    char err[512];
    struct gguf_file *g;
    struct tok *tk;
    struct dev d;
    struct model *m;
    struct dev_config cfg = {.threads = 2, .exact_llamacpp = 1};
    ck_assert_msg(gguf_open(path, &g, err, sizeof(err)) == 0, "%s", err);
    ck_assert_msg(eng_tokenizer_load(g, NULL, &tk, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(dev_create("cpu", &cfg, &d, NULL, 0), 0);
    ck_assert_msg(model_load(g, &d, &m, err, sizeof(err)) == 0, "%s", err);
    cJSON *fx = load_fixture_at(QWEN_FIXTURE);
    greedy_check(m, tk, fx);
    cJSON_Delete(fx);
    model_free(m);
    dev_destroy(&d);
    tok_destroy(tk);
    gguf_close(g);
}
END_TEST

/*
 * The packed model (cinfer's default) fed llama.cpp's greedy tokens step by
 * step (teacher forcing, so every step of every prompt is compared): the
 * logit of llama.cpp's token within 1 of llama.cpp's (0.70 at most when
 * measured), their RMS difference under 0.4 (0.20 measured), and the same
 * argmax wherever llama.cpp's margin to its second choice is at least 0.5
 * (218 of the 256 steps; the 5 that differ had margins under 0.16).
 */
START_TEST(packed_model_tracks_llamacpp)
{
    cJSON *fx = load_fixture();
    struct kv_pool *pool = NULL;
    struct model_kv kv;
    ck_assert_int_eq(kv_pool_create(64, 16, &pool), 0);
    ck_assert_int_eq(model_kv_init(g_model, &kv, 64, 16, QT_F16), 0);
    float *logits = malloc(sizeof(float) * g_model->hp.n_vocab);
    int steps = 0, decisive = 0;
    double sq = 0.0;
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(fx, "prompts"))
    {
        struct seq s = {0};
        kv_seq_init(&s.kv);
        const cJSON *id;
        cJSON_ArrayForEach(id, cJSON_GetObjectItem(p, "prompt_ids")) s.tokens[s.n++] =
            (int32_t)id->valuedouble;
        prefill(g_model, &kv, pool, &s, logits);
        const cJSON *st;
        cJSON_ArrayForEach(st, cJSON_GetObjectItem(p, "steps"))
        {
            int ref_id = (int)cJSON_GetObjectItem(st, "id")->valuedouble;
            double ref = cJSON_GetObjectItem(st, "logit")->valuedouble;
            double margin = ref - cJSON_GetObjectItem(st, "second_logit")->valuedouble;
            double diff = logits[ref_id] - ref;
            ck_assert_msg(fabs(diff) < 1.0, "step %d: logit %.4f, llama.cpp's %.4f", steps,
                          logits[ref_id], ref);
            sq += diff * diff;
            if (margin >= 0.5) {
                int got = argmax(logits, g_model->hp.n_vocab);
                ck_assert_msg(got == ref_id, "step %d: %d instead of %d (margin %.3f)", steps, got,
                              ref_id, margin);
                decisive++;
            }
            decode(g_model, &kv, pool, &s, ref_id, logits);
            steps++;
        }
        kv_free_seq(pool, &s.kv);
    }
    ck_assert_int_eq(steps, 8 * 32);
    ck_assert_int_ge(decisive, 200);
    double rms = sqrt(sq / steps);
    ck_assert_msg(rms < 0.4, "RMS logit difference %.4f", rms);
    free(logits);
    model_kv_free(g_model, &kv);
    kv_pool_destroy(pool);
    cJSON_Delete(fx);
}
END_TEST

/* Decodes `steps` greedy tokens of sequence 0 while 7 others of different
 * lengths share each batch (n_others = 0: alone).  Records sequence 0's
 * tokens and its logits at every step. */
static void run_batch(int n_others, int steps, int32_t *out_ids, float *out_logits)
{
    static const char *const prompts[8] = {
        "The quick brown fox jumps over the lazy dog because",
        "1 2 3",
        "In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole, filled "
        "with the ends of worms and an oozy smell,",
        "def add(a, b):",
        "Paris is",
        "Roses are red, violets are blue,",
        "Once",
        "The three laws of thermodynamics state that energy",
    };
    int V = g_model->hp.n_vocab, n_seq = 1 + n_others;
    struct kv_pool *pool = NULL;
    struct model_kv kv;
    ck_assert_int_eq(kv_pool_create(128, 16, &pool), 0);
    ck_assert_int_eq(model_kv_init(g_model, &kv, 128, 16, QT_F16), 0);
    static struct seq s[8];
    int prefilled[8] = {0};
    for (int i = 0; i < n_seq; i++) {
        memset(&s[i], 0, sizeof(s[i]));
        kv_seq_init(&s[i].kv);
        s[i].n = (int)tok_encode(g_tok, prompts[i], strlen(prompts[i]), 0, s[i].tokens, 256);
    }
    float *logits = malloc(sizeof(float) * V * 8);
    int32_t ids[256];
    uint8_t want[256];
    int out = 0;
    /* each step: sequence 0 and the others contribute their next tokens; the
     * others prefill in chunks of 3 so that batches mix prefill and decode */
    for (int step = 0; out < steps; step++) {
        int n = 0, row_of[8], rows = 0;
        struct tabs tb = {0};
        for (int i = 0; i < n_seq; i++) {
            int start = prefilled[i];
            int count = start < s[i].n ? s[i].n - start : 0;
            if (i == 0 && start < s[i].n)
                count = s[i].n - start; /* sequence 0 prefills in one go */
            else if (i > 0 && count > 3)
                count = 3;
            if (count == 0)
                continue; /* waiting for its sampled token */
            ck_assert_int_eq(kv_alloc_slots(pool, &s[i].kv, count), 0);
            for (int j = 0; j < count; j++) {
                ids[n] = s[i].tokens[start + j];
                tabs_put(&tb, n, &s[i].kv, start + j);
                want[n] = j == count - 1 && start + count == s[i].n;
                n++;
            }
            prefilled[i] = start + count;
            row_of[i] = want[n - 1] ? rows++ : -1;
        }
        for (int i = n_seq; i < 8; i++)
            row_of[i] = -1;
        struct model_batch b = tabs_batch(&tb, n, ids, want);
        ck_assert_int_eq(model_forward(g_model, &kv, &b, logits), 0);
        for (int i = 0; i < n_seq; i++) {
            if (row_of[i] < 0 || s[i].n >= 200)
                continue;
            const float *lg = logits + (size_t)row_of[i] * V;
            int tok = argmax(lg, V);
            if (i == 0) {
                out_ids[out] = tok;
                memcpy(out_logits + (size_t)out * V, lg, sizeof(float) * V);
                out++;
            }
            s[i].tokens[s[i].n++] = tok;
        }
    }
    for (int i = 0; i < n_seq; i++)
        kv_free_seq(pool, &s[i].kv);
    free(logits);
    model_kv_free(g_model, &kv);
    kv_pool_destroy(pool);
}

START_TEST(batch_invariance)
{
    enum { STEPS = 12 };
    int V = g_model->hp.n_vocab;
    int32_t alone[STEPS], batched[STEPS];
    float *la = malloc(sizeof(float) * V * STEPS), *lb = malloc(sizeof(float) * V * STEPS);
    run_batch(0, STEPS, alone, la);
    run_batch(7, STEPS, batched, lb);
    ck_assert_mem_eq(alone, batched, sizeof(alone));
    for (int i = 0; i < STEPS; i++)
        ck_assert_msg(memcmp(la + (size_t)i * V, lb + (size_t)i * V, sizeof(float) * V) == 0,
                      "step %d: logits differ inside a batch", i);
    free(la);
    free(lb);
}
END_TEST

/* ---- fenced mode: the model never touches device memory from the host ------------ */

/* One sequence of the fenced test: its tokens (prompt, then generated) and table. */
struct fseq {
    struct kv_seq kv;
    int32_t tok[96];
    int n_prompt, n_tok, n_done; /* prompt, all, computed */
    int row;                     /* its logits row in the last step, or -1 */
};

/* A step being built: tokens of several sequences, in the engine's fixed orders. */
struct fstep {
    struct tabs tb;
    int32_t ids[256];
    uint8_t want[256], order[256];
    int n, rows;
};

/* Adds the next `count` tokens of s to st (its row when they reach its end). */
static void fstep_add(struct fstep *st, struct kv_pool *pool, struct fseq *s, int count)
{
    ck_assert_int_eq(kv_alloc_slots(pool, &s->kv, s->n_done + count - s->kv.n_tokens), 0);
    for (int j = 0; j < count; j++) {
        int p = s->n_done + j;
        tabs_put(&st->tb, st->n, &s->kv, p);
        st->ids[st->n] = s->tok[p];
        st->order[st->n] = p < s->n_prompt; /* prompt: GEMM order; generated: lone */
        st->want[st->n] = p == s->n_tok - 1;
        st->n++;
    }
    s->n_done += count;
    s->row = s->n_done == s->n_tok ? st->rows++ : -1;
}

/*
 * Runs st on the normal model and the fenced one, each with its own K/V,
 * and asserts the logits are the same bits; commits the blocks; leaves the
 * normal model's logits in ln.
 */
static void fstep_run_on(struct fstep *st, struct model *ref, struct model *mf,
                         struct model_kv *kvn, struct model_kv *kvf, float *ln, float *lf,
                         const char *what)
{
    struct model_batch b = tabs_batch(&st->tb, st->n, st->ids, st->want);
    b.gemm_order = st->order;
    ck_assert_int_eq(model_forward(ref, kvn, &b, ln), 0);
    ck_assert_int_eq(model_forward(mf, kvf, &b, lf), 0);
    size_t V = (size_t)ref->hp.n_vocab;
    for (int r = 0; r < st->rows; r++)
        ck_assert_msg(memcmp(ln + r * V, lf + r * V, V * sizeof(float)) == 0,
                      "%s: logits row %d differs", what, r);
}

static void fstep_run(struct fstep *st, struct model *mf, struct model_kv *kvn,
                      struct model_kv *kvf, float *ln, float *lf, const char *what)
{
    fstep_run_on(st, g_model, mf, kvn, kvf, ln, lf, what); /* fenced vs normal */
}

/* s's next token: greedy on the normal model's row */
static void fseq_next(struct fseq *s, const float *ln, int V)
{
    if (s->row >= 0)
        s->tok[s->n_tok++] = argmax(ln + (size_t)s->row * V, V);
}

START_TEST(fenced_model_matches_normal)
{
    struct dev df;
    struct dev_config cfg = {.threads = 2, .fenced = 1, .fenced_mib = 512};
    ck_assert_int_eq(dev_create("cpu", &cfg, &df, NULL, 0), 0);
    struct model *mf;
    char err[256];
    ck_assert_msg(model_load(g_file, &df, &mf, err, sizeof(err)) == 0, "%s", err);
    ck_assert(mf->layers[0].wq.packed && mf->output.packed); /* the same layout as g_model */

    /* the fence holds: host pointers are refused, a host read of device memory faults */
    float host[8] = {0};
    ck_assert_int_eq(dev_rmsnorm(&df, host, NULL, 1, 8, 1e-5f, host), -EFAULT);
    ck_assert_int_eq(dev_rmsnorm(&df, mf->layers[0].attn_norm, NULL, 1, 8, 1e-5f, host), -EFAULT);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL); /* a sanitizer's handler would turn the fault into an exit */
        volatile const float *w = mf->layers[0].attn_norm;
        _exit(w[0] == 12345.0f ? 3 : 4); /* must not get here */
    }
    int st_child;
    ck_assert_int_eq(waitpid(pid, &st_child, 0), pid);
    ck_assert_msg(WIFSIGNALED(st_child) && WTERMSIG(st_child) == SIGSEGV,
                  "a host read of a fenced norm vector did not fault (status %d)", st_child);

    enum { BS = 16, NB = 48 };
    struct kv_pool *pool;
    struct model_kv kvn, kvf;
    ck_assert_int_eq(kv_pool_create(NB, BS, &pool), 0);
    ck_assert_int_eq(kv_prefix_cache_enable(pool), 0);
    ck_assert_int_eq(model_kv_init(g_model, &kvn, NB, BS, QT_F16), 0);
    ck_assert_int_eq(model_kv_init(mf, &kvf, NB, BS, QT_F16), 0);
    int V = g_model->hp.n_vocab;
    float *ln = malloc(sizeof(float) * (size_t)V * 4), *lf = malloc(sizeof(float) * (size_t)V * 4);
    ck_assert(ln && lf);

    /* three prompts of random ids */
    struct fseq q[4];
    const int np[3] = {37, 12, 23};
    uint64_t x = 99;
    for (int i = 0; i < 4; i++) {
        memset(&q[i], 0, sizeof(q[i]));
        kv_seq_init(&q[i].kv);
        q[i].row = -1;
    }
    for (int i = 0; i < 3; i++) {
        for (int t = 0; t < np[i]; t++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            q[i].tok[t] = (int32_t)((x >> 33) % (uint64_t)V);
        }
        q[i].n_prompt = q[i].n_tok = np[i];
    }
    struct fstep st;
    /* prefill chunks, mixed: A 20 + B all; A the rest + C 16; decode A, B + C the rest */
    memset(&st, 0, sizeof(st));
    fstep_add(&st, pool, &q[0], 20);
    fstep_add(&st, pool, &q[1], 12);
    fstep_run(&st, mf, &kvn, &kvf, ln, lf, "prefill chunks");
    fseq_next(&q[1], ln, V);
    memset(&st, 0, sizeof(st));
    fstep_add(&st, pool, &q[0], 17);
    fstep_add(&st, pool, &q[2], 16);
    fstep_run(&st, mf, &kvn, &kvf, ln, lf, "prefill and a chunk");
    fseq_next(&q[0], ln, V);
    kv_commit_blocks(pool, &q[0].kv, q[0].tok, q[0].n_done);
    /* decode of all three for 8 steps (C first finishes its prompt) */
    float *c_last = malloc(sizeof(float) * (size_t)V);
    for (int step = 0; step < 8; step++) {
        memset(&st, 0, sizeof(st));
        for (int i = 0; i < 3; i++)
            fstep_add(&st, pool, &q[i], q[i].n_tok - q[i].n_done);
        fstep_run(&st, mf, &kvn, &kvf, ln, lf, "decode");
        if (step == 7)
            memcpy(c_last, ln + (size_t)q[2].row * V, sizeof(float) * (size_t)V);
        for (int i = 0; i < 3 && step < 7; i++)
            fseq_next(&q[i], ln, V);
    }
    /* C preempted: its blocks go; it is recomputed whole (cached blocks reused) beside A's decode
     */
    kv_commit_blocks(pool, &q[2].kv, q[2].tok, q[2].n_done);
    kv_free_seq(pool, &q[2].kv);
    int32_t hit = kv_match_prefix(pool, &q[2].kv, q[2].tok, q[2].n_tok - 1);
    ck_assert_int_eq(hit, 16); /* its first full block, committed before */
    q[2].n_done = hit;
    fseq_next(&q[0], ln, V);
    memset(&st, 0, sizeof(st));
    fstep_add(&st, pool, &q[0], 1);
    fstep_add(&st, pool, &q[2], q[2].n_tok - q[2].n_done);
    fstep_run(&st, mf, &kvn, &kvf, ln, lf, "recompute after preemption");
    ck_assert_msg(memcmp(c_last, ln + (size_t)q[2].row * V, sizeof(float) * (size_t)V) == 0,
                  "the recomputed sequence's logits differ from before its preemption");
    /* D starts with A's first 32 prompt tokens: two cached blocks, 6 tokens of its own */
    memcpy(q[3].tok, q[0].tok, sizeof(int32_t) * 32);
    for (int t = 32; t < 38; t++)
        q[3].tok[t] = (int32_t)(t * 7);
    q[3].n_prompt = q[3].n_tok = 38;
    q[3].n_done = kv_match_prefix(pool, &q[3].kv, q[3].tok, 37);
    ck_assert_int_eq(q[3].n_done, 32);
    memset(&st, 0, sizeof(st));
    fstep_add(&st, pool, &q[3], 6);
    fstep_add(&st, pool, &q[1], q[1].n_tok - q[1].n_done);
    fstep_run(&st, mf, &kvn, &kvf, ln, lf, "prefix reuse");

    for (int i = 0; i < 4; i++)
        kv_free_seq(pool, &q[i].kv);
    free(c_last);
    free(ln);
    free(lf);
    model_kv_free(g_model, &kvn);
    model_kv_free(mf, &kvf);
    kv_pool_destroy(pool);
    model_free(mf);
    dev_destroy(&df);
}
END_TEST

/*
 * Every kernel path this CPU has (dev_kernels_here), and the emulated VNNI
 * build, gives the default path's logits, bit for bit: packed weights as cinfer runs, and
 * exact_llamacpp; prefill chunks of two prompts, then decode steps of both.
 */
START_TEST(kernel_paths_give_the_same_bits)
{
    /* and the VNNI build on SIMDe's stand-ins (tests/unit/emulated_kernels.c) */
    char paths[256];
    snprintf(paths, sizeof(paths), "%s%s", dev_kernels_here(),
             dev_has_kernels("cpu", "vnni_emu") ? " vnni_emu" : "");
    int compared = 0;
    for (int exact = 0; exact < 2; exact++) {
        struct model *ref = exact ? g_model_unpacked : g_model;
        char name[32];
        for (const char *p = paths; test_next_word(&p, name, sizeof(name));) {
            if (!strcmp(name, dev_kernels_name(&g_dev))) /* the default path, ref's own */
                continue;
            struct dev dk;
            struct dev_config cfg = {.threads = 2, .kernels = name, .exact_llamacpp = exact};
            char err[256];
            ck_assert_int_eq(dev_create("cpu", &cfg, &dk, err, sizeof(err)), 0);
            ck_assert_str_eq(dev_kernels_name(&dk), name);
            struct model *mk;
            ck_assert_msg(model_load(g_file, &dk, &mk, err, sizeof(err)) == 0, "%s", err);
            enum { BS = 16, NB = 16 };
            struct kv_pool *pool;
            struct model_kv kvn, kvk;
            ck_assert_int_eq(kv_pool_create(NB, BS, &pool), 0);
            ck_assert_int_eq(model_kv_init(ref, &kvn, NB, BS, QT_F16), 0);
            ck_assert_int_eq(model_kv_init(mk, &kvk, NB, BS, QT_F16), 0);
            int V = ref->hp.n_vocab;
            float *ln = malloc(sizeof(float) * (size_t)V * 2),
                  *lk = malloc(sizeof(float) * (size_t)V * 2);
            ck_assert(ln && lk);
            struct fseq q[2];
            const int np[2] = {23, 9};
            uint64_t x = 7;
            for (int i = 0; i < 2; i++) {
                memset(&q[i], 0, sizeof(q[i]));
                kv_seq_init(&q[i].kv);
                for (int t = 0; t < np[i]; t++) {
                    x = x * 6364136223846793005ull + 1442695040888963407ull;
                    q[i].tok[t] = (int32_t)((x >> 33) % (uint64_t)V);
                }
                q[i].n_prompt = q[i].n_tok = np[i];
            }
            char what[96];
            for (int step = 0; step < 4; step++) {
                struct fstep st;
                memset(&st, 0, sizeof(st));
                for (int i = 0; i < 2; i++)
                    fstep_add(&st, pool, &q[i], q[i].n_tok - q[i].n_done);
                snprintf(what, sizeof(what), "kernels %s vs %s%s, step %d", name,
                         dev_kernels_name(exact ? &g_dev_unpacked : &g_dev),
                         exact ? " (exact_llamacpp)" : "", step);
                fstep_run_on(&st, ref, mk, &kvn, &kvk, ln, lk, what);
                for (int i = 0; i < 2; i++)
                    fseq_next(&q[i], ln, V);
            }
            compared++;
            for (int i = 0; i < 2; i++)
                kv_free_seq(pool, &q[i].kv);
            free(ln);
            free(lk);
            model_kv_free(ref, &kvn);
            model_kv_free(mk, &kvk);
            kv_pool_destroy(pool);
            model_free(mk);
            dev_destroy(&dk);
        }
    }
    if (!compared)
        printf("NOTE: kernel_paths_give_the_same_bits: this CPU has one kernel path (%s): "
               "nothing to compare\n",
               paths);
}
END_TEST

START_TEST(unsupported_models_are_refused_by_name)
{
    char path[] = "/tmp/cinfer-arch-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    struct gw w = {0};
    gw_header(&w, 3, 0, 1);
    gw_kv_str(&w, "general.architecture", "mamba");
    ck_assert_int_eq(gw_save(&w, path), 0);
    gw_free(&w);
    struct gguf_file *f = NULL;
    struct model *m = NULL;
    char err[256];
    ck_assert_int_eq(gguf_open(path, &f, err, sizeof(err)), 0);
    ck_assert_int_eq(model_load(f, &g_dev, &m, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_null(m);
    ck_assert_ptr_nonnull(strstr(err, "'mamba'"));
    gguf_close(f);
    /* a llama without its tensors: the first missing one is named */
    gw_header(&w, 3, 0, 5);
    gw_kv_str(&w, "general.architecture", "llama");
    gw_kv_u32(&w, "llama.embedding_length", 64);
    gw_kv_u32(&w, "llama.block_count", 1);
    gw_kv_u32(&w, "llama.attention.head_count", 4);
    gw_kv_u32(&w, "llama.feed_forward_length", 128);
    ck_assert_int_eq(gw_save(&w, path), 0);
    gw_free(&w);
    ck_assert_int_eq(gguf_open(path, &f, err, sizeof(err)), 0);
    ck_assert_int_eq(model_load(f, &g_dev, &m, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "token_embd.weight"));
    gguf_close(f);
    unlink(path);
}
END_TEST

START_TEST(bad_batches_are_refused)
{
    struct kv_pool *pool = NULL;
    struct model_kv kv;
    ck_assert_int_eq(kv_pool_create(4, 16, &pool), 0);
    ck_assert_int_eq(model_kv_init(g_model, &kv, 4, 16, QT_F16), 0);
    struct kv_seq s;
    kv_seq_init(&s);
    ck_assert_int_eq(kv_alloc_slots(pool, &s, 1), 0);
    int32_t bad = g_model->hp.n_vocab;
    struct tabs tb = {0};
    tabs_put(&tb, 0, &s, 0);
    uint8_t w = 1;
    float *lg = malloc(sizeof(float) * g_model->hp.n_vocab);
    struct model_batch b = tabs_batch(&tb, 1, &bad, &w);
    ck_assert_int_eq(model_forward(g_model, &kv, &b, lg), -EINVAL);
    bad = -1;
    ck_assert_int_eq(model_forward(g_model, &kv, &b, lg), -EINVAL);
    free(lg);
    kv_free_seq(pool, &s);
    model_kv_free(g_model, &kv);
    kv_pool_destroy(pool);
}
END_TEST

Suite *model_suite(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("smollm2");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, greedy_matches_llamacpp);
    tcase_add_test(tc, packed_model_tracks_llamacpp);
    tcase_add_test(tc, batch_invariance);
    tcase_add_test(tc, fenced_model_matches_normal);
    tcase_add_test(tc, kernel_paths_give_the_same_bits);
    tcase_add_test(tc, qwen_greedy_matches_llamacpp);
    tcase_add_test(tc, unsupported_models_are_refused_by_name);
    tcase_add_test(tc, bad_batches_are_refused);
    suite_add_tcase(s, tc);
    return s;
}

/*
 * tests/ppu/check_model.c MODEL.gguf [BACKEND] - the whole model on BACKEND
 * (ppu by default; "scalar": the CPU's scalar kernels, to try this harness
 * where no GPU is) against the CPU backend, on one GGUF (a real model or a
 * random-weight one from make_gguf):
 *   - 8 sequences (prompts of 5..40 random ids, prefilled in one batch), then
 *     64 decode steps of all 8 together, each next token the CPU's greedy
 *     choice fed to both: logits NMSE over every step and top-1 agreement;
 *   - batch invariance on BACKEND: sequence 0 run alone gives the same bits
 *     as inside the batch, step by step;
 *   - recompute: sequence 0's tokens computed again in one chunk in fresh
 *     blocks give the same last-row logits bits as its decode did.
 * Exit 0 when NMSE <= 1e-3, agreement >= 99% and both bit checks hold; 1
 * otherwise; 77 when BACKEND cannot start here.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/model.h"
#include "util/quant.h"

enum { NSEQ = 8, STEPS = 64, MAXP = 40, BS = 16 };
#define PER_SEQ ((MAXP + STEPS + BS) / BS + 1)

struct side {
    struct dev dev;
    struct model *m;
    struct model_kv kv;
};

static int side_open(struct side *s, const struct gguf_file *g, const char *name, int scalar)
{
    char err[256];
    struct dev_config cfg = {.force_scalar = scalar};
    if (dev_create(name, &cfg, &s->dev, err, sizeof err)) {
        printf("SKIP: check_model: %s\n", err);
        return 77;
    }
    if (model_load(g, &s->dev, &s->m, err, sizeof err) ||
        model_kv_init(s->m, &s->kv, 2 * NSEQ * PER_SEQ + 1, BS, QT_F16)) {
        fprintf(stderr, "check_model: %s: %s\n", name, err);
        return 1;
    }
    return 0;
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        b = x[i] > x[b] ? i : b;
    return b;
}

/* The block table of sequence slot k: PER_SEQ blocks of its own. */
static int32_t g_tables[2 * NSEQ][PER_SEQ];

/*
 * One pass on s: for each listed sequence (slot[i]), its tokens from..to-1
 * of toks[i] (the first n_prompt[i] its prompt); the last row of each wants
 * logits.
 */
static int pass(struct side *s, int n, const int *slot, int32_t *const *toks, const int *n_prompt,
                const int *from, const int *to, float *logits)
{
    static int32_t ids[NSEQ * (MAXP + STEPS)], pos[NSEQ * (MAXP + STEPS)],
        seq[NSEQ * (MAXP + STEPS)];
    static uint8_t want[NSEQ * (MAXP + STEPS)], order[NSEQ * (MAXP + STEPS)];
    const int32_t *tabs[NSEQ];
    int32_t nb[NSEQ];
    int T = 0;
    for (int i = 0; i < n; i++) {
        tabs[i] = g_tables[slot[i]];
        nb[i] = PER_SEQ;
        for (int p = from[i]; p < to[i]; p++, T++) {
            ids[T] = toks[i][p];
            pos[T] = p;
            seq[T] = i;
            want[T] = p == to[i] - 1;
            order[T] = p < n_prompt[i]; /* as the scheduler: prompt GEMM order, generated lone */
        }
    }
    struct model_batch b = {T, ids, pos, seq, want, order, n, tabs, nb};
    return model_forward(s->m, &s->kv, &b, logits);
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: check_model MODEL.gguf [ppu|scalar]\n");
        return 2;
    }
    const char *other = argc == 3 ? argv[2] : "ppu";
    struct gguf_file *g;
    char err[256];
    if (gguf_open(argv[1], &g, err, sizeof err)) {
        fprintf(stderr, "check_model: %s: %s\n", argv[1], err);
        return 2;
    }
    struct side cpu = {0}, oth = {0};
    int rc = side_open(&cpu, g, "cpu", 0);
    rc = rc ? rc
            : side_open(&oth, g, strcmp(other, "scalar") ? other : "cpu", !strcmp(other, "scalar"));
    if (rc)
        return rc;
    for (int k = 0; k < 2 * NSEQ; k++)
        for (int j = 0; j < PER_SEQ; j++)
            g_tables[k][j] = 1 + k * PER_SEQ + j;
    int V = cpu.m->hp.n_vocab;
    float *lc = malloc(sizeof(float) * (size_t)V * NSEQ),
          *lo = malloc(sizeof(float) * (size_t)V * NSEQ), *la = malloc(sizeof(float) * (size_t)V);
    int32_t *toks[NSEQ];
    int len[NSEQ], slot[NSEQ], from[NSEQ], to[NSEQ];
    uint64_t x = 7;
    for (int i = 0; i < NSEQ; i++) {
        toks[i] = malloc(sizeof(int32_t) * (MAXP + STEPS + 1));
        len[i] = 5 + i * 5;
        for (int p = 0; p < len[i]; p++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            toks[i][p] = (int32_t)((x >> 33) % (uint64_t)V);
        }
        slot[i] = i;
        from[i] = 0;
        to[i] = len[i];
    }
    double err2 = 0, ref2 = 0;
    int agree = 0, total = 0, invariant = 1;
    int alone_slot = NSEQ; /* sequence 0 again, alone, in slots of its own */
    for (int step = 0; step <= STEPS; step++) {
        if (pass(&cpu, NSEQ, slot, toks, len, from, to, lc) ||
            pass(&oth, NSEQ, slot, toks, len, from, to, lo)) {
            fprintf(stderr, "check_model: a forward pass failed at step %d\n", step);
            return 1;
        }
        /* sequence 0 alone on the other backend, the same tokens */
        if (pass(&oth, 1, &alone_slot, toks, len, from, to, la)) {
            fprintf(stderr, "check_model: the lone pass failed at step %d\n", step);
            return 1;
        }
        invariant &= memcmp(la, lo, sizeof(float) * (size_t)V) == 0;
        for (int i = 0; i < NSEQ; i++) {
            const float *a = lc + (size_t)i * V, *b = lo + (size_t)i * V;
            for (int v = 0; v < V; v++) {
                double d = (double)b[v] - a[v];
                err2 += d * d;
                ref2 += (double)a[v] * a[v];
            }
            int t = argmax(a, V);
            agree += argmax(b, V) == t;
            total++;
            from[i] = to[i];
            toks[i][to[i]++] = t;
        }
    }
    /*
     * recompute: sequence 0's computed tokens again in one chunk in fresh
     * blocks, as a preempted sequence comes back; the last row must be the
     * bits its last decode step gave (row 0 of lo)
     */
    int rs = NSEQ + 1, f0 = 0, t0 = to[0] - 1; /* the last token was never computed */
    float *last = malloc(sizeof(float) * (size_t)V);
    memcpy(last, lo, sizeof(float) * (size_t)V);
    int same = !pass(&oth, 1, &rs, toks, len, &f0, &t0, la) &&
               memcmp(la, last, sizeof(float) * (size_t)V) == 0;
    double nm = ref2 > 0 ? err2 / ref2 : err2;
    double ag = 100.0 * agree / total;
    printf("check_model: %s vs cpu on %s: logits nmse %.3e over %d rows, top-1 agreement %.2f%%\n",
           dev_kernels_name(&oth.dev), argv[1], nm, total, ag);
    printf("check_model: sequence 0 alone vs in the batch of %d: %s\n", NSEQ,
           invariant ? "bitwise equal at every step" : "DIFFER");
    printf("check_model: sequence 0 recomputed in fresh blocks: %s\n",
           same ? "bitwise equal" : "DIFFER");
    int pass_all = nm <= 1e-3 && ag >= 99.0 && invariant && same;
    printf("check_model: %s\n", pass_all ? "passed" : "FAILED");
    return pass_all ? 0 : 1;
}

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
 *     blocks give the same last-row logits bits as its decode did;
 *   - graphs: BACKEND started again with CINFER_PPU_GRAPHS=0 gives the same
 *     bits at every step (on the CPU the setting means nothing);
 *   - mixed batches on BACKEND: one sequence (a 12-token prompt, then 16
 *     tokens one at a time) alone, then inside batches of 1..64 sequences
 *     where the others are prefilling prompts of 8..64 tokens in chunks of
 *     16 or decoding: its logits bitwise equal at every step.
 * STEPS (default 64) shortens the first check on big shapes.  Exit 0 when
 * NMSE <= 1e-3, agreement >= 99% and every bit check holds; 1 otherwise; 77
 * when BACKEND cannot start here.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/model.h"
#include "util/quant.h"

enum { NSEQ = 8, MAXSTEPS = 64, MAXP = 40, BS = 16 };
#define PER_SEQ ((MAXP + MAXSTEPS + BS) / BS + 1)

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
    static int32_t ids[NSEQ * (MAXP + MAXSTEPS)], pos[NSEQ * (MAXP + MAXSTEPS)],
        seq[NSEQ * (MAXP + MAXSTEPS)];
    static uint8_t want[NSEQ * (MAXP + MAXSTEPS)], order[NSEQ * (MAXP + MAXSTEPS)];
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
    struct model_batch b = {T, ids, pos, seq, want, order, n, tabs, nb, NULL, NULL};
    return model_forward(s->m, &s->kv, &b, logits);
}

/*
 * Mixed batches: sequence 0 of every pass is the probe (MX_PROMPT prompt
 * tokens in one chunk, then MX_DECODE lone tokens); the others prefill
 * prompts of 8..64 tokens, MX_CHUNK a pass, then decode.  Each sequence has
 * MX_PER blocks of its own in a pool of its own.
 */
enum { MX_MAX = 64, MX_PROMPT = 12, MX_DECODE = 16, MX_CHUNK = 16, MX_LEN = 64 + MX_DECODE };
#define MX_PER ((MX_LEN + BS - 1) / BS)

static uint64_t lcg(uint64_t *x)
{
    *x = *x * 6364136223846793005ull + 1442695040888963407ull;
    return *x >> 33;
}

/* the probe's logits at each of its MX_DECODE + 1 steps in batches of nb sequences */
static int mixed_run(struct side *s, struct model_kv *kv, int nb, int V, float *out)
{
    static int32_t toks[MX_MAX][MX_LEN], tabs[MX_MAX][MX_PER];
    static int32_t ids[MX_MAX * MX_CHUNK], pos[MX_MAX * MX_CHUNK], seq[MX_MAX * MX_CHUNK];
    static uint8_t want[MX_MAX * MX_CHUNK], order[MX_MAX * MX_CHUNK];
    int plen[MX_MAX], done[MX_MAX];
    const int32_t *tp[MX_MAX];
    int32_t nbk[MX_MAX];
    uint64_t x = 11;
    for (int i = 0; i < nb; i++) {
        plen[i] = i ? 8 + (int)(lcg(&x) % 57) : MX_PROMPT;
        /* the others start part-way, so prefill chunks and decodes mix from the first pass */
        done[i] = i ? (int)(lcg(&x) % 3) * MX_CHUNK : 0;
        if (done[i] >= plen[i])
            done[i] = plen[i] - 1;
        for (int p = 0; p < MX_LEN; p++)
            toks[i][p] = (int32_t)(lcg(&x) % (uint64_t)V);
        for (int j = 0; j < MX_PER; j++)
            tabs[i][j] = 1 + i * MX_PER + j;
        tp[i] = tabs[i];
        nbk[i] = MX_PER;
    }
    float *lg = malloc(sizeof(float) * (size_t)V * MX_MAX);
    if (!lg)
        return -1;
    int rc = 0;
    /* step -1: the others' tokens before the probe's first pass, one chunk, results unused */
    for (int step = -1; step <= MX_DECODE && !rc; step++) {
        int T = 0, n_out = 0;
        for (int i = 0; i < nb; i++) {
            int from, to;
            if (i == 0) {
                if (step < 0)
                    continue;
                from = step ? MX_PROMPT + step - 1 : 0;
                to = step ? from + 1 : MX_PROMPT;
            } else if (step < 0) {
                from = 0;
                to = done[i];
            } else {
                from = done[i];
                to = from < plen[i] ? from + MX_CHUNK : from + 1;
                if (from < plen[i] && to > plen[i])
                    to = plen[i];
                if (to > MX_LEN)
                    to = from; /* finished: sits this pass out */
            }
            for (int p = from; p < to; p++, T++) {
                ids[T] = toks[i][p];
                pos[T] = p;
                seq[T] = i;
                want[T] = p == to - 1;
                order[T] = i ? p < plen[i] : p < MX_PROMPT;
                n_out += want[T];
            }
            if (i)
                done[i] = to;
        }
        if (!T)
            continue;
        struct model_batch b = {T, ids, pos, seq, want, order, nb, tp, nbk, NULL, NULL};
        rc = model_forward(s->m, kv, &b, lg);
        if (!rc && step >= 0) /* the probe's row is its sequence's first: row 0 */
            memcpy(out + (size_t)step * V, lg, sizeof(float) * (size_t)V);
    }
    free(lg);
    return rc;
}

/* 1 when the probe's logits are the same bits in batches of 1..64 as alone */
static int mixed_invariance(struct side *s, int V)
{
    struct model_kv kv;
    if (model_kv_init(s->m, &kv, MX_MAX * MX_PER + 1, BS, QT_F16)) {
        fprintf(stderr, "check_model: no room for the mixed batches' cache\n");
        return 0;
    }
    size_t rows = (size_t)(MX_DECODE + 1) * V;
    float *ref = malloc(sizeof(float) * rows), *got = malloc(sizeof(float) * rows);
    int ok = ref && got && !mixed_run(s, &kv, 1, V, ref);
    static const int sizes[] = {2, 3, 4, 8, 16, 32, 64};
    for (size_t k = 0; ok && k < sizeof(sizes) / sizeof(*sizes); k++) {
        if (mixed_run(s, &kv, sizes[k], V, got)) {
            fprintf(stderr, "check_model: a mixed batch of %d failed\n", sizes[k]);
            ok = 0;
        } else if (memcmp(ref, got, sizeof(float) * rows)) {
            for (int st = 0; st <= MX_DECODE; st++)
                if (memcmp(ref + (size_t)st * V, got + (size_t)st * V, sizeof(float) * V)) {
                    printf("check_model: in a batch of %d the probe DIFFERS at its step %d\n",
                           sizes[k], st);
                    break;
                }
            ok = 0;
        }
    }
    free(ref);
    free(got);
    model_kv_free(s->m, &kv);
    return ok;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: check_model MODEL.gguf [ppu|scalar [STEPS]]\n");
        return 2;
    }
    const char *other = argc >= 3 ? argv[2] : "ppu";
    int steps = argc == 4 ? atoi(argv[3]) : MAXSTEPS;
    if (steps < 1 || steps > MAXSTEPS) {
        fprintf(stderr, "check_model: STEPS '%s' is not 1..%d\n", argv[3], MAXSTEPS);
        return 2;
    }
    struct gguf_file *g;
    char err[256];
    if (gguf_open(argv[1], &g, err, sizeof err)) {
        fprintf(stderr, "check_model: %s: %s\n", argv[1], err);
        return 2;
    }
    struct side cpu = {0}, oth = {0}, nog = {0};
    const char *oname = strcmp(other, "scalar") ? other : "cpu";
    int scalar = !strcmp(other, "scalar");
    int rc = side_open(&cpu, g, "cpu", 0);
    rc = rc ? rc : side_open(&oth, g, oname, scalar);
    if (!rc) { /* the same backend without graphs */
        setenv("CINFER_PPU_GRAPHS", "0", 1);
        rc = side_open(&nog, g, oname, scalar);
        unsetenv("CINFER_PPU_GRAPHS");
    }
    if (rc)
        return rc;
    for (int k = 0; k < 2 * NSEQ; k++)
        for (int j = 0; j < PER_SEQ; j++)
            g_tables[k][j] = 1 + k * PER_SEQ + j;
    int V = cpu.m->hp.n_vocab;
    float *lc = malloc(sizeof(float) * (size_t)V * NSEQ),
          *lo = malloc(sizeof(float) * (size_t)V * NSEQ), *la = malloc(sizeof(float) * (size_t)V),
          *ln = malloc(sizeof(float) * (size_t)V * NSEQ);
    int32_t *toks[NSEQ];
    int len[NSEQ], slot[NSEQ], from[NSEQ], to[NSEQ];
    uint64_t x = 7;
    for (int i = 0; i < NSEQ; i++) {
        toks[i] = malloc(sizeof(int32_t) * (MAXP + MAXSTEPS + 1));
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
    int agree = 0, total = 0, invariant = 1, graphs_same = 1;
    int alone_slot = NSEQ; /* sequence 0 again, alone, in slots of its own */
    for (int step = 0; step <= steps; step++) {
        if (pass(&cpu, NSEQ, slot, toks, len, from, to, lc) ||
            pass(&oth, NSEQ, slot, toks, len, from, to, lo) ||
            pass(&nog, NSEQ, slot, toks, len, from, to, ln)) {
            fprintf(stderr, "check_model: a forward pass failed at step %d\n", step);
            return 1;
        }
        /* sequence 0 alone on the other backend, the same tokens */
        if (pass(&oth, 1, &alone_slot, toks, len, from, to, la)) {
            fprintf(stderr, "check_model: the lone pass failed at step %d\n", step);
            return 1;
        }
        invariant &= memcmp(la, lo, sizeof(float) * (size_t)V) == 0;
        graphs_same &= memcmp(ln, lo, sizeof(float) * (size_t)V * NSEQ) == 0;
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
    printf("check_model: %s vs %s with CINFER_PPU_GRAPHS=0: %s\n", dev_kernels_name(&oth.dev),
           dev_kernels_name(&nog.dev), graphs_same ? "bitwise equal at every step" : "DIFFER");
    int mixed = mixed_invariance(&oth, V);
    printf("check_model: a sequence alone vs in batches of 2..64 with prefill chunks mixed in: "
           "%s\n",
           mixed ? "bitwise equal at every step" : "DIFFER");
    int pass_all = nm <= 1e-3 && ag >= 99.0 && invariant && same && graphs_same && mixed;
    printf("check_model: %s\n", pass_all ? "passed" : "FAILED");
    return pass_all ? 0 : 1;
}

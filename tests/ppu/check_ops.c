/*
 * tests/ppu/check_ops.c - every dev_op on the PPU against the CPU backend on
 * the same inputs, as llama.cpp's test-backend-ops does: the normalised mean
 * squared error of each output against a threshold, and batch invariance on
 * the PPU (a row computed alone and inside a batch of 64: the same bits).
 * Prints one line per check and a summary; exit 0 when all pass, 1 when one
 * fails, 77 (and one SKIP line) without a device.  Links only libc, libm,
 * the CUDA runtime and our device/util objects, so it runs on a GPU machine
 * that has none of the Debian libraries (device/ppu/check.sh).
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device/dev.h"
#include "tests/ppu/tweights.h"
#include "util/quant.h"

static int g_fail, g_checks;

static double nmse(const float *ref, const float *got, size_t n)
{
    double e = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        e += isfinite(d) ? d * d : INFINITY;
        s += (double)ref[i] * ref[i];
    }
    return s > 0 ? e / s : e;
}

static void report(const char *what, double err, double thr)
{
    int ok = err <= thr;
    g_checks++;
    g_fail += !ok;
    printf("%-4s %-44s nmse %.3e (threshold %.0e)\n", ok ? "ok" : "FAIL", what, err, thr);
}

static void report_bits(const char *what, int same)
{
    g_checks++;
    g_fail += !same;
    printf("%-4s %-44s %s\n", same ? "ok" : "FAIL", what, same ? "bitwise equal" : "DIFFER");
}

/* a device copy of n bytes of host memory */
static void *dup_dev(struct dev *d, const void *h, size_t n)
{
    void *p = dev_alloc(d, n);
    if (!p || dev_upload(d, p, h, n)) {
        fprintf(stderr, "check_ops: device allocation or upload of %zu bytes failed\n", n);
        exit(1);
    }
    return p;
}

static float *fetch(struct dev *d, const void *p, size_t n_floats)
{
    float *h = malloc(n_floats * sizeof(float));
    if (!h || dev_download(d, h, p, n_floats * sizeof(float))) {
        fprintf(stderr, "check_ops: download failed\n");
        exit(1);
    }
    return h;
}

static void check_matmul(struct dev *cpu, struct dev *ppu)
{
    static const uint32_t types[] = {QT_F32,  QT_F16,  QT_BF16, QT_Q8_0, QT_Q4_0, QT_Q4_1,
                                     QT_Q5_0, QT_Q5_1, QT_Q4_K, QT_Q5_K, QT_Q6_K};
    enum { ROWS = 320, COLS = 1024, TMAX = 64 };
    float *x = malloc(sizeof(float) * TMAX * COLS);
    for (int i = 0; i < TMAX * COLS; i++)
        x[i] = frand();
    float *xd = dup_dev(ppu, x, sizeof(float) * TMAX * COLS);
    float *yd = dev_alloc(ppu, sizeof(float) * TMAX * ROWS);
    float *yc = malloc(sizeof(float) * TMAX * ROWS);
    for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++) {
        size_t rb;
        uint8_t *w = make_weight(types[ti], ROWS, COLS, &rb);
        struct dev_weight wc = {types[ti], COLS, ROWS, rb, w, 0}, wp = wc;
        wp.data = dup_dev(ppu, w, rb * ROWS);
        float *first = NULL;
        static const int Ts[] = {1, 7, 64};
        for (int k = 0; k < 3; k++) {
            int T = Ts[k];
            char what[96];
            snprintf(what, sizeof what, "matmul %s T=%d", qt_info(types[ti])->name, T);
            if (dev_matmul(cpu, &wc, x, T, yc) || dev_matmul(ppu, &wp, xd, T, yd)) {
                report(what, INFINITY, 0);
                continue;
            }
            float *yp = fetch(ppu, yd, (size_t)T * ROWS);
            report(what, nmse(yc, yp, (size_t)T * ROWS), 5e-4);
            if (!first) {
                first = yp;
                continue;
            }
            snprintf(what, sizeof what, "matmul %s row 0 alone vs T=%d", qt_info(types[ti])->name,
                     T);
            report_bits(what, memcmp(first, yp, sizeof(float) * ROWS) == 0);
            free(yp);
        }
        free(first);
        dev_free(ppu, (void *)wp.data);
        free(w);
    }
    dev_free(ppu, xd);
    dev_free(ppu, yd);
    free(x);
    free(yc);
}

/* positions 0..n-1 of one sequence over a shuffled table; chunk 1 */
static int set_seq(struct dev *d, int n, const int32_t *table, int nb, const int32_t *tokens)
{
    int32_t *pos = malloc(sizeof(int32_t) * n), *seq = calloc(n, sizeof(int32_t));
    uint8_t *chunk = malloc(n);
    for (int i = 0; i < n; i++) {
        pos[i] = i;
        chunk[i] = 1;
    }
    int32_t last = n - 1;
    struct dev_batch b = {.n = n,
                          .tokens = tokens,
                          .pos = pos,
                          .seq = seq,
                          .chunk = chunk,
                          .n_seq = 1,
                          .tables = &table,
                          .n_blocks = &nb,
                          .n_out = 1,
                          .out_rows = &last};
    int rc = dev_set_batch(d, &b);
    free(pos);
    free(seq);
    free(chunk);
    return rc;
}

static void check_rows_ops(struct dev *cpu, struct dev *ppu)
{
    enum { T = 37, N = 576, NH = 9, HD = 64, NKV = 3, BS = 16, NB = 8, VOCAB = 200 };
    int32_t table[NB] = {5, 2, 7, 1, 6, 3, 4, 0};
    int32_t ids[T];
    for (int i = 0; i < T; i++)
        ids[i] = (int32_t)(rnd() % VOCAB);
    if (set_seq(cpu, T, table, NB, ids) || set_seq(ppu, T, table, NB, ids)) {
        report("set_batch", INFINITY, 0);
        return;
    }
    /* embed from a Q8_0 table */
    size_t rb;
    uint8_t *tab = make_weight(QT_Q8_0, VOCAB, N, &rb);
    struct dev_weight tc = {QT_Q8_0, N, VOCAB, rb, tab, 0}, tp = tc;
    tp.data = dup_dev(ppu, tab, rb * VOCAB);
    float *ec = malloc(sizeof(float) * T * N), *ed = dev_alloc(ppu, sizeof(float) * T * N);
    int rc = dev_embed(cpu, &tc, ec) | dev_embed(ppu, &tp, ed);
    float *ep = fetch(ppu, ed, (size_t)T * N);
    report("embed Q8_0", rc ? INFINITY : nmse(ec, ep, (size_t)T * N), 1e-12);
    /* rmsnorm with a weight */
    float w[N], x[T * N];
    for (int i = 0; i < N; i++)
        w[i] = 1.0f + 0.1f * frand();
    for (int i = 0; i < T * N; i++)
        x[i] = frand();
    float *wd = dup_dev(ppu, w, sizeof w), *xd = dup_dev(ppu, x, sizeof x);
    float *oc = malloc(sizeof x), *od = dev_alloc(ppu, sizeof x);
    rc = dev_rmsnorm(cpu, x, w, T, N, 1e-5f, oc) | dev_rmsnorm(ppu, xd, wd, T, N, 1e-5f, od);
    float *op = fetch(ppu, od, (size_t)T * N);
    report("rmsnorm", rc ? INFINITY : nmse(oc, op, (size_t)T * N), 1e-10);
    free(op);
    /* silu_mul, add, add_bias on the same shapes */
    rc = dev_silu_mul(cpu, x, x, T, N, oc) | dev_silu_mul(ppu, xd, xd, T, N, od);
    op = fetch(ppu, od, (size_t)T * N);
    report("silu_mul", rc ? INFINITY : nmse(oc, op, (size_t)T * N), 1e-10);
    free(op);
    /* rope, neox, on q of NH heads */
    struct dev_rope rp = {.n_rot = HD, .neox = 1, .freq_base = 10000.0f, .freq_scale = 1.0f};
    float *q = malloc(sizeof(float) * T * NH * HD);
    for (int i = 0; i < T * NH * HD; i++)
        q[i] = frand();
    float *qd = dup_dev(ppu, q, sizeof(float) * T * NH * HD);
    rc = dev_rope(cpu, q, NH, HD, &rp) | dev_rope(ppu, qd, NH, HD, &rp);
    float *qp = fetch(ppu, qd, (size_t)T * NH * HD);
    report("rope neox", rc ? INFINITY : nmse(q, qp, (size_t)T * NH * HD), 1e-9);
    free(qp);
    /* kv_store then attention, f16 cache, a shuffled table */
    size_t row = NKV * HD, cells = (size_t)NB * BS * row;
    float *k = malloc(sizeof(float) * T * row), *v = malloc(sizeof(float) * T * row);
    for (size_t i = 0; i < T * row; i++) {
        k[i] = frand();
        v[i] = frand();
    }
    struct dev_kv kc = {calloc(cells, 2), calloc(cells, 2), QT_F16, NB, BS, NKV, HD};
    struct dev_kv kp = kc;
    kp.k = dev_alloc(ppu, cells * 2);
    kp.v = dev_alloc(ppu, cells * 2);
    float *kd = dup_dev(ppu, k, sizeof(float) * T * row),
          *vd = dup_dev(ppu, v, sizeof(float) * T * row);
    float *ac = malloc(sizeof(float) * T * NH * HD),
          *ad = dev_alloc(ppu, sizeof(float) * T * NH * HD);
    rc = dev_kv_store(cpu, &kc, k, v) | dev_kv_store(ppu, &kp, kd, vd);
    rc |= dev_attention(cpu, &kc, q, NH, 0.125f, ac) | dev_attention(ppu, &kp, qd, NH, 0.125f, ad);
    float *ap = fetch(ppu, ad, (size_t)T * NH * HD);
    report("kv_store + attention (f16, paged, GQA 3)",
           rc ? INFINITY : nmse(ac, ap, (size_t)T * NH * HD), 1e-6);
    /* the last token alone: the same bits as inside the chunk (batch invariance) */
    int32_t pos1 = T - 1, seq1 = 0, nb = NB;
    uint8_t ch1 = 1;
    const int32_t *tabp = table;
    struct dev_batch one = {.n = 1,
                            .tokens = ids,
                            .pos = &pos1,
                            .seq = &seq1,
                            .chunk = &ch1,
                            .n_seq = 1,
                            .tables = &tabp,
                            .n_blocks = &nb};
    float *ad1 = dev_alloc(ppu, sizeof(float) * NH * HD);
    rc = dev_set_batch(ppu, &one) |
         dev_attention(ppu, &kp, qd + (size_t)(T - 1) * NH * HD, NH, 0.125f, ad1);
    float *ap1 = fetch(ppu, ad1, (size_t)NH * HD);
    report_bits("attention: last token alone vs in its chunk",
                !rc && memcmp(ap1, ap + (size_t)(T - 1) * NH * HD, sizeof(float) * NH * HD) == 0);
    free(ap), free(ap1), free(ac), free(k), free(v), free(q), free(ep), free(ec), free(oc),
        free(tab);
    free(kc.k), free(kc.v);
}

int main(void)
{
    char err[256];
    struct dev cpu, ppu;
    struct dev_config cfg = {0};
    if (dev_create("ppu", &cfg, &ppu, err, sizeof err)) {
        printf("SKIP: check_ops: %s\n", err);
        return 77;
    }
    if (dev_create("cpu", &cfg, &cpu, err, sizeof err)) {
        fprintf(stderr, "check_ops: %s\n", err);
        return 1;
    }
    printf("check_ops: ppu kernels %s vs cpu %s\n", dev_kernels_name(&ppu), dev_kernels_name(&cpu));
    check_matmul(&cpu, &ppu);
    check_rows_ops(&cpu, &ppu);
    printf("check_ops: %d checks, %d failed\n", g_checks, g_fail);
    dev_destroy(&ppu);
    dev_destroy(&cpu);
    return g_fail ? 1 : 0;
}

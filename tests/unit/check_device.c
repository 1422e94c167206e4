/*
 * tests/unit/check_device.c - the CPU device layer as the engine uses it:
 * every op on random data, the scalar reference kernels against the AVX2
 * ones, and both against double-precision references computed here.
 *
 * Weights of every supported type are built as random but valid blocks and
 * checked against qt_dequant (util/quant), which is tested on its own in
 * check_quant.c.  What a user would notice and is asserted here:
 *   - the scalar and AVX2 kernels give the same bits wherever kernels.h
 *     promises it (32-block quantized matmuls, attention over an f16 cache,
 *     the elementwise ops) and agree closely elsewhere;
 *   - results are right: each op is within a stated bound of the exact math;
 *   - results do not depend on the batch a row comes in or on the thread count
 *     (so a request's output does not depend on what else the server runs);
 *   - paged attention reads exactly the blocks its block table names.
 * CPU device memory is host memory, so the ops get host buffers directly.
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device/dev.h"
#include "tests/unit/suites.h"
#include "tests/unit/tbatch.h"
#include "util/quant.h"

#define ROWS 67  /* odd: the row chunks of the worker pool do not divide it */
#define COLS 512 /* a multiple of 256 for the K-quants */
#define TMAX 9   /* activation rows; the T = 1 and T = 3 runs use the first rows */

static const uint32_t all_types[] = {QT_F32,  QT_F16,  QT_BF16, QT_Q8_0, QT_Q4_0, QT_Q4_1,
                                     QT_Q5_0, QT_Q5_1, QT_Q4_K, QT_Q5_K, QT_Q6_K};
#define N_TYPES (sizeof all_types / sizeof all_types[0])

static const char *type_name(uint32_t t)
{
    return qt_info(t)->name;
}

/* the 32-block types, whose matmuls quantize the activations to 8 bits */
static int is_q8_type(uint32_t t)
{
    return t == QT_Q4_0 || t == QT_Q4_1 || t == QT_Q5_0 || t == QT_Q5_1 || t == QT_Q8_0;
}

/* the K-quants, whose matmuls quantize the activations to 8 bits per 256 (Q8_K) */
static int is_k_type(uint32_t t)
{
    return t == QT_Q4_K || t == QT_Q5_K || t == QT_Q6_K;
}

/* ---- random data (splitmix64, fixed seeds) ------------------------------------ */

struct rng {
    uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in [lo, hi) */
static float rng_uniform(struct rng *r, float lo, float hi)
{
    return lo + (hi - lo) * (float)((double)(rng_next(r) >> 11) * 0x1p-53);
}

/* roughly N(0, 1): the sum of four uniforms, centred and scaled */
static float rng_normal(struct rng *r)
{
    float s = 0.0f;
    for (int i = 0; i < 4; i++)
        s += rng_uniform(r, -1.0f, 1.0f);
    return s * 0.8660254f; /* sqrt(3/4): four U(-1,1) have variance 4/3 */
}

/* an f16 of magnitude in [lo, hi), negative half the time when `sign` */
static uint16_t rng_f16(struct rng *r, float lo, float hi, int sign)
{
    float v = rng_uniform(r, lo, hi);
    if (sign && (rng_next(r) & 1))
        v = -v;
    return qt_f32_to_f16(v);
}

static void put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xff);
    p[1] = (uint8_t)(v >> 8);
}

static float get_f16(const uint8_t *p)
{
    return qt_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
}

static float f16_round(float x)
{
    return qt_f16_to_f32(qt_f32_to_f16(x));
}

/* ---- test weights ------------------------------------------------------------- */

struct tweight {
    struct dev_weight w;
    uint8_t *data; /* (rows, row_bytes) */
    float *deq;    /* (rows, cols): qt_dequant of every row, the reference values */
};

/*
 * Random valid weights of `type`.  Float types: 0.1 * N(0,1) values.  32-block
 * types: random nibbles/bytes and fifth bits with a random f16 scale d (and
 * min m) of a few hundredths.  K-quants: every byte random (any scales and
 * quants are a valid block), then small finite f16 d and dmin.
 */
static void tweight_init(struct tweight *tw, uint32_t type, int64_t rows, int64_t cols,
                         uint64_t seed)
{
    struct rng r = {seed};
    const struct qt_info *qi = qt_info(type);
    size_t rb = qt_row_size(type, (uint64_t)cols);
    ck_assert(qi && rb > 0);
    tw->data = malloc(rb * (size_t)rows);
    tw->deq = malloc(sizeof(float) * (size_t)(rows * cols));
    ck_assert(tw->data && tw->deq);
    size_t n_el = (size_t)(rows * cols), n_blk = n_el / qi->blck_size;
    for (size_t i = 0; i < n_blk; i++) {
        uint8_t *b = tw->data + i * qi->type_size;
        float f;
        switch (type) {
        case QT_F32:
            f = 0.1f * rng_normal(&r);
            memcpy(b, &f, 4);
            continue;
        case QT_F16:
            put_le16(b, qt_f32_to_f16(0.1f * rng_normal(&r)));
            continue;
        case QT_BF16:
            put_le16(b, qt_f32_to_bf16(0.1f * rng_normal(&r)));
            continue;
        default:
            break;
        }
        for (uint32_t j = 0; j < qi->type_size; j++)
            b[j] = (uint8_t)rng_next(&r);
        switch (type) {
        case QT_Q8_0: /* qs up to 127: a smaller d keeps |w| below 0.5 */
            put_le16(b, rng_f16(&r, 0.001f, 0.004f, 1));
            break;
        case QT_Q4_0:
        case QT_Q5_0:
            put_le16(b, rng_f16(&r, 0.01f, 0.1f, 1));
            break;
        case QT_Q4_1:
        case QT_Q5_1:
            put_le16(b, rng_f16(&r, 0.01f, 0.1f, 1));
            put_le16(b + 2, rng_f16(&r, 0.01f, 0.1f, 1)); /* m */
            break;
        case QT_Q4_K:
        case QT_Q5_K:
            put_le16(b, rng_f16(&r, 0.001f, 0.004f, 0));
            put_le16(b + 2, rng_f16(&r, 0.001f, 0.004f, 0)); /* dmin */
            break;
        case QT_Q6_K: /* d is the last field, after ql, qh and 16 signed scales */
            put_le16(b + 208, rng_f16(&r, 0.0002f, 0.0008f, 1));
            break;
        default:
            ck_abort_msg("no generator for %s", type_name(type));
        }
    }
    for (int64_t row = 0; row < rows; row++)
        ck_assert_int_eq(
            qt_dequant(type, tw->data + (size_t)row * rb, tw->deq + row * cols, (uint64_t)cols), 0);
    tw->w = (struct dev_weight){type, cols, rows, rb, tw->data, 0};
}

static void tweight_free(struct tweight *tw)
{
    free(tw->data);
    free(tw->deq);
}

/* the min m of 32-block b of row `row` for Q4_1/Q5_1 (w = d q + m), else 0 */
static float tweight_min(const struct tweight *tw, int64_t row, int64_t b)
{
    if (tw->w.type != QT_Q4_1 && tw->w.type != QT_Q5_1)
        return 0.0f;
    const uint8_t *blk =
        tw->data + (size_t)row * tw->w.row_bytes + (size_t)b * qt_info(tw->w.type)->type_size;
    return get_f16(blk + 2);
}

/* TMAX activation rows of N(0,1); row 1 has an all-zero block, row 2 an outlier */
static float *make_acts(int64_t cols, uint64_t seed)
{
    struct rng r = {seed};
    float *x = malloc(sizeof(float) * (size_t)(TMAX * cols));
    ck_assert_ptr_nonnull(x);
    for (int64_t i = 0; i < TMAX * cols; i++)
        x[i] = rng_normal(&r);
    memset(x + cols + 3 * 32, 0, 32 * sizeof(float)); /* amax 0: the scale-0 path */
    x[2 * cols + 100] = 40.0f;                        /* as LLM activations have */
    return x;
}

/* ---- backends ------------------------------------------------------------------- */

struct backends {
    struct dev scalar; /* force_scalar: the reference kernels */
    struct dev avx2;   /* only when has_avx2 */
    int has_avx2;
};

/* exact: dev_config.exact_llamacpp for both */
static void backends_create_mode(struct backends *b, int threads, int exact)
{
    memset(b, 0, sizeof(*b));
    struct dev_config sc = {.threads = threads, .force_scalar = 1, .exact_llamacpp = exact};
    ck_assert_int_eq(dev_create("cpu", &sc, &b->scalar, NULL, 0), 0);
    ck_assert_str_eq(dev_kernels_name(&b->scalar), "scalar");
    b->has_avx2 = dev_has_kernels("cpu", "avx2");
    if (b->has_avx2) {
        struct dev_config ac = {.threads = threads, .kernels = "avx2", .exact_llamacpp = exact};
        ck_assert_int_eq(dev_create("cpu", &ac, &b->avx2, NULL, 0), 0);
        /* otherwise the comparisons below would compare scalar with scalar */
        ck_assert_str_eq(dev_kernels_name(&b->avx2), "avx2");
    }
}

static void backends_create(struct backends *b, int threads)
{
    backends_create_mode(b, threads, 0);
}

static void backends_destroy(struct backends *b)
{
    dev_destroy(&b->scalar);
    if (b->has_avx2)
        dev_destroy(&b->avx2);
}

static void note_no_avx2(const char *test)
{
    fprintf(stderr,
            "check_device: %s: this CPU lacks AVX2+FMA+F16C (or the build has no AVX2 "
            "kernels); skipping the scalar-vs-AVX2 comparisons\n",
            test);
}

/* the backends to check for correctness: scalar, and AVX2 where present */
static int backends_list(struct backends *b, struct dev **out)
{
    out[0] = &b->scalar;
    out[1] = &b->avx2;
    return b->has_avx2 ? 2 : 1;
}

/*
 * The weights the matmul tests run: every type as the GGUF stores it, then
 * the types the CPU backend packs (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K), packed by the
 * backend under test, which takes its own kernels.
 */
static const uint32_t packed_types[] = {QT_Q4_1, QT_Q8_0, QT_Q4_0, QT_Q5_0, QT_Q4_K, QT_Q6_K};
#define N_VARIANTS (N_TYPES + sizeof packed_types / sizeof packed_types[0])

static uint32_t variant_type(size_t vi)
{
    return vi < N_TYPES ? all_types[vi] : packed_types[vi - N_TYPES];
}

static int variant_packed(size_t vi)
{
    return vi >= N_TYPES;
}

static const char *variant_name(size_t vi)
{
    static char names[N_VARIANTS][32];
    snprintf(names[vi], sizeof(names[vi]), "%s%s", type_name(variant_type(vi)),
             variant_packed(vi) ? " packed" : "");
    return names[vi];
}

/* tw's weight as device d runs it: packed by d when asked; free with weight_release */
static struct dev_weight weight_on(struct dev *d, const struct tweight *tw, int packed)
{
    struct dev_weight w = tw->w;
    if (packed) {
        ck_assert_int_eq(dev_pack_weight(d, &w), 0);
        ck_assert_msg(w.packed && w.data != tw->w.data, "%s was not packed", type_name(w.type));
    }
    return w;
}

static void weight_release(struct dev *d, struct dev_weight *w)
{
    if (w->packed)
        dev_free(d, (void *)w->data);
}

/* ---- references --------------------------------------------------------------- */

/* sum w_i x_i in double, and sum |w_i x_i| (the scale of its rounding error) */
static double ref_dot(const float *w, const float *x, int64_t n, double *mag)
{
    double s = 0.0, m = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double p = (double)w[i] * x[i];
        s += p;
        m += fabs(p);
    }
    *mag = m;
    return s;
}

/*
 * Float arithmetic tolerance of a dot product: the AVX2 kernel sums in f32
 * over 16 lanes of at most COLS/16 terms and a short tree, so its error is
 * below ~40 * 2^-24 = 2.4e-6 of sum |w_i x_i|; 1e-5 leaves margin.
 */
static double dot_tol(double mag)
{
    return 1e-5 * mag + 1e-6;
}

/*
 * How far a 32-block type's matmul may be from the exact dot because it
 * quantizes the activations: per 32-block, x_i becomes a_i * D with
 * a_i = round(x_i / dA), dA = amax / 127 and D = f16(dA), so
 * |a_i D - x_i| <= dA (0.5 + 127 * 2^-11) < 0.5625 dA (half a step, plus
 * f16's 2^-11 relative rounding of the scale on up to 127 steps).  Q4_1/Q5_1
 * weights are d q_i + m and the m part uses s = f16(dA * sum a_i) for
 * sum x_i, off by at most 16 dA + 2^-11 * 32 * 127 dA < 18 dA.  So
 *   |y - ref| <= sum_blocks dA (0.5625 sum_i |w_i - m| + 18 |m|) + dot_tol.
 * (Without the f16 rounding of D and s the bound would be 0.5 dA sum |w_i|.)
 */
static double q8_bound(const struct tweight *tw, int64_t row, const float *x, double mag)
{
    const float *w = tw->deq + row * tw->w.cols;
    double bound = 0.0;
    for (int64_t b = 0; b < tw->w.cols / 32; b++) {
        float amax = 0.0f;
        for (int i = 0; i < 32; i++)
            amax = fmaxf(amax, fabsf(x[32 * b + i]));
        double m = tweight_min(tw, row, b), sw = 0.0;
        for (int i = 0; i < 32; i++)
            sw += fabs(w[32 * b + i] - m);
        bound += amax / 127.0 * (0.5625 * sw + 18.0 * fabs(m));
    }
    return bound + dot_tol(mag);
}

/* dmin * m of 32-element sub-block `sub` of a Q4_K / Q5_K row (0 for Q6_K) */
static double kq_min(const struct tweight *tw, int64_t row, int64_t sub)
{
    if (tw->w.type == QT_Q6_K)
        return 0.0;
    const uint8_t *b =
        tw->data + row * tw->w.row_bytes + (size_t)(sub / 8) * qt_info(tw->w.type)->type_size;
    const uint8_t *sc = b + 4;
    int j = (int)(sub % 8);
    int m = j < 4 ? sc[j + 4] & 63 : (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
    return get_f16(b + 2) * m;
}

/*
 * The K-quants' bound: per 256-block the activations become a_i * dA with
 * dA = amax / 127 (kept in f32), |a_i dA - x_i| <= 0.5 dA (and a few ulps),
 * so |y - ref| <= sum_b 0.5 dA sum_i |w_i|, plus float rounding on the scale
 * of the two parts the kernel sums (d sc q and the min dmin m, which may
 * cancel): 1e-5 of sum_i (|w_i| + 2 |dmin m_i|) |x_i|.
 */
static double q8k_bound(const struct tweight *tw, int64_t row, const float *x)
{
    const float *w = tw->deq + row * tw->w.cols;
    double bound = 0.0, mag = 0.0;
    for (int64_t b = 0; b < tw->w.cols / 256; b++) {
        float amax = 0.0f;
        double sw = 0.0;
        for (int i = 0; i < 256; i++) {
            int64_t e = 256 * b + i;
            amax = fmaxf(amax, fabsf(x[e]));
            sw += fabs(w[e]);
            mag += (fabs(w[e]) + 2.0 * fabs(kq_min(tw, row, e / 32))) * fabs(x[e]);
        }
        bound += 0.5 * (1.0 + 1e-5) * amax / 127.0 * sw;
    }
    return bound + 1e-5 * mag + 1e-6;
}

/*
 * The dot as kernels.h specifies the activation quantization (llama.cpp's
 * AVX2 quantize_row_q8_0/q8_1): per 32-block, amax = max |x_i|,
 * d = amax / 127, a_i = x_i * (127 / amax) rounded half to even, D = f16(d),
 * s = f16(d * sum a_i); the value is sum_b (D sum_i (w_i - m) a_i + m s).
 * *mag gets the sum of the magnitudes of those terms.
 */
static double q8_model_dot(const struct tweight *tw, int64_t row, const float *x, double *mag)
{
    const float *w = tw->deq + row * tw->w.cols;
    double s = 0.0, mg = 0.0;
    for (int64_t b = 0; b < tw->w.cols / 32; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.0f;
        for (int i = 0; i < 32; i++)
            amax = fmaxf(amax, fabsf(xb[i]));
        float d = amax / 127.0f;
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        double D = f16_round(d), m = tweight_min(tw, row, b);
        int suma = 0;
        for (int i = 0; i < 32; i++) {
            float a = nearbyintf(xb[i] * id);
            suma += (int)a;
            double p = ((double)w[32 * b + i] - m) * a * D;
            s += p;
            mg += fabs(p);
        }
        double ms = m * f16_round(d * (float)suma);
        s += ms;
        mg += fabs(ms);
    }
    *mag = mg;
    return s;
}

/* ---- matmul ------------------------------------------------------------------- */

static const int batch_sizes[] = {1, 3, TMAX};

/*
 * The kernel paths besides scalar to compare with it: those this CPU runs
 * (dev_kernels_here) and the VNNI build on SIMDe's stand-ins
 * (tests/unit/emulated_kernels.c), space-separated.
 */
static const char *simd_paths(char *buf, size_t len)
{
    const char *here = dev_kernels_here();
    const char *p = strchr(here, ' '); /* past "scalar" */
    snprintf(buf, len, "%s%s", p ? p + 1 : "",
             dev_has_kernels("cpu", "vnni_emu") ? (p ? " vnni_emu" : "vnni_emu") : "");
    return buf;
}

/*
 * auto takes the last path dev_kernels_here lists; a path this CPU lacks is
 * refused naming what it needs, an unknown one listing the choices.
 */
START_TEST(kernel_paths_are_chosen_and_refused_by_name)
{
    const char *here = dev_kernels_here();
    const char *last = strrchr(here, ' ');
    last = last ? last + 1 : here;
    struct dev d;
    struct dev_config cfg = {.threads = 1};
    ck_assert_int_eq(dev_create("cpu", &cfg, &d, NULL, 0), 0);
    ck_assert_str_eq(dev_kernels_name(&d), last);
    dev_destroy(&d);
#ifdef CINFER_HAVE_AVX2 /* the x86 paths are the build's */
    static const char *const known[] = {"scalar", "avx2", "avx512", "avxvnni", "avx512vnni"};
#else
    static const char *const known[] = {"scalar"};
#endif
    char err[256], word[40];
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        snprintf(word, sizeof(word), " %s ", known[i]);
        char padded[160];
        snprintf(padded, sizeof(padded), " %s ", here);
        int has = strstr(padded, word) != NULL;
        int rc = dev_kernels_check(known[i], err, sizeof(err));
        if (has) {
            ck_assert_int_eq(rc, 0);
            continue;
        }
        ck_assert_int_eq(rc, -EINVAL);
        ck_assert_msg(strstr(err, known[i]) && strstr(err, "lacks"), "%s: %s", known[i], err);
        cfg.kernels = known[i];
        ck_assert_int_eq(dev_create("cpu", &cfg, &d, err, sizeof(err)), -EINVAL);
    }
    ck_assert_int_eq(dev_kernels_check("avx9", err, sizeof(err)), -EINVAL);
    ck_assert_msg(strstr(err, "'avx9'") && strstr(err, known[sizeof known / sizeof known[0] - 1]),
                  "%s", err);
}
END_TEST

/* Every SIMD path gives the scalar kernels' matmul bits, every type, packed or not. */
START_TEST(matmul_kernel_paths_agree)
{
    struct backends b;
    backends_create(&b, 2);
    char paths[256];
    simd_paths(paths, sizeof(paths));
    if (!*paths) {
        note_no_avx2("matmul_kernel_paths_agree");
        backends_destroy(&b);
        return;
    }
    float *x = make_acts(COLS, 11);
    float *ys = malloc(sizeof(float) * TMAX * ROWS), *ya = malloc(sizeof(float) * TMAX * ROWS);
    int compared = 0;
    char name[32];
    for (const char *p = paths; test_next_word(&p, name, sizeof(name));) {
        struct dev dk;
        struct dev_config cfg = {.threads = 2, .kernels = name};
        char err[256];
        ck_assert_msg(dev_create("cpu", &cfg, &dk, err, sizeof(err)) == 0, "%s", err);
        ck_assert_str_eq(dev_kernels_name(&dk), name);
        for (size_t vi = 0; vi < N_VARIANTS; vi++) {
            uint32_t type = variant_type(vi);
            struct tweight tw;
            tweight_init(&tw, type, ROWS, COLS, 100 + vi);
            struct dev_weight ws = weight_on(&b.scalar, &tw, variant_packed(vi));
            struct dev_weight wa = weight_on(&dk, &tw, variant_packed(vi));
            for (size_t bi = 0; bi < 3; bi++) {
                int T = batch_sizes[bi];
                ck_assert_int_eq(dev_matmul(&b.scalar, &ws, x, T, ys), 0);
                ck_assert_int_eq(dev_matmul(&dk, &wa, x, T, ya), 0);
                /* integer dots, and float dots, in the same lanes, summed in the same order */
                ck_assert_msg(memcmp(ys, ya, sizeof(float) * (size_t)(T * ROWS)) == 0,
                              "%s T=%d: scalar and %s results differ", variant_name(vi), T, name);
            }
            weight_release(&b.scalar, &ws);
            weight_release(&dk, &wa);
            tweight_free(&tw);
        }
        dev_destroy(&dk);
        compared++;
    }
    ck_assert_int_ge(compared, 1);
    free(x), free(ys), free(ya);
    backends_destroy(&b);
}
END_TEST

START_TEST(matmul_matches_dequantized_reference)
{
    struct backends b;
    backends_create(&b, 2);
    if (!b.has_avx2)
        note_no_avx2("matmul_matches_dequantized_reference");
    struct dev *devs[2];
    int nd = backends_list(&b, devs);
    float *x = make_acts(COLS, 12);
    float *y = malloc(sizeof(float) * TMAX * ROWS);
    for (size_t vi = 0; vi < N_VARIANTS; vi++) {
        uint32_t type = variant_type(vi);
        struct tweight tw;
        tweight_init(&tw, type, ROWS, COLS, 200 + vi);
        for (int di = 0; di < nd; di++) {
            const char *kn = dev_kernels_name(devs[di]);
            struct dev_weight w = weight_on(devs[di], &tw, variant_packed(vi));
            ck_assert_int_eq(dev_matmul(devs[di], &w, x, TMAX, y), 0);
            weight_release(devs[di], &w);
            for (int t = 0; t < TMAX; t++)
                for (int r = 0; r < ROWS; r++) {
                    const float *xr = x + t * COLS;
                    double mag, ref = ref_dot(tw.deq + r * COLS, xr, COLS, &mag);
                    double got = y[t * ROWS + r];
                    double tol = is_q8_type(type)  ? q8_bound(&tw, r, xr, mag)
                                 : is_k_type(type) ? q8k_bound(&tw, r, xr)
                                                   : dot_tol(mag);
                    ck_assert_msg(fabs(got - ref) <= tol, "%s %s [%d,%d]: %.9g, exact %.9g, tol %g",
                                  kn, variant_name(vi), t, r, got, ref, tol);
                    if (!is_q8_type(type))
                        continue;
                    /*
                     * Tighter: against the documented 8-bit activations, only
                     * f32 rounding is left - one rounding of d_w * D and <= 20
                     * accumulation steps, 20 * 2^-24 = 1.2e-6 of the magnitude.
                     */
                    double mmag, model = q8_model_dot(&tw, r, xr, &mmag);
                    ck_assert_msg(fabs(got - model) <= 3e-6 * mmag + 1e-6,
                                  "%s %s [%d,%d]: %.9g, with q8 activations %.9g", kn,
                                  variant_name(vi), t, r, got, model);
                }
        }
        tweight_free(&tw);
    }
    free(x), free(y);
    backends_destroy(&b);
}
END_TEST

START_TEST(matmul_rows_do_not_depend_on_batch)
{
    struct backends b;
    backends_create(&b, 2);
    if (!b.has_avx2)
        note_no_avx2("matmul_rows_do_not_depend_on_batch");
    struct dev *devs[2];
    int nd = backends_list(&b, devs);
    float *x = make_acts(COLS, 13);
    float *y9 = malloc(sizeof(float) * TMAX * ROWS), y1[ROWS];
    for (size_t vi = 0; vi < N_VARIANTS; vi++) {
        struct tweight tw;
        tweight_init(&tw, variant_type(vi), ROWS, COLS, 300 + vi);
        for (int di = 0; di < nd; di++) {
            struct dev_weight w = weight_on(devs[di], &tw, variant_packed(vi));
            ck_assert_int_eq(dev_matmul(devs[di], &w, x, TMAX, y9), 0);
            for (int t = 0; t < TMAX; t++) {
                ck_assert_int_eq(dev_matmul(devs[di], &w, x + t * COLS, 1, y1), 0);
                ck_assert_msg(memcmp(y1, y9 + t * ROWS, sizeof(y1)) == 0,
                              "%s %s: row %d of a batch of %d differs from the row alone",
                              dev_kernels_name(devs[di]), variant_name(vi), t, TMAX);
            }
            weight_release(devs[di], &w);
        }
        tweight_free(&tw);
    }
    free(x), free(y9);
    backends_destroy(&b);
}
END_TEST

/*
 * Several weights against one input in one call (the model's q, k, v and
 * gate, up): each output equals its own matmul, bit for bit, for a decode
 * row (T = 1) and a batch, weights of different row counts (row blocks and
 * chunks that straddle two weights, packed groups of 8 cut short), and a mix
 * of types or of packed and not (dev_matmul_n then falls back to one matmul
 * each).
 */
START_TEST(matmul_n_equals_separate_matmuls)
{
    struct backends b;
    backends_create(&b, 2);
    struct dev *devs[2];
    int nd = backends_list(&b, devs);
    float *x = make_acts(COLS, 14);
    static const int64_t rows[3] = {ROWS, 20, 33};
    for (size_t vi = 0; vi < N_VARIANTS; vi++) {
        struct tweight tw[3];
        /* the last weight: another type when mixed (every other variant) */
        int mixed = vi % 2;
        for (int i = 0; i < 3; i++)
            tweight_init(&tw[i],
                         i == 2 && mixed ? variant_type((vi + 1) % N_TYPES) : variant_type(vi),
                         rows[i], COLS, 400 + vi * 3 + (size_t)i);
        float *ys[3], *ref = malloc(sizeof(float) * TMAX * ROWS);
        for (int i = 0; i < 3; i++)
            ys[i] = malloc(sizeof(float) * TMAX * ROWS);
        for (int di = 0; di < nd; di++) {
            struct dev_weight w[3];
            for (int i = 0; i < 3; i++) /* a packed variant's odd one out stays as stored */
                w[i] = weight_on(devs[di], &tw[i], variant_packed(vi) && !(i == 2 && mixed));
            const struct dev_weight *ws[3] = {&w[0], &w[1], &w[2]};
            for (size_t bi = 0; bi < 3; bi++) {
                int T = batch_sizes[bi];
                ck_assert_int_eq(dev_matmul_n(devs[di], ws, 3, x, T, ys), 0);
                for (int i = 0; i < 3; i++) {
                    ck_assert_int_eq(dev_matmul(devs[di], ws[i], x, T, ref), 0);
                    ck_assert_msg(memcmp(ref, ys[i], sizeof(float) * (size_t)(T * rows[i])) == 0,
                                  "%s %s T=%d: weight %d of 3 differs from its own matmul",
                                  dev_kernels_name(devs[di]), variant_name(vi), T, i);
                }
            }
            for (int i = 0; i < 3; i++)
                weight_release(devs[di], &w[i]);
        }
        for (int i = 0; i < 3; i++) {
            free(ys[i]);
            tweight_free(&tw[i]);
        }
        free(ref);
    }
    free(x);
    backends_destroy(&b);
}
END_TEST

START_TEST(matmul_refuses_unsupported_weights)
{
    struct backends b;
    backends_create(&b, 2);
    struct tweight tw;
    tweight_init(&tw, QT_Q4_K, 4, 256, 400);
    float x[512] = {0}, y[8];
    struct {
        uint32_t type;
        int64_t cols;
    } bad[] = {
        {QT_Q2_K, 256}, /* known to GGUF, no kernel */
        {QT_Q8_1, 256}, /* an activation format, not a weight type */
        {QT_Q4_K, 128}, /* not a whole super-block */
        {QT_Q4_0, 48},  /* not a whole block */
        {99, 256},      /* unknown id */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct dev_weight w = {bad[i].type, bad[i].cols, 2, 64, tw.data, 0};
        for (int k = 0; k < 8; k++)
            y[k] = -7.0f;
        ck_assert_int_eq(dev_matmul(&b.scalar, &w, x, 1, y), -EINVAL);
        if (b.has_avx2)
            ck_assert_int_eq(dev_matmul(&b.avx2, &w, x, 1, y), -EINVAL);
        for (int k = 0; k < 8; k++) /* and nothing was written */
            ck_assert_float_eq(y[k], -7.0f);
    }
    tweight_free(&tw);
    backends_destroy(&b);
}
END_TEST

START_TEST(results_do_not_depend_on_thread_count)
{
    /* threads 1, 2, 3 for each kernel set; 67 rows split in chunks of 4 */
    struct dev d[2][3];
    int nk = dev_has_kernels("cpu", "avx2") ? 2 : 1;
    if (nk == 1)
        note_no_avx2("results_do_not_depend_on_thread_count");
    for (int k = 0; k < nk; k++)
        for (int n = 0; n < 3; n++) {
            struct dev_config cfg = {.threads = n + 1, .force_scalar = k == 0};
            ck_assert_int_eq(dev_create("cpu", &cfg, &d[k][n], NULL, 0), 0);
        }
    float *x = make_acts(COLS, 14);
    float *y1 = malloc(sizeof(float) * TMAX * ROWS), *yn = malloc(sizeof(float) * TMAX * ROWS);
    for (size_t vi = 0; vi < N_VARIANTS; vi++) {
        struct tweight tw;
        tweight_init(&tw, variant_type(vi), ROWS, COLS, 500 + vi);
        for (int k = 0; k < nk; k++) {
            struct dev_weight w1 = weight_on(&d[k][0], &tw, variant_packed(vi));
            ck_assert_int_eq(dev_matmul(&d[k][0], &w1, x, TMAX, y1), 0);
            weight_release(&d[k][0], &w1);
            for (int n = 1; n < 3; n++) {
                struct dev_weight wn = weight_on(&d[k][n], &tw, variant_packed(vi));
                ck_assert_int_eq(dev_matmul(&d[k][n], &wn, x, TMAX, yn), 0);
                weight_release(&d[k][n], &wn);
                ck_assert_msg(memcmp(y1, yn, sizeof(float) * TMAX * ROWS) == 0,
                              "%s %s: %d threads differ from 1", dev_kernels_name(&d[k][n]),
                              variant_name(vi), n + 1);
            }
        }
        tweight_free(&tw);
    }
    free(x), free(y1), free(yn);
    for (int k = 0; k < nk; k++)
        for (int n = 0; n < 3; n++)
            dev_destroy(&d[k][n]);
}
END_TEST

/* ---- embed, elementwise and per-row ops ----------------------------------------- */

START_TEST(bad_batches_are_refused)
{
    struct dev d;
    struct dev_config cfg = {.threads = 2};
    ck_assert_int_eq(dev_create("cpu", &cfg, &d, NULL, 0), 0);
    const int32_t table[2] = {3, 1}, neg_table[2] = {3, -1};
    const int32_t *tabs[1] = {table}, *neg_tabs[1] = {neg_table};
    int32_t nb = 2, pos[3] = {0, 1, 2}, seq[3] = {0, 0, 0}, rows[1] = {2};
    struct dev_batch ok = {.n = 3,
                           .pos = pos,
                           .seq = seq,
                           .n_seq = 1,
                           .tables = tabs,
                           .n_blocks = &nb,
                           .n_out = 1,
                           .out_rows = rows};
    ck_assert_int_eq(dev_set_batch(&d, &ok), 0);
    struct dev_batch b = ok;
    b.n_out = 4; /* more rows than tokens */
    ck_assert_int_eq(dev_set_batch(&d, &b), -EINVAL);
    b = ok;
    int32_t bad_rows[1] = {3};
    b.out_rows = bad_rows;
    ck_assert_int_eq(dev_set_batch(&d, &b), -EINVAL);
    b = ok;
    int32_t bad_seq[3] = {0, 1, 0};
    b.seq = bad_seq; /* a second sequence that has no table */
    ck_assert_int_eq(dev_set_batch(&d, &b), -EINVAL);
    b = ok;
    int32_t bad_pos[3] = {0, -1, 2};
    b.pos = bad_pos;
    ck_assert_int_eq(dev_set_batch(&d, &b), -EINVAL);
    b = ok;
    b.tables = neg_tabs;
    ck_assert_int_eq(dev_set_batch(&d, &b), -EINVAL);
    b = ok;
    b.pos = NULL;
    ck_assert_int_eq(dev_set_batch(&d, &b), -EINVAL);
    /* the kv ops: a position past its table, a block past the cache */
    enum { BS = 2, HD = 8 };
    size_t cells = (size_t)4 * BS * HD;
    struct dev_kv kv = {dev_alloc(&d, cells * 2), dev_alloc(&d, cells * 2), QT_F16, 4, BS, 1, HD};
    float k[3 * HD] = {0}, q[3 * HD] = {0}, out[3 * HD];
    ck_assert_int_eq(dev_set_batch(&d, &ok), 0);
    ck_assert_int_eq(dev_kv_store(&d, &kv, k, k), 0);
    ck_assert_int_eq(dev_attention(&d, &kv, q, 1, 0.125f, out), 0);
    int32_t far[3] = {0, 1, 4}; /* position 4 is in block 2: the table has 2 */
    b = ok;
    b.pos = far;
    ck_assert_int_eq(dev_set_batch(&d, &b), 0);
    ck_assert_int_eq(dev_kv_store(&d, &kv, k, k), -EINVAL);
    ck_assert_int_eq(dev_attention(&d, &kv, q, 1, 0.125f, out), -EINVAL);
    kv.n_blocks = 3; /* block 3 of the table is past a 3-block cache */
    ck_assert_int_eq(dev_set_batch(&d, &ok), 0);
    ck_assert_int_eq(dev_kv_store(&d, &kv, k, k), -EINVAL);
    dev_free(&d, kv.k);
    dev_free(&d, kv.v);
    dev_destroy(&d);
}
END_TEST

START_TEST(embed_returns_dequantized_rows)
{
    struct backends b;
    backends_create(&b, 2);
    struct dev *devs[2];
    int nd = backends_list(&b, devs);
    const int32_t ids[] = {0, ROWS - 1, 13, 13, 40};
    enum { NI = sizeof ids / sizeof ids[0] };
    float *out = malloc(sizeof(float) * NI * COLS);
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        uint32_t type = all_types[ti];
        struct tweight tw;
        tweight_init(&tw, type, ROWS, COLS, 600 + ti);
        for (int di = 0; di < nd; di++) {
            ck_assert_int_eq(tbatch_plain(devs[di], ids, NULL, NI), -EINVAL); /* no positions */
            const int32_t pos[NI] = {0};
            ck_assert_int_eq(tbatch_plain(devs[di], ids, pos, NI), 0);
            ck_assert_int_eq(dev_embed(devs[di], &tw.w, out), 0);
            for (int t = 0; t < NI; t++)
                ck_assert_msg(
                    memcmp(out + t * COLS, tw.deq + ids[t] * COLS, sizeof(float) * COLS) == 0,
                    "%s %s: embedding of id %d is not its dequantized row",
                    dev_kernels_name(devs[di]), type_name(type), ids[t]);
            const int32_t past_end[] = {5, ROWS}, negative[] = {-1};
            ck_assert_int_eq(tbatch_plain(devs[di], past_end, pos, 2), 0);
            ck_assert_int_eq(dev_embed(devs[di], &tw.w, out), -EINVAL);
            ck_assert_int_eq(tbatch_plain(devs[di], negative, pos, 1), 0);
            ck_assert_int_eq(dev_embed(devs[di], &tw.w, out), -EINVAL);
            ck_assert_int_eq(tbatch_plain(devs[di], NULL, pos, 1), 0); /* no token ids */
            ck_assert_int_eq(dev_embed(devs[di], &tw.w, out), -EINVAL);
        }
        tweight_free(&tw);
    }
    free(out);
    backends_destroy(&b);
}
END_TEST

START_TEST(rmsnorm_matches_reference)
{
    enum { T = 4, N = 576 };
    struct backends b;
    backends_create(&b, 2);
    struct rng r = {700};
    float *x = malloc(sizeof(float) * T * N), w[N];
    float *os = malloc(sizeof(float) * T * N), *oa = malloc(sizeof(float) * T * N);
    /* rows at different scales: at 1e-3 the eps (1e-5 vs mean x^2 ~ 1e-6) dominates */
    const float row_scale[T] = {1.0f, 1000.0f, 1e-3f, 0.5f};
    for (int t = 0; t < T; t++)
        for (int i = 0; i < N; i++)
            x[t * N + i] = row_scale[t] * rng_normal(&r);
    for (int i = 0; i < N; i++)
        w[i] = 1.0f + 0.5f * rng_normal(&r);
    const float eps = 1e-5f;
    for (int with_w = 0; with_w < 2; with_w++) {
        const float *wp = with_w ? w : NULL;
        ck_assert_int_eq(dev_rmsnorm(&b.scalar, x, wp, T, N, eps, os), 0);
        if (b.has_avx2) {
            ck_assert_int_eq(dev_rmsnorm(&b.avx2, x, wp, T, N, eps, oa), 0);
            ck_assert_mem_eq(os, oa, sizeof(float) * T * N);
        }
        /*
         * x_i / sqrt(mean(x^2) + eps) * w_i: about seven f32 roundings on
         * each element's path, < 7 * 2^-24 = 4.2e-7 relative; allow 1e-6.
         */
        for (int t = 0; t < T; t++) {
            double ss = 0.0;
            for (int i = 0; i < N; i++)
                ss += (double)x[t * N + i] * x[t * N + i];
            double scale = 1.0 / sqrt(ss / N + (double)eps);
            for (int i = 0; i < N; i++) {
                double ref = x[t * N + i] * scale * (wp ? wp[i] : 1.0);
                ck_assert_msg(fabs(os[t * N + i] - ref) <= 1e-6 * fabs(ref) + 1e-30,
                              "w=%d row %d [%d]: %.9g vs %.9g", with_w, t, i, os[t * N + i], ref);
            }
        }
    }
    free(x), free(os), free(oa);
    backends_destroy(&b);
}
END_TEST

/* rope of T rows at positions pos: sets the batch, then rotates */
static int rope_at(struct dev *d, float *x, const int32_t *pos, int T, int nh, int hd,
                   const struct dev_rope *r)
{
    int rc = tbatch_plain(d, NULL, pos, T);
    return rc ? rc : dev_rope(d, x, nh, hd, r);
}

START_TEST(rope_matches_reference)
{
    enum { T = 6, NH = 3, HD = 64 };
    const int32_t pos[T] = {0, 1, 7, 99, 1000, 4095};
    struct backends b;
    backends_create(&b, 2);
    struct rng r = {800};
    float x[T * NH * HD], xs[T * NH * HD], xa[T * NH * HD];
    for (int i = 0; i < T * NH * HD; i++)
        x[i] = rng_normal(&r);
    float ff[HD / 2]; /* Llama 3 style: 1 for high frequencies, up to 8 for low */
    for (int i = 0; i < HD / 2; i++)
        ff[i] = i < 8 ? 1.0f : i >= 24 ? 8.0f : 1.0f + 7.0f * (float)(i - 8) / 16.0f;
    const float base = 10000.0f;
    for (int cfg = 0; cfg < 16; cfg++) {
        struct dev_rope rp = {
            .n_rot = cfg & 1 ? HD / 2 : HD, /* partial rotary leaves the other dims alone */
            .neox = (cfg >> 1) & 1,
            .freq_base = base,
            .freq_scale = cfg & 4 ? 0.25f : 1.0f,
            .freq_factors = cfg & 8 ? ff : NULL,
        };
        memcpy(xs, x, sizeof(x));
        memcpy(xa, x, sizeof(x));
        ck_assert_int_eq(rope_at(&b.scalar, xs, pos, T, NH, HD, &rp), 0);
        if (b.has_avx2) {
            ck_assert_int_eq(rope_at(&b.avx2, xa, pos, T, NH, HD, &rp), 0);
            ck_assert_mem_eq(xs, xa, sizeof(x));
        }
        int half = rp.n_rot / 2;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++) {
                const float *in = x + (t * NH + h) * HD;
                const float *out = xs + (t * NH + h) * HD;
                for (int i = 0; i < half; i++) {
                    int a = rp.neox ? i : 2 * i, c = rp.neox ? i + half : 2 * i + 1;
                    double th = pos[t] * (double)rp.freq_scale * pow(base, -2.0 * i / rp.n_rot) /
                                (rp.freq_factors ? ff[i] : 1.0);
                    double ra = in[a] * cos(th) - in[c] * sin(th);
                    double rc = in[a] * sin(th) + in[c] * cos(th);
                    /*
                     * The angle is built in f32 as pos * theta_scale^i, each
                     * factor off by <= 1 ulp of powf plus a rounding: relative
                     * error <= (i + 3) * 2.5e-7 of th; then sincosf and the
                     * rotation add a few 1e-7 of |x_a| + |x_c|.
                     */
                    double tol = (fabs(in[a]) + fabs(in[c])) * (th * (i + 3) * 2.5e-7 + 5e-7);
                    ck_assert_msg(fabs(out[a] - ra) <= tol && fabs(out[c] - rc) <= tol,
                                  "cfg %d pos %d head %d pair %d: (%.9g, %.9g) vs (%.9g, %.9g)",
                                  cfg, pos[t], h, i, out[a], out[c], ra, rc);
                }
                for (int i = rp.n_rot; i < HD; i++)
                    ck_assert_msg(memcmp(&out[i], &in[i], sizeof(float)) == 0,
                                  "cfg %d: dim %d past n_rot changed", cfg, i);
            }
    }
    /* odd n_rot, or more than head_dim: refused, x untouched */
    struct dev_rope odd = {.n_rot = HD - 1, .freq_base = base, .freq_scale = 1.0f};
    struct dev_rope wide = {.n_rot = HD + 2, .freq_base = base, .freq_scale = 1.0f};
    memcpy(xs, x, sizeof(x));
    ck_assert_int_eq(rope_at(&b.scalar, xs, pos, T, NH, HD, &odd), -EINVAL);
    ck_assert_int_eq(rope_at(&b.scalar, xs, pos, T, NH, HD, &wide), -EINVAL);
    ck_assert_mem_eq(xs, x, sizeof(x));
    backends_destroy(&b);
}
END_TEST

START_TEST(silu_mul_matches_reference)
{
    struct backends b;
    backends_create(&b, 2);
    struct rng r = {900};
    /* n = 1536: whole groups of 8; n = 37: 4 groups and a libm tail of 5 */
    const int shapes[2][2] = {{2, 1536}, {3, 37}};
    /* the tails of e^x: 88 and 100 leave f32's normal range (the scaled paths) */
    const float special[] = {0.0f,  -0.0f,  88.0f, -88.0f, 100.0f, -100.0f, 20.0f, -20.0f,
                             1e-3f, -1e-3f, 5.0f,  -5.0f,  15.0f,  -15.0f,  87.0f, -87.0f};
    for (int s = 0; s < 2; s++) {
        int T = shapes[s][0], n = shapes[s][1];
        size_t sz = sizeof(float) * (size_t)(T * n);
        float *g = malloc(sz), *u = malloc(sz), *os = malloc(sz), *oa = malloc(sz);
        for (int i = 0; i < T * n; i++) {
            g[i] = 3.0f * rng_normal(&r);
            u[i] = rng_normal(&r);
        }
        for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) {
            g[i] = special[i];             /* in the vector groups */
            g[T * n - 1 - i] = special[i]; /* the last row's tail for n = 37 */
        }
        ck_assert_int_eq(dev_silu_mul(&b.scalar, g, u, T, n, os), 0);
        if (b.has_avx2) {
            ck_assert_int_eq(dev_silu_mul(&b.avx2, g, u, T, n, oa), 0);
            ck_assert_mem_eq(os, oa, sz);
        }
        /*
         * g / (1 + e^-g) * u: the e^x polynomial is good to a few ulp, and
         * sigmoid passes e^x's relative error on at most 1:1; with the
         * division and the product, < 2e-6 relative.  The absolute 1e-37
         * covers g = -100, whose exact result is below f32's normal range.
         */
        for (int i = 0; i < T * n; i++) {
            double ref = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
            ck_assert_msg(fabs(os[i] - ref) <= 2e-6 * fabs(ref) + 1e-37,
                          "n=%d [%d]: silu(%.9g) * %.9g = %.9g, expected %.9g", n, i, g[i], u[i],
                          os[i], ref);
        }
        free(g), free(u), free(os), free(oa);
    }
    backends_destroy(&b);
}
END_TEST

START_TEST(add_and_add_bias_are_elementwise)
{
    enum { T = 3, N = 37, M = 1001 };
    struct backends b;
    backends_create(&b, 2);
    struct rng r = {1000};
    float x[T * N], bias[N], xs[T * N], xa[T * N];
    float y[M], z[M], zs[M], za[M];
    for (int i = 0; i < T * N; i++)
        x[i] = rng_normal(&r);
    for (int i = 0; i < N; i++)
        bias[i] = rng_normal(&r);
    for (int i = 0; i < M; i++) {
        y[i] = rng_normal(&r);
        z[i] = rng_normal(&r);
    }
    memcpy(xs, x, sizeof(x));
    memcpy(zs, z, sizeof(z));
    ck_assert_int_eq(dev_add_bias(&b.scalar, xs, bias, T, N), 0);
    ck_assert_int_eq(dev_add(&b.scalar, zs, y, M), 0);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < N; i++)
            ck_assert_float_eq(xs[t * N + i], x[t * N + i] + bias[i]);
    for (int i = 0; i < M; i++)
        ck_assert_float_eq(zs[i], z[i] + y[i]);
    if (b.has_avx2) {
        memcpy(xa, x, sizeof(x));
        memcpy(za, z, sizeof(z));
        ck_assert_int_eq(dev_add_bias(&b.avx2, xa, bias, T, N), 0);
        ck_assert_int_eq(dev_add(&b.avx2, za, y, M), 0);
        ck_assert_mem_eq(xs, xa, sizeof(x));
        ck_assert_mem_eq(zs, za, sizeof(z));
    }
    backends_destroy(&b);
}
END_TEST

START_TEST(device_memory_round_trips)
{
    struct backends b;
    backends_create(&b, 1);
    uint8_t src[1000], back[1000];
    for (int i = 0; i < 1000; i++)
        src[i] = (uint8_t)(i * 7 + 3);
    void *p = dev_alloc(&b.scalar, sizeof(src));
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(dev_upload(&b.scalar, p, src, sizeof(src)), 0);
    memset(back, 0, sizeof(back));
    ck_assert_int_eq(dev_download(&b.scalar, back, p, sizeof(back)), 0);
    ck_assert_mem_eq(back, src, sizeof(src));
    dev_free(&b.scalar, p);
    void *z = dev_alloc(&b.scalar, 0); /* a valid, freeable pointer */
    ck_assert_ptr_nonnull(z);
    dev_free(&b.scalar, z);
    dev_free(&b.scalar, NULL);
    backends_destroy(&b);
}
END_TEST

/* ---- paged attention ------------------------------------------------------------ */

enum {
    KV_BS = 16,    /* positions per block */
    KV_HEADS = 2,  /* n_kv_heads */
    HEAD_DIM = 64, /* head_dim */
    Q_HEADS = 6,   /* n_heads: GQA groups of 3 */
    SEQ = 100,     /* stored positions */
    N_BLOCKS = 13, /* blocks in the cache */
    KV_ROW = KV_HEADS * HEAD_DIM,
    Q_ROW = Q_HEADS * HEAD_DIM,
};
/* the sequence's block table: shuffled, never block 0; 7 * 16 = 112 >= 100 */
static const int32_t seq_blocks[] = {7, 3, 12, 5, 9, 1, 10};

/*
 * Query batch c (each token attends to 0..pos): 0, a lone decode token at 99;
 * 1, a chunk of 5 at 95..99; 2, a prefill chunk of all 100 positions; 3, 100
 * lone tokens, one at each position, as 100 sequences sharing the blocks
 * would decode.  2 and 3 give the f16 rounding of the probabilities many
 * chances to show a difference in the bits of the scores.  Returns T.
 */
enum { N_QUERY_SETS = 4 };
static const char *const query_set_name[N_QUERY_SETS] = {"lone 99", "chunk 95..99", "prefill 0..99",
                                                         "decode 0..99"};

static int query_set(int c, struct tpos *tp)
{
    static const int first[] = {99, 95, 0, 0}, count[] = {1, 5, SEQ, SEQ};
    for (int t = 0; t < count[c]; t++)
        tp[t] = (struct tpos){seq_blocks, first[c] + t, c == 1 || c == 2};
    return count[c];
}

static int block_in_table(int blk)
{
    for (size_t i = 0; i < sizeof seq_blocks / sizeof seq_blocks[0]; i++)
        if (seq_blocks[i] == blk)
            return 1;
    return 0;
}

/* a cache of `type` on device d, every byte 0xff (NaN in f16 and f32) */
static struct dev_kv kv_cache_create(struct dev *d, uint32_t type)
{
    size_t bytes = (size_t)N_BLOCKS * KV_BS * KV_ROW * (type == QT_F16 ? 2 : 4);
    struct dev_kv kv = {.type = type,
                        .n_blocks = N_BLOCKS,
                        .block_size = KV_BS,
                        .n_kv_heads = KV_HEADS,
                        .head_dim = HEAD_DIM};
    uint8_t *fill = malloc(bytes);
    ck_assert_ptr_nonnull(fill);
    memset(fill, 0xff, bytes);
    kv.k = dev_alloc(d, bytes);
    kv.v = dev_alloc(d, bytes);
    ck_assert(kv.k && kv.v);
    ck_assert_int_eq(dev_upload(d, kv.k, fill, bytes), 0);
    ck_assert_int_eq(dev_upload(d, kv.v, fill, bytes), 0);
    free(fill);
    return kv;
}

static void kv_cache_destroy(struct dev *d, struct dev_kv *kv)
{
    dev_free(d, kv->k);
    dev_free(d, kv->v);
}

/* stores positions 0..SEQ-1 as a prefill of 64, one of 31, then decode steps */
static void kv_fill(struct dev *d, const struct dev_kv *kv, const float *k, const float *v)
{
    struct tpos tp[SEQ];
    for (int p = 0; p < SEQ; p++)
        tp[p] = (struct tpos){seq_blocks, p, 1};
    const int steps[] = {0, 64, 95, 96, 97, 98, 99, SEQ};
    for (size_t s = 0; s + 1 < sizeof steps / sizeof steps[0]; s++) {
        int p0 = steps[s], n = steps[s + 1] - p0;
        ck_assert_int_eq(tb_kv_store(d, kv, tp + p0, n, k + p0 * KV_ROW, v + p0 * KV_ROW), 0);
    }
}

/*
 * softmax(q . k_p * scale) v over positions 0..pos of one (token, head) in
 * double, from K/V/q rounded to f16 first when `round16`.  Returns the bound
 * on the engine's error for this output:
 *   maxv * (expm1(2 delta) + rho) + 1e-6,
 * where delta bounds each score's error (a softmax whose scores move by <=
 * delta moves each probability by a factor within e^(+-2 delta), so the
 * output by <= expm1(2 delta) * max|v|) and rho the error of the V pass:
 *   - f32 dots over 64 terms: <= 128 * 2^-24 of scale * sum |q_i k_i|;
 *   - when the cache is f16 and the reference is not rounded: q and k each
 *     off by 2^-11 relative (plus 2^-25 absolute, subnormal halves), so
 *     another 2^-10 + 2^-22 of sum |q_i k_i| and 2^-24 (|q_i| + |k_i|);
 *     and V rounded: another 2^-11 in rho;
 *   - f16 cache: the probabilities meet V rounded to f16: 2^-11 in rho;
 *   - e^x, the normalisation and <= 100 f32 multiply-adds: 1e-5 in rho.
 */
static double attn_ref(const float *q, const float *k, const float *v, int pos, int h, int f16,
                       int round16, double *out)
{
    int kh = h / (Q_HEADS / KV_HEADS);
    double sc[SEQ], mx = -INFINITY, sum = 0.0, maxv = 0.0, delta = 0.0;
    float qr[HEAD_DIM];
    for (int i = 0; i < HEAD_DIM; i++)
        qr[i] = round16 ? f16_round(q[i]) : q[i];
    for (int p = 0; p <= pos; p++) {
        const float *kp = k + p * KV_ROW + kh * HEAD_DIM;
        double dot = 0.0, mag = 0.0, absq = 0.0;
        for (int i = 0; i < HEAD_DIM; i++) {
            double kv = round16 ? f16_round(kp[i]) : kp[i];
            dot += qr[i] * kv;
            mag += fabs(qr[i] * kv);
            absq += fabs(qr[i]) + fabs(kv);
        }
        double dp = mag * 128 * 0x1p-24;
        if (f16 && !round16)
            dp += mag * (0x1p-10 + 0x1p-22) + absq * 0x1p-24;
        delta = fmax(delta, dp * 0.125);
        sc[p] = dot * 0.125;
        mx = fmax(mx, sc[p]);
    }
    for (int p = 0; p <= pos; p++)
        sum += sc[p] = exp(sc[p] - mx);
    for (int i = 0; i < HEAD_DIM; i++) {
        double o = 0.0;
        for (int p = 0; p <= pos; p++) {
            double vp = v[p * KV_ROW + kh * HEAD_DIM + i];
            if (round16)
                vp = f16_round((float)vp);
            o += sc[p] / sum * vp;
            maxv = fmax(maxv, fabs(vp));
        }
        out[i] = o;
    }
    double rho = 1e-5 + (f16 ? 0x1p-11 : 0.0) + (f16 && !round16 ? 0x1p-11 : 0.0);
    return maxv * (expm1(2 * delta) + rho) + 1e-6;
}

START_TEST(attention_over_scattered_blocks_matches_reference)
{
    /* _i: exact_llamacpp, where a lone token takes the 32-lane order */
    struct backends b;
    backends_create_mode(&b, 2, _i);
    if (!b.has_avx2)
        note_no_avx2("attention_over_scattered_blocks_matches_reference");
    struct dev *devs[2];
    int nd = backends_list(&b, devs);
    struct rng r = {1100};
    float *k = malloc(sizeof(float) * SEQ * KV_ROW), *v = malloc(sizeof(float) * SEQ * KV_ROW);
    float *q = malloc(sizeof(float) * SEQ * Q_ROW), *out[2];
    out[0] = malloc(sizeof(float) * SEQ * Q_ROW);
    out[1] = malloc(sizeof(float) * SEQ * Q_ROW);
    float maxv = 0.0f;
    for (int i = 0; i < SEQ * KV_ROW; i++) {
        k[i] = rng_normal(&r);
        v[i] = rng_normal(&r);
        maxv = fmaxf(maxv, fabsf(v[i]));
    }
    for (int i = 0; i < SEQ * Q_ROW; i++)
        q[i] = rng_normal(&r);
    struct tpos tp[SEQ];
    const uint32_t types[] = {QT_F16, QT_F32};
    for (int ti = 0; ti < 2; ti++) {
        int f16 = types[ti] == QT_F16;
        size_t es = f16 ? 2 : 4, blk_bytes = (size_t)KV_BS * KV_ROW * es;
        size_t bytes = N_BLOCKS * blk_bytes;
        uint8_t *cache[2][2] = {{NULL, NULL}, {NULL, NULL}}; /* [backend][k, v] */
        struct dev_kv kv[2];
        for (int di = 0; di < nd; di++) {
            kv[di] = kv_cache_create(devs[di], types[ti]);
            kv_fill(devs[di], &kv[di], k, v);
            for (int j = 0; j < 2; j++) {
                cache[di][j] = malloc(bytes);
                ck_assert_int_eq(
                    dev_download(devs[di], cache[di][j], j ? kv[di].v : kv[di].k, bytes), 0);
            }
            /* every position sits where the block table says, in the cache's type */
            for (int p = 0; p < SEQ; p++)
                for (int i = 0; i < KV_ROW; i++) {
                    size_t slot = (size_t)seq_blocks[p / KV_BS] * KV_BS + p % KV_BS;
                    for (int j = 0; j < 2; j++) {
                        float src = (j ? v : k)[p * KV_ROW + i], got;
                        if (f16) {
                            uint16_t hv;
                            memcpy(&hv, cache[di][j] + (slot * KV_ROW + i) * 2, 2);
                            got = qt_f16_to_f32(hv);
                            src = f16_round(src);
                        } else {
                            memcpy(&got, cache[di][j] + (slot * KV_ROW + i) * 4, 4);
                        }
                        ck_assert_msg(memcmp(&got, &src, 4) == 0, "%s pos %d elem %d: %g vs %g",
                                      j ? "V" : "K", p, i, got, src);
                    }
                }
            /* and blocks outside the table are untouched */
            for (int blk = 0; blk < N_BLOCKS; blk++) {
                if (block_in_table(blk))
                    continue;
                for (size_t i = 0; i < blk_bytes; i++)
                    ck_assert_msg(cache[di][0][blk * blk_bytes + i] == 0xff &&
                                      cache[di][1][blk * blk_bytes + i] == 0xff,
                                  "block %d (not the sequence's) was written", blk);
            }
        }
        if (nd == 2) {
            ck_assert_mem_eq(cache[0][0], cache[1][0], bytes);
            ck_assert_mem_eq(cache[0][1], cache[1][1], bytes);
        }
        for (int c = 0; c < N_QUERY_SETS; c++) {
            int T = query_set(c, tp);
            for (int di = 0; di < nd; di++) {
                memset(out[di], 0, sizeof(float) * T * Q_ROW);
                ck_assert_int_eq(
                    tb_attention(devs[di], &kv[di], tp, T, q, Q_HEADS, 0.125f, out[di]), 0);
                for (int t = 0; t < T; t++)
                    for (int h = 0; h < Q_HEADS; h++) {
                        const float *o = out[di] + (t * Q_HEADS + h) * HEAD_DIM;
                        const float *qh = q + (t * Q_HEADS + h) * HEAD_DIM;
                        double ref[HEAD_DIM];
                        /* against the exact f32 data, and (f16) against its f16 rounding */
                        for (int rr = 0; rr < 1 + f16; rr++) {
                            double tol = attn_ref(qh, k, v, tp[t].pos, h, f16, rr, ref);
                            for (int i = 0; i < HEAD_DIM; i++)
                                ck_assert_msg(fabs(o[i] - ref[i]) <= tol,
                                              "%s %s %s pos %d head %d dim %d: %.9g vs %.9g "
                                              "(tol %g, ref rounded to f16: %d)",
                                              dev_kernels_name(devs[di]), f16 ? "f16" : "f32",
                                              query_set_name[c], tp[t].pos, h, i, o[i], ref[i], tol,
                                              rr);
                        }
                    }
            }
            if (nd < 2)
                continue;
            if (f16) { /* dot_f16, the lane sums and e^x share one arithmetic */
                ck_assert_msg(memcmp(out[0], out[1], sizeof(float) * T * Q_ROW) == 0,
                              "f16 cache, %s: scalar and AVX2 attention differ", query_set_name[c]);
            } else { /* f32 scores come from dot_f32, whose order differs: 1e-5 of max|v| */
                for (int i = 0; i < T * Q_ROW; i++)
                    ck_assert_msg(fabs(out[0][i] - out[1][i]) <= 1e-5 * maxv,
                                  "f32 cache, %s [%d]: scalar %.9g avx2 %.9g", query_set_name[c], i,
                                  out[0][i], out[1][i]);
            }
        }
        /* n_heads not a multiple of n_kv_heads: refused, out untouched */
        query_set(0, tp);
        for (int di = 0; di < nd; di++) {
            for (int i = 0; i < Q_ROW; i++)
                out[di][i] = -3.0f;
            ck_assert_int_eq(tb_attention(devs[di], &kv[di], tp, 1, q, 5, 0.125f, out[di]),
                             -EINVAL);
            for (int i = 0; i < Q_ROW; i++)
                ck_assert_float_eq(out[di][i], -3.0f);
            kv_cache_destroy(devs[di], &kv[di]);
            free(cache[di][0]);
            free(cache[di][1]);
        }
    }
    free(k), free(v), free(q), free(out[0]), free(out[1]);
    backends_destroy(&b);
}
END_TEST

/*
 * Head sizes other than 64 and a block size that does not divide the lane
 * counts: the AVX2 kernels take 64 values of a head at a time and walk the
 * block table by strides of 8 and 32, so 8, 40, 80 and 136 values per head
 * and blocks of 5 positions reach their other branches.  The scalar kernels
 * are the reference: the bits must agree, for chunks and lone tokens, with
 * 1, 2 and 5 query heads per KV head (the kernels take them alone, in
 * pairs and in threes: 5 is the odd case that goes one at a time).
 */
START_TEST(attention_head_sizes_scalar_and_avx2_agree)
{
    /* _i: exact_llamacpp, where a lone token takes the 32-lane order */
    struct backends b;
    backends_create_mode(&b, 2, _i);
    if (!b.has_avx2) {
        note_no_avx2("attention_head_sizes_scalar_and_avx2_agree");
        backends_destroy(&b);
        return;
    }
    enum { BS = 5, NB = 12, N = 41, QH_MAX = 5 };
    static const int n_qh[] = {1, 2, 5};
    static const int32_t blocks[] = {11, 2, 7, 0, 5, 9, 1, 3, 10}; /* 9 * 5 = 45 >= N */
    static const int dims[] = {8, 40, 80, 136};
    struct rng r = {1300};
    for (size_t di = 0; di < 3 * sizeof dims / sizeof dims[0]; di++) {
        int hd = dims[di / 3], QH = n_qh[di % 3];
        size_t bytes = (size_t)NB * BS * hd * 2;
        float *k = malloc(sizeof(float) * N * hd), *v = malloc(sizeof(float) * N * hd);
        float *q = malloc(sizeof(float) * N * QH_MAX * hd);
        float *out[2] = {malloc(sizeof(float) * N * QH_MAX * hd),
                         malloc(sizeof(float) * N * QH_MAX * hd)};
        for (int i = 0; i < N * hd; i++) {
            k[i] = rng_normal(&r);
            v[i] = rng_normal(&r);
        }
        for (int i = 0; i < N * QH * hd; i++)
            q[i] = rng_normal(&r);
        struct dev *devs[2] = {&b.scalar, &b.avx2};
        struct dev_kv kv[2];
        struct tpos tp[N];
        for (int d = 0; d < 2; d++) {
            kv[d] = (struct dev_kv){
                .type = QT_F16, .n_blocks = NB, .block_size = BS, .n_kv_heads = 1, .head_dim = hd};
            kv[d].k = dev_alloc(devs[d], bytes);
            kv[d].v = dev_alloc(devs[d], bytes);
            ck_assert(kv[d].k && kv[d].v);
            for (int p = 0; p < N; p++)
                tp[p] = (struct tpos){blocks, p, 1};
            ck_assert_int_eq(tb_kv_store(devs[d], &kv[d], tp, N, k, v), 0);
        }
        /*
         * every position as a lone token, a chunk of the last 13, of the
         * last 3, one lone token
         */
        static const int sets[][2] = {{N, 0}, {13, 1}, {3, 1}, {1, 0}}; /* T, chunk */
        for (int qs = 0; qs < 4; qs++) {
            int T = sets[qs][0], chunk = sets[qs][1];
            for (int t = 0; t < T; t++)
                tp[t] = (struct tpos){blocks, chunk || T == 1 ? N - T + t : t, chunk};
            for (int d = 0; d < 2; d++)
                ck_assert_int_eq(tb_attention(devs[d], &kv[d], tp, T, q, QH, 0.125f, out[d]), 0);
            for (int i = 0; i < T * QH * hd; i++)
                ck_assert_msg(
                    memcmp(&out[0][i], &out[1][i], 4) == 0,
                    "head_dim %d, %d query heads, %d %s, output %d: scalar %.9g avx2 %.9g", hd, QH,
                    T, chunk ? "in a chunk" : "lone tokens", i, out[0][i], out[1][i]);
        }
        for (int d = 0; d < 2; d++) {
            dev_free(devs[d], kv[d].k);
            dev_free(devs[d], kv[d].v);
        }
        free(k), free(v), free(q), free(out[0]), free(out[1]);
    }
    backends_destroy(&b);
}
END_TEST

START_TEST(attention_does_not_depend_on_thread_count)
{
    struct rng r = {1200};
    float *k = malloc(sizeof(float) * SEQ * KV_ROW), *v = malloc(sizeof(float) * SEQ * KV_ROW);
    size_t osz = sizeof(float) * SEQ * Q_ROW;
    float *q = malloc(osz), *o1[N_QUERY_SETS], *on = malloc(osz);
    for (int i = 0; i < SEQ * KV_ROW; i++) {
        k[i] = rng_normal(&r);
        v[i] = rng_normal(&r);
    }
    for (int i = 0; i < SEQ * Q_ROW; i++)
        q[i] = rng_normal(&r);
    struct tpos tp[SEQ];
    for (int c = 0; c < N_QUERY_SETS; c++)
        o1[c] = malloc(osz);
    struct tweight tw; /* a weight to hint at: 67 rows of Q4_1, 24 KB */
    tweight_init(&tw, QT_Q4_1, ROWS, COLS, 1201);
    for (int n = 1; n <= 3; n++) {
        struct dev d;
        struct dev_config cfg = {.threads = n, .exact_llamacpp = _i};
        ck_assert_int_eq(dev_create("cpu", &cfg, &d, NULL, 0), 0);
        struct dev_kv kv = kv_cache_create(&d, QT_F16);
        kv_fill(&d, &kv, k, v);
        for (int c = 0; c < N_QUERY_SETS; c++) {
            int T = query_set(c, tp);
            ck_assert_int_eq(tb_attention(&d, &kv, tp, T, q, Q_HEADS, 0.125f, n == 1 ? o1[c] : on),
                             0);
            if (n > 1)
                ck_assert_msg(memcmp(o1[c], on, sizeof(float) * T * Q_ROW) == 0,
                              "%s: %d threads differ from 1", query_set_name[c], n);
            /* idle threads fetching a hinted weight change nothing */
            dev_prefetch(&d, &tw.w);
            ck_assert_int_eq(tb_attention(&d, &kv, tp, T, q, Q_HEADS, 0.125f, on), 0);
            ck_assert_msg(memcmp(o1[c], on, sizeof(float) * T * Q_ROW) == 0,
                          "%s: %d threads with a prefetch hint differ", query_set_name[c], n);
        }
        kv_cache_destroy(&d, &kv);
        dev_destroy(&d);
    }
    for (int c = 0; c < N_QUERY_SETS; c++)
        free(o1[c]);
    tweight_free(&tw);
    free(k), free(v), free(q), free(on);
}
END_TEST

Suite *device_suite(void)
{
    Suite *s = suite_create("device");
    TCase *tc = tcase_create("cpu");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, matmul_kernel_paths_agree);
    tcase_add_test(tc, kernel_paths_are_chosen_and_refused_by_name);
    tcase_add_test(tc, matmul_matches_dequantized_reference);
    tcase_add_test(tc, matmul_rows_do_not_depend_on_batch);
    tcase_add_test(tc, matmul_n_equals_separate_matmuls);
    tcase_add_test(tc, matmul_refuses_unsupported_weights);
    tcase_add_test(tc, results_do_not_depend_on_thread_count);
    tcase_add_test(tc, embed_returns_dequantized_rows);
    tcase_add_test(tc, rmsnorm_matches_reference);
    tcase_add_test(tc, rope_matches_reference);
    tcase_add_test(tc, silu_mul_matches_reference);
    tcase_add_test(tc, add_and_add_bias_are_elementwise);
    tcase_add_test(tc, device_memory_round_trips);
    tcase_add_test(tc, bad_batches_are_refused);
    tcase_add_loop_test(tc, attention_over_scattered_blocks_matches_reference, 0,
                        2); /* both attention orders */
    tcase_add_loop_test(tc, attention_head_sizes_scalar_and_avx2_agree, 0,
                        2); /* both attention orders */
    tcase_add_loop_test(tc, attention_does_not_depend_on_thread_count, 0,
                        2); /* both attention orders */
    suite_add_tcase(s, tc);
    return s;
}

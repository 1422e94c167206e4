/*
 * device/cpu/scalar.c - the reference kernels in plain C.  They keep the
 * lane structure of the AVX2 kernels (see kernels.h) so that both give the
 * same bits; fmaf() stands for a fused multiply-add.
 */
#include <math.h>
#include <string.h>

#include "device/cpu/kernels.h"
#include "util/quant.h"

static float half(uint16_t h)
{
    return qt_f16_to_f32(h);
}

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

/* 8 lanes added as hsum8 does: ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)) */
static float sum8(const float *l)
{
    float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
    return (s0 + s2) + (s1 + s3);
}

/* 32 lanes (4 x 8) added as the vector-dot reduction does */
static float sum32(const float *l)
{
    float x[8], t[4];
    for (int i = 0; i < 8; i++)
        x[i] = (l[i] + l[16 + i]) + (l[8 + i] + l[24 + i]);
    for (int i = 0; i < 4; i++)
        t[i] = x[i] + x[i + 4];
    return (t[0] + t[1]) + (t[2] + t[3]);
}

/* ---- activation quantization ------------------------------------------------ */

/* amax / 127 as the scale, values x * 127/amax rounded half to even */
static float quant_block(const float *x, int8_t *q)
{
    float amax = 0.0f;
    for (int j = 0; j < QK; j++)
        amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f;
    float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    for (int j = 0; j < QK; j++)
        q[j] = (int8_t)nearbyintf(x[j] * id);
    return d;
}

static void quant_q8_0(const float *x, struct blk_q8_0 *y, int64_t k)
{
    for (int64_t b = 0; b < k / QK; b++) {
        y[b].d = qt_f16_to_f32(qt_f32_to_f16(quant_block(x + b * QK, y[b].qs)));
        y[b].sum = 0;
        for (int j = 0; j < QK; j++)
            y[b].sum += y[b].qs[j];
    }
}

static void quant_q8_1(const float *x, struct blk_q8_1 *y, int64_t k)
{
    for (int64_t b = 0; b < k / QK; b++) {
        float d = quant_block(x + b * QK, y[b].qs);
        int sum = 0;
        for (int j = 0; j < QK; j++)
            sum += y[b].qs[j];
        y[b].d = qt_f16_to_f32(qt_f32_to_f16(d));
        y[b].s = qt_f16_to_f32(qt_f32_to_f16(d * (float)sum));
    }
}

/* ---- quantized dot products ----------------------------------------------------- */

/* w[32] (unpacked weights) . a[32] into 8 lanes of 4 bytes each, scaled by d */
static void block_fma(const int *w, const int8_t *a, float d, float *lanes)
{
    for (int l = 0; l < 8; l++) {
        int s = 0;
        for (int i = 4 * l; i < 4 * l + 4; i++)
            s += w[i] * a[i];
        lanes[l] = fmaf(d, (float)s, lanes[l]);
    }
}

/* unpacks 16 bytes of nibbles (low nibbles first), minus `off` */
static void unpack4(const uint8_t *q, int off, int *w)
{
    for (int j = 0; j < 16; j++) {
        w[j] = (q[j] & 0x0f) - off;
        w[j + 16] = (q[j] >> 4) - off;
    }
}

/* adds each element's fifth bit (bit j of qh) as 16 */
static void add_fifth(const uint8_t *qh4, int *w)
{
    uint32_t qh =
        (uint32_t)qh4[0] | (uint32_t)qh4[1] << 8 | (uint32_t)qh4[2] << 16 | (uint32_t)qh4[3] << 24;
    for (int j = 0; j < 32; j++)
        w[j] += (int)((qh >> j) & 1) << 4;
}

/* Q4_0: {f16 d; u8 qs[16]} */
static float dot_q4_0(const void *w, const struct blk_q8_0 *a, int64_t k)
{
    const uint8_t *p = w;
    float lanes[8] = {0};
    int q[32];
    for (int64_t b = 0; b < k / QK; b++, p += 18) {
        unpack4(p + 2, 8, q);
        block_fma(q, a[b].qs, half(rd16(p)) * a[b].d, lanes);
    }
    return sum8(lanes);
}

/* Q4_1: {f16 d, m; u8 qs[16]} */
static float dot_q4_1(const void *w, const struct blk_q8_1 *a, int64_t k)
{
    const uint8_t *p = w;
    float lanes[8] = {0}, summ = 0.0f;
    int q[32];
    for (int64_t b = 0; b < k / QK; b++, p += 20) {
        summ = fmaf(half(rd16(p + 2)), a[b].s, summ);
        unpack4(p + 4, 0, q);
        block_fma(q, a[b].qs, half(rd16(p)) * a[b].d, lanes);
    }
    return sum8(lanes) + summ;
}

/* Q5_0: {f16 d; u8 qh[4]; u8 qs[16]} */
static float dot_q5_0(const void *w, const struct blk_q8_0 *a, int64_t k)
{
    const uint8_t *p = w;
    float lanes[8] = {0};
    int q[32];
    for (int64_t b = 0; b < k / QK; b++, p += 22) {
        unpack4(p + 6, 0, q);
        add_fifth(p + 2, q);
        for (int j = 0; j < 32; j++)
            q[j] -= 16;
        block_fma(q, a[b].qs, half(rd16(p)) * a[b].d, lanes);
    }
    return sum8(lanes);
}

/* Q5_1: {f16 d, m; u8 qh[4]; u8 qs[16]} */
static float dot_q5_1(const void *w, const struct blk_q8_1 *a, int64_t k)
{
    const uint8_t *p = w;
    float lanes[8] = {0}, summ = 0.0f;
    int q[32];
    for (int64_t b = 0; b < k / QK; b++, p += 24) {
        summ = fmaf(half(rd16(p + 2)), a[b].s, summ);
        unpack4(p + 8, 0, q);
        add_fifth(p + 4, q);
        block_fma(q, a[b].qs, half(rd16(p)) * a[b].d, lanes);
    }
    return sum8(lanes) + summ;
}

/* Q8_0: {f16 d; i8 qs[32]} */
static float dot_q8_0(const void *w, const struct blk_q8_0 *a, int64_t k)
{
    const uint8_t *p = w;
    float lanes[8] = {0};
    int q[32];
    for (int64_t b = 0; b < k / QK; b++, p += 34) {
        for (int j = 0; j < 32; j++)
            q[j] = (int8_t)p[2 + j];
        block_fma(q, a[b].qs, half(rd16(p)) * a[b].d, lanes);
    }
    return sum8(lanes);
}

/* ---- float kernels ---------------------------------------------------------------- */

/*
 * Packed weights (kernels.h): per (row, token) and block, the exact integer
 * dot, then fmaf(d_w * d_a, isum, acc) (and for Q4_1 fmaf(m_w, s_a, acc)).
 */
static float block_q4_1x8(const void *wb, int r, const void *ab, float acc)
{
    const struct blk_q4_1x8 *w = wb;
    const struct blk_q8_1 *a = ab;
    int isum = 0;
    for (int c = 0; c < 4; c++)
        for (int i = 0; i < 4; i++) {
            int q = w->qs[c][r][i];
            isum += (q & 0x0f) * a->qs[4 * c + i] + (q >> 4) * a->qs[16 + 4 * c + i];
        }
    acc = fmaf(half(w->d[r]) * a->d, (float)isum, acc);
    return fmaf(half(w->m[r]), a->s, acc);
}

static float block_q8_0x8(const void *wb, int r, const void *ab, float acc)
{
    const struct blk_q8_0x8 *w = wb;
    const struct blk_q8_0 *a = ab;
    int isum = 0;
    for (int c = 0; c < 8; c++)
        for (int i = 0; i < 4; i++)
            isum += w->qs[c][r][i] * a->qs[4 * c + i];
    return fmaf(half(w->d[r]) * a->d, (float)isum, acc);
}

static float block_q4_0x8(const void *wb, int r, const void *ab, float acc)
{
    const struct blk_q4_0x8 *w = wb;
    const struct blk_q8_0 *a = ab;
    int isum = 0;
    for (int c = 0; c < 4; c++)
        for (int i = 0; i < 4; i++) {
            int q = w->qs[c][r][i];
            isum += ((q & 0x0f) - 8) * a->qs[4 * c + i] + ((q >> 4) - 8) * a->qs[16 + 4 * c + i];
        }
    return fmaf(half(w->d[r]) * a->d, (float)isum, acc);
}

static float block_q5_0x8(const void *wb, int r, const void *ab, float acc)
{
    const struct blk_q5_0x8 *w = wb;
    const struct blk_q8_0 *a = ab;
    int isum = 0;
    for (int c = 0; c < 4; c++)
        for (int i = 0; i < 4; i++) {
            int q = w->qs[c][r][i], e = 4 * c + i, h = w->qh[r][i];
            int lo = ((q & 0x0f) | ((h >> c) & 1) << 4) - 16;
            int hi = ((q >> 4) | ((h >> (4 + c)) & 1) << 4) - 16;
            isum += lo * a->qs[e] + hi * a->qs[16 + e];
        }
    return fmaf(half(w->d[r]) * a->d, (float)isum, acc);
}

/* the packed GEMM over blocks of wsz (weights) and asz (activations) bytes */
static void gemm_x8(const char *w, size_t wsz, int64_t n_rows, const char *a, size_t asz, int64_t k,
                    float *y, int64_t ldy, int nt,
                    float (*block)(const void *, int, const void *, float))
{
    int64_t nb = k / QK;
    for (int64_t r0 = 0; r0 < n_rows; r0 += 8, w += nb * wsz)
        for (int t = 0; t < nt; t++)
            for (int r = 0; r < 8 && r0 + r < n_rows; r++) {
                float acc = 0.0f;
                for (int64_t b = 0; b < nb; b++)
                    acc = block(w + b * wsz, r, a + (t * nb + b) * asz, acc);
                y[t * ldy + r0 + r] = acc;
            }
}

static void gemm_q4_1x8(const struct blk_q4_1x8 *w, int64_t n_rows, const struct blk_q8_1 *a,
                        int64_t k, float *y, int64_t ldy, int nt)
{
    gemm_x8((const char *)w, sizeof(*w), n_rows, (const char *)a, sizeof(*a), k, y, ldy, nt,
            block_q4_1x8);
}

static void gemm_q8_0x8(const struct blk_q8_0x8 *w, int64_t n_rows, const struct blk_q8_0 *a,
                        int64_t k, float *y, int64_t ldy, int nt)
{
    gemm_x8((const char *)w, sizeof(*w), n_rows, (const char *)a, sizeof(*a), k, y, ldy, nt,
            block_q8_0x8);
}

static void gemm_q4_0x8(const struct blk_q4_0x8 *w, int64_t n_rows, const struct blk_q8_0 *a,
                        int64_t k, float *y, int64_t ldy, int nt)
{
    gemm_x8((const char *)w, sizeof(*w), n_rows, (const char *)a, sizeof(*a), k, y, ldy, nt,
            block_q4_0x8);
}

static void gemm_q5_0x8(const struct blk_q5_0x8 *w, int64_t n_rows, const struct blk_q8_0 *a,
                        int64_t k, float *y, int64_t ldy, int nt)
{
    gemm_x8((const char *)w, sizeof(*w), n_rows, (const char *)a, sizeof(*a), k, y, ldy, nt,
            block_q5_0x8);
}

/* ---- K-quants ----------------------------------------------------------------- */

void cpu_quant_q8_K(const float *x, struct blk_q8_K *y, int64_t k)
{
    for (int64_t b = 0; b < k / QKK; b++, x += QKK) {
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < QKK; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        if (amax == 0.0f) {
            memset(&y[b], 0, sizeof(y[b]));
            continue;
        }
        float iscale = -127.0f / max;
        for (int j = 0; j < QKK; j++) {
            float p = iscale * x[j]; /* rounded to float, then to an integer, half to even */
            int v = (int)nearbyintf(p);
            y[b].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < QKK / 16; j++) {
            int sum = 0;
            for (int i = 0; i < 16; i++)
                sum += y[b].qs[16 * j + i];
            y[b].bsums[j] = (int16_t)sum;
        }
        y[b].d = 1.0f / iscale;
    }
}

/* lane l = fma(d, (float)sum[l], lane l), for the 8 lanes of a super-block */
static void lanes_fma(const int32_t *sum, float d, float *lanes)
{
    for (int l = 0; l < 8; l++)
        lanes[l] = fmaf(d, (float)sum[l], lanes[l]);
}

/* the 4 min products of a Q4_K / Q5_K super-block: pm[m] takes sub-blocks 2m, 2m + 1 */
static void min_products(const uint8_t *mn, const int16_t *bs, int32_t *pm)
{
    for (int m = 0; m < 4; m++)
        pm[m] = mn[2 * m] * (bs[4 * m] + bs[4 * m + 1]) +
                mn[2 * m + 1] * (bs[4 * m + 2] + bs[4 * m + 3]);
}

/* Q4_K: {f16 d, dmin; u8 scales[12]; u8 qs[128]}: 8 sub-blocks of 32 */
static float dot_q4_K(const void *w, const struct blk_q8_K *a, int64_t k)
{
    const uint8_t *p = w;
    float lanes[8] = {0}, mins[4] = {0};
    for (int64_t i = 0; i < k / QKK; i++, p += 144) {
        const int8_t *q8 = a[i].qs;
        uint8_t sc[8], mn[8];
        k4_unpack(p + 4, sc, mn);
        int32_t sum[8] = {0};
        for (int e = 0; e < QKK; e++) {
            const uint8_t *qs = p + 16 + 32 * (e / 64);
            int r = e % 64, q = r < 32 ? qs[r] & 0xf : qs[r - 32] >> 4;
            sum[e % 32 / 4] += sc[e / 32] * q * q8[e];
        }
        lanes_fma(sum, a[i].d * half(rd16(p)), lanes);
        float dmin = -a[i].d * half(rd16(p + 2));
        int32_t pm[4];
        min_products(mn, a[i].bsums, pm);
        for (int m = 0; m < 4; m++)
            mins[m] = fmaf(dmin, (float)pm[m], mins[m]);
    }
    return sum8(lanes) + ((mins[0] + mins[2]) + (mins[1] + mins[3]));
}

/* Q5_K: {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]} */
static float dot_q5_K(const void *w, const struct blk_q8_K *a, int64_t k)
{
    const uint8_t *p = w;
    float lanes[8] = {0}, summs = 0.0f;
    for (int64_t i = 0; i < k / QKK; i++, p += 176) {
        const int8_t *q8 = a[i].qs;
        const uint8_t *qh = p + 16;
        uint8_t sc[8], mn[8];
        k4_unpack(p + 4, sc, mn);
        int32_t sum[8] = {0};
        for (int e = 0; e < QKK; e++) {
            const uint8_t *qs = p + 48 + 32 * (e / 64);
            int r = e % 64, q = r < 32 ? qs[r] & 0xf : qs[r - 32] >> 4;
            q += ((qh[r % 32] >> (e / 32)) & 1) << 4; /* sub-block e/32 takes bit e/32 */
            sum[e % 32 / 4] += sc[e / 32] * q * q8[e];
        }
        lanes_fma(sum, a[i].d * half(rd16(p)), lanes);
        int32_t pm[4];
        min_products(mn, a[i].bsums, pm);
        summs =
            fmaf(-a[i].d * half(rd16(p + 2)), (float)((pm[0] + pm[1]) + (pm[2] + pm[3])), summs);
    }
    return sum8(lanes) + summs;
}

/* Q6_K: {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: 16 sub-blocks of 16 */
static float dot_q6_K(const void *w, const struct blk_q8_K *a, int64_t k)
{
    const uint8_t *p = w;
    float lanes[8] = {0};
    for (int64_t i = 0; i < k / QKK; i++, p += 210) {
        const int8_t *q8 = a[i].qs, *sc = (const int8_t *)(p + 192);
        int32_t sum[8] = {0};
        for (int e = 0; e < QKK; e++) {
            /* half n of 128: ql[64n ..], qh[32n ..]; quarter c of it: nibble c / 2 of
             * ql[l + 32 (c % 2)], bits 2c, 2c + 1 of qh[l] */
            int n = e / 128, c = e % 128 / 32, l = e % 32;
            const uint8_t *ql = p + 64 * n, *qh = p + 128 + 32 * n;
            int lo = (ql[l + 32 * (c % 2)] >> (4 * (c / 2))) & 0xf;
            int q = (lo | (((qh[l] >> (2 * c)) & 3) << 4)) - 32;
            sum[e % 32 / 4] += sc[e / 16] * q * q8[e];
        }
        lanes_fma(sum, a[i].d * half(rd16(p + 208)), lanes);
    }
    return sum8(lanes);
}

/* as the AVX2 kernel: 16 lanes (i % 16), lanes l and 8 + l added, then sum8; the tail fused */
/* ---- packed K-quants (kernels.h) --------------------------------------------------- */

static float block_q4_Kx8(const void *wb, int r, const void *ab, float acc)
{
    const struct blk_q4_Kx8 *w = wb;
    const struct blk_q8_K *a = ab;
    int32_t isum = 0, msum = 0;
    for (int s = 0; s < 8; s++) {
        int32_t sum = 0;
        for (int p = 8 * (s / 2); p < 8 * (s / 2) + 8; p++)
            for (int b = 0; b < 4; b++) {
                int q = w->qs[p][r][b], e = 64 * (s / 2) + 4 * (p % 8) + b + 32 * (s % 2);
                sum += (s % 2 ? q >> 4 : q & 0xf) * a->qs[e];
            }
        isum += w->sc[s][r] * sum;
        msum += w->mn[s / 2][r][s % 2] * (a->bsums[2 * s] + a->bsums[2 * s + 1]);
    }
    acc = fmaf(half(w->d[r]) * a->d, (float)isum, acc);
    return fmaf(-(half(w->dmin[r]) * a->d), (float)msum, acc);
}

static float block_q6_Kx8(const void *wb, int r, const void *ab, float acc)
{
    const struct blk_q6_Kx8 *w = wb;
    const struct blk_q8_K *a = ab;
    int32_t isum = 0;
    for (int s = 0; s < 16; s++) {
        int g = s / 2, hi = s % 2;
        int32_t sum = 0;
        for (int c = 0; c < 4; c++)
            for (int b = 0; b < 4; b++) {
                int q = hi ? w->ql[4 * g + c][r][b] >> 4 : w->ql[4 * g + c][r][b] & 0xf;
                q |= ((w->qh[2 * g + c / 2][r][b] >> (4 * (c % 2) + 2 * hi)) & 3) << 4;
                sum += q * a->qs[32 * g + 16 * hi + 4 * c + b];
            }
        isum += w->sc[s][r] * (sum - 32 * a->bsums[s]);
    }
    return fmaf(half(w->d[r]) * a->d, (float)isum, acc);
}

static void gemm_kx8(const char *w, size_t wsz, int64_t n_rows, const struct blk_q8_K *a, int64_t k,
                     float *y, int64_t ldy, int nt,
                     float (*block)(const void *, int, const void *, float))
{
    int64_t nb = k / QKK;
    for (int64_t r0 = 0; r0 < n_rows; r0 += 8, w += nb * wsz)
        for (int t = 0; t < nt; t++)
            for (int r = 0; r < 8 && r0 + r < n_rows; r++) {
                float acc = 0.0f;
                for (int64_t b = 0; b < nb; b++)
                    acc = block(w + b * wsz, r, &a[t * nb + b], acc);
                y[t * ldy + r0 + r] = acc;
            }
}

static void gemm_q4_Kx8(const struct blk_q4_Kx8 *w, int64_t n_rows, const struct blk_q8_K *a,
                        int64_t k, float *y, int64_t ldy, int nt)
{
    gemm_kx8((const char *)w, sizeof(*w), n_rows, a, k, y, ldy, nt, block_q4_Kx8);
}

static void gemm_q6_Kx8(const struct blk_q6_Kx8 *w, int64_t n_rows, const struct blk_q8_K *a,
                        int64_t k, float *y, int64_t ldy, int nt)
{
    gemm_kx8((const char *)w, sizeof(*w), n_rows, a, k, y, ldy, nt, block_q6_Kx8);
}

static float dot_f32(const float *a, const float *b, int64_t k)
{
    float acc[16] = {0}, l8[8];
    int64_t i = 0;
    for (; i + 16 <= k; i += 16)
        for (int l = 0; l < 16; l++)
            acc[l] = fmaf(a[i + l], b[i + l], acc[l]);
    for (int l = 0; l < 8; l++)
        l8[l] = acc[l] + acc[8 + l];
    float s = sum8(l8);
    for (; i < k; i++)
        s = fmaf(a[i], b[i], s);
    return s;
}

static const uint16_t *paged_row(const uint16_t *base, const int32_t *blocks, int bs, size_t row,
                                 int p)
{
    return base + ((size_t)blocks[p / bs] * bs + (size_t)(p % bs)) * row;
}

static void scores_f16(const float *q, size_t q_stride, int nq, const uint16_t *k,
                       const uint16_t *v, const int32_t *blocks, int bs, size_t row, int n, int d,
                       int n_lanes, float scale, float *out, size_t out_stride)
{
    (void)v; /* a prefetch hint only */
    for (int h = 0; h < nq; h++)
        for (int p = 0; p < n; p++) {
            const uint16_t *kr = paged_row(k, blocks, bs, row, p);
            const float *qh = q + h * q_stride;
            float lanes[32] = {0};
            for (int i = 0; i < d; i++)
                lanes[i % n_lanes] = fmaf(qh[i], half(kr[i]), lanes[i % n_lanes]);
            out[h * out_stride + p] = (n_lanes == 8 ? sum8(lanes) : sum32(lanes)) * scale;
        }
}

static void accum_v_f16(float *acc, size_t acc_stride, const float *p, size_t p_stride, int nq,
                        const uint16_t *v, const int32_t *blocks, int bs, size_t row, int n, int d,
                        int n_lanes)
{
    for (int h = 0; h < nq; h++) {
        float *ah = acc + h * acc_stride;
        const float *ph = p + h * p_stride;
        memset(ah, 0, sizeof(float) * (size_t)n_lanes * d);
        for (int r = 0; r < n; r++) {
            float *a = ah + (size_t)(r % n_lanes) * d;
            const uint16_t *vr = paged_row(v, blocks, bs, row, r);
            for (int i = 0; i < d; i++)
                a[i] = fmaf(ph[r], half(vr[i]), a[i]);
        }
    }
}

static void reduce_lanes(const float *acc, int d, int n_lanes, float *out)
{
    float l[32];
    for (int i = 0; i < d; i++) {
        for (int j = 0; j < n_lanes; j++)
            l[j] = acc[(size_t)j * d + i];
        out[i] = n_lanes == 8 ? sum8(l) : sum32(l);
    }
}

/*
 * e^x in single precision: x = n ln2 + b with n = round(x / ln2) (by the
 * 1.5 * 2^23 shifter) and ln2 split in two parts; e^b - 1 by a degree-5
 * polynomial in b; then scaled by 2^n, with a two-step scale where |n| > 126
 * and overflow/underflow where |n| > 192.  The same steps as kernels' AVX2.
 */
static float exp_poly(float x)
{
    const float shifter = 0x1.8p23f;
    float z = fmaf(x, 0x1.715476p+0f, shifter); /* x / ln2 + shifter */
    float n = z - shifter;
    float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    uint32_t zb, one;
    memcpy(&zb, &z, 4);
    float onef = 1.0f;
    memcpy(&one, &onef, 4);
    uint32_t e = zb << 23;
    uint32_t kb = e + one;
    float k;
    memcpy(&k, &kb, 4);
    float u = b * b;
    float j = fmaf(
        fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
        u, 0x1.ffffecp-1f * b);
    if (!(fabsf(n) > 126.0f))
        return fmaf(j, k, k);
    uint32_t g = n <= 0.0f ? 0x82000000u : 0u;
    uint32_t s1b = g + 0x7f000000u, s2b = e - g;
    float s1, s2;
    memcpy(&s1, &s1b, 4);
    memcpy(&s2, &s2b, 4);
    if (fabsf(n) > 192.0f)
        return s1 * s1;
    return fmaf(s2, j, s2) * s1;
}

static double exp_sum(const float *x, float max, float *y, int n)
{
    double sum = 0.0;
    for (int i0 = 0; i0 < n; i0 += 8) {
        float l[8] = {0};
        for (int i = i0; i < i0 + 8 && i < n; i++)
            l[i - i0] = y[i] = exp_poly(x[i] - max);
        sum += (double)sum8(l);
    }
    return sum;
}

static void silu_mul(const float *gate, const float *up, int n, float *out)
{
    int i = 0, full = n - n % 8;
    for (; i < full; i++)
        out[i] = gate[i] / (1.0f + exp_poly(0.0f - gate[i])) * up[i];
    for (; i < n; i++)
        out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

static void scale_round_f16(float *x, float s, int n)
{
    for (int i = 0; i < n; i++)
        x[i] = qt_f16_to_f32(qt_f32_to_f16(x[i] * s));
}

static void to_f16(const float *x, uint16_t *y, int n)
{
    for (int i = 0; i < n; i++)
        y[i] = qt_f32_to_f16(x[i]);
}

const struct cpu_kernels cpu_kernels_scalar = {
    .name = "scalar",
    .quant_q8_0 = quant_q8_0,
    .quant_q8_1 = quant_q8_1,
    .dot_q4_0 = dot_q4_0,
    .dot_q5_0 = dot_q5_0,
    .dot_q8_0 = dot_q8_0,
    .dot_q4_1 = dot_q4_1,
    .dot_q5_1 = dot_q5_1,
    .dot_f32 = dot_f32,
    .dot_q4_K = dot_q4_K,
    .dot_q5_K = dot_q5_K,
    .dot_q6_K = dot_q6_K,
    .gemm_q4_1x8 = gemm_q4_1x8,
    .gemm_q8_0x8 = gemm_q8_0x8,
    .gemm_q4_0x8 = gemm_q4_0x8,
    .gemm_q5_0x8 = gemm_q5_0x8,
    .gemm_q4_Kx8 = gemm_q4_Kx8,
    .gemm_q6_Kx8 = gemm_q6_Kx8,
    .scores_f16 = scores_f16,
    .accum_v_f16 = accum_v_f16,
    .reduce_lanes = reduce_lanes,
    .exp_sum = exp_sum,
    .scale_round_f16 = scale_round_f16,
    .to_f16 = to_f16,
    .silu_mul = silu_mul,
};

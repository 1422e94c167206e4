/*
 * device/cpu/kernels.h - the inner loops of the CPU backend: scalar.c (the
 * reference, plain C) and avx2.c (x86 SIMD, built for AVX2, AVX-512 and
 * VNNI, picked at run time by cpuid: avx2.c's head).  Private to device/cpu/.
 *
 * Quantized matmuls work as llama.cpp's CPU backend does: each activation
 * row is quantized per 32-element block to 8 bits (Q8_0: d; Q8_1: d and
 * s = d * sum(q)), the scale computed as amax / 127 and the values rounded
 * half to even, then dotted with the weight blocks in integers.
 *
 * All builds keep the same arithmetic, step for step: sums run in 8 lanes
 * (lane l takes elements 8i + l, or bytes 4l..4l+3 of a 32-byte block),
 * multiply-adds are fused, lanes are added in one fixed order, and e^x is
 * one polynomial.  So the scalar and SIMD paths give identical bits, and
 * they follow llama.cpp's AVX2 code closely enough to reproduce its greedy
 * tokens.  dot_f32 (float weights) too: 16 lanes, as the AVX2 loop.
 * Packed Q4_0, Q4_1, Q5_0 and Q8_0 weights take the integer-sum-per-block
 * formula of llama.cpp's reference code instead (see gemm_q4_1x8).
 */
#ifndef CINFER_DEVICE_CPU_KERNELS_H
#define CINFER_DEVICE_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define QK 32 /* elements per block of the 32-block types */

/*
 * Activation blocks.  llama.cpp keeps d and s in f16; we keep the same
 * f16-rounded values as floats, so the dot products need no conversion
 * per block (same bits, pp512 and batched decode faster).
 */
struct blk_q8_0 {
    float d; /* an f16 value */
    int8_t qs[QK];
    int32_t sum; /* sum(qs), exact: the packed Q4_0 / Q5_0 kernels take unsigned quants */
};

struct blk_q8_1 {
    float d; /* an f16 value */
    float s; /* an f16 value: d * sum(qs), rounded */
    int8_t qs[QK];
};

/*
 * Packed weights (cpu_pack_weight): rows in groups of 8, and for each group
 * its blocks in order, block b holding block b of the 8 rows - their f16
 * scales side by side, then their quant bytes in 4-byte pieces: piece c of
 * row r at qs[c][r].  A Q4_1 row block's 16 bytes are 4 pieces (byte j holds
 * values j and j + 16 in its low and high nibble), a Q8_0's 32 are 8.  One
 * 32-byte load then holds 4 quants of each of the 8 rows, to be multiplied
 * by the same 4 activation bytes broadcast.  Rows past the end are zero.
 */
struct blk_q4_1x8 {
    uint16_t d[8], m[8];
    uint8_t qs[4][8][4];
};

struct blk_q8_0x8 {
    uint16_t d[8];
    int8_t qs[8][8][4];
};

/*
 * Q4_0 as Q4_1 without m.  Q5_0 with each row's 32 fifth bits before,
 * re-laid so that piece c's are at bit c (low nibbles: elements 4c + b) and
 * bit 4 + c (high: 16 + 4c + b) of byte b.
 */
struct blk_q4_0x8 {
    uint16_t d[8];
    uint8_t qs[4][8][4];
};

struct blk_q5_0x8 {
    uint16_t d[8];
    uint8_t qh[8][4];
    uint8_t qs[4][8][4];
};

/*
 * The K-quants' activation block (llama.cpp's block_q8_K): 256 values, the
 * scale d = 1 / (-127 / max) (max: the value of largest magnitude, the
 * first such), q = x * (-127 / max) rounded half to even, and the sums of
 * each 16 q.  Made by cpu_quant_q8_K, one function for every path, as
 * llama.cpp's x86 build makes it (its reference code).
 */
#define QKK 256
struct blk_q8_K {
    float d;
    int8_t qs[QKK];
    int16_t bsums[QKK / 16];
};
void cpu_quant_q8_K(const float *x, struct blk_q8_K *y, int64_t k);

/*
 * Scale and min j (0..7) of a Q4_K / Q5_K super-block's 12 packed bytes of
 * 6-bit values (llama.cpp's get_scale_min_k4).
 */
static inline void k4_scale_min(int j, const uint8_t *q, uint8_t *d, uint8_t *m)
{
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/*
 * Packed K-quants, 8 rows a super-block, for Q8_K activations.  Their own
 * arithmetic (exact_llamacpp leaves K-quants unpacked): per (row, token) and
 * super-block, the exact integer sums
 *   Q4_K: isum = sum_s sc_s * sum_{e in s} q_e a_e   (8 sub-blocks of 32)
 *         msum = sum_s mn_s * (bsums[2s] + bsums[2s + 1])
 *   Q6_K: isum = sum_s sc_s * (sum_{e in s} q_e a_e - 32 bsums[s])  (16 of 16, q 0..63)
 * then acc = fma(d_w * d_a, (float)isum, acc) and (Q4_K)
 * acc = fma(-(dmin_w * d_a), (float)msum, acc), super-block after super-block.
 *
 * Q4_K: the scales and mins unpacked to bytes; piece p of a row's 128 quant
 * bytes (bytes 4p..4p+3: elements 64j + 4(p % 8) + b in their low nibbles
 * and 32 more in their high, j = p / 8) at qs[p][row].  Q6_K: re-laid per
 * group g of 32 elements: piece c (0..3) of ql holds elements 32g + 4c + b
 * (low nibble) and 32g + 16 + 4c + b (high); qh[2g + c / 2] their top two
 * bits, at bits 4 (c % 2) (the low nibble's) and 4 (c % 2) + 2.
 */
struct blk_q4_Kx8 {
    uint16_t d[8], dmin[8];
    uint8_t sc[8][8];    /* [sub-block][row] */
    uint8_t mn[4][8][2]; /* [sub-block pair][row][which] */
    uint8_t qs[32][8][4];
};

struct blk_q6_Kx8 {
    uint16_t d[8];
    int8_t sc[16][8]; /* [sub-block][row] */
    uint8_t ql[32][8][4];
    uint8_t qh[16][8][4];
};

/* all 8 scales and mins of a Q4_K / Q5_K super-block */
static inline void k4_unpack(const uint8_t *q, uint8_t *sc, uint8_t *mn)
{
    for (int j = 0; j < 8; j++)
        k4_scale_min(j, q, &sc[j], &mn[j]);
}

/* Activation formats a weight type is dotted with. */
enum act_fmt { ACT_F32, ACT_Q8_0, ACT_Q8_1, ACT_Q8_K };

struct cpu_kernels {
    const char *name;
    /* x[k] -> k/32 blocks */
    void (*quant_q8_0)(const float *x, struct blk_q8_0 *y, int64_t k);
    void (*quant_q8_1)(const float *x, struct blk_q8_1 *y, int64_t k);
    /* one weight row (k elements) . one quantized activation row */
    float (*dot_q4_0)(const void *w, const struct blk_q8_0 *a, int64_t k);
    float (*dot_q5_0)(const void *w, const struct blk_q8_0 *a, int64_t k);
    float (*dot_q8_0)(const void *w, const struct blk_q8_0 *a, int64_t k);
    float (*dot_q4_1)(const void *w, const struct blk_q8_1 *a, int64_t k);
    float (*dot_q5_1)(const void *w, const struct blk_q8_1 *a, int64_t k);
    float (*dot_f32)(const float *a, const float *b, int64_t k);
    /*
     * The K-quants against Q8_K activations, in llama.cpp's AVX2 arithmetic
     * on every path: per super-block, 8 exact integer lane sums (lane l
     * takes the elements e with e % 32 / 4 == l, each times its sub-block's
     * scale), then lane l = fma(d_w * d_a, (float)sum_l, lane l); the lanes
     * added as hsum8.  Q4_K and Q5_K subtract their mins: Q4_K in 4 lanes
     * (lane m: sub-blocks 2m and 2m+1), Q5_K in one running sum.
     */
    float (*dot_q4_K)(const void *w, const struct blk_q8_K *a, int64_t k);
    float (*dot_q5_K)(const void *w, const struct blk_q8_K *a, int64_t k);
    float (*dot_q6_K)(const void *w, const struct blk_q8_K *a, int64_t k);
    /*
     * Packed weights: n_rows rows from packed group w on (w: k/32 blocks per
     * group of 8 rows) against nt (1 to 4) activation rows a (k/32 blocks
     * each); y[i * ldy + r] = row r . row i of a.  Each (row, token) is
     *   sum over blocks b, in order, of  fma(d_w * d_a, (float)isum_b, acc)
     *   (Q4_1: then fma(m_w, s_a, acc))
     * with isum_b the block's exact integer dot, as llama.cpp's reference
     * (non-SIMD) code computes it; so the result does not depend on nt.
     */
    void (*gemm_q4_1x8)(const struct blk_q4_1x8 *w, int64_t n_rows, const struct blk_q8_1 *a,
                        int64_t k, float *y, int64_t ldy, int nt);
    void (*gemm_q8_0x8)(const struct blk_q8_0x8 *w, int64_t n_rows, const struct blk_q8_0 *a,
                        int64_t k, float *y, int64_t ldy, int nt);
    void (*gemm_q4_0x8)(const struct blk_q4_0x8 *w, int64_t n_rows, const struct blk_q8_0 *a,
                        int64_t k, float *y, int64_t ldy, int nt);
    void (*gemm_q5_0x8)(const struct blk_q5_0x8 *w, int64_t n_rows, const struct blk_q8_0 *a,
                        int64_t k, float *y, int64_t ldy, int nt);
    void (*gemm_q4_Kx8)(const struct blk_q4_Kx8 *w, int64_t n_rows, const struct blk_q8_K *a,
                        int64_t k, float *y, int64_t ldy, int nt);
    void (*gemm_q6_Kx8)(const struct blk_q6_Kx8 *w, int64_t n_rows, const struct blk_q8_K *a,
                        int64_t k, float *y, int64_t ldy, int nt);
    /*
     * Attention in f16, in one of two summation orders (n_lanes 8 or 32):
     * with 8 lanes, element i goes to lane i % 8 (llama.cpp's GEMM path, used
     * for every token); with 32, to lane i % 32, four accumulators of 8 (its
     * vector-dot path, which its decode takes: used for a lone token under
     * exact_llamacpp, to reproduce it).  The
     * cache is paged: position p of the sequence is in row
     * blocks[p / bs] * bs + p % bs of k or v (rows of `row` values apart;
     * k and v already point at the head's d values in row 0).
     *
     * Both take nq (1 to 3) query heads that share one KV head, so a K or V
     * row is read and converted once for all of them; head i's data is at
     * i * stride of each per-head argument.  Each head's arithmetic is the
     * same whatever nq is.
     *
     * scores_f16: out[p] = (q . k_p) * scale for p < n, q being f32 values
     * already rounded to f16 and d % 8 == 0.  v (or NULL) is the V pass's
     * cache, paged as k: a kernel may ask for its rows while it reads K's, so
     * that the V pass finds them in cache; results do not change.
     */
    void (*scores_f16)(const float *q, size_t q_stride, int nq, const uint16_t *k,
                       const uint16_t *v, const int32_t *blocks, int bs, size_t row, int n, int d,
                       int n_lanes, float scale, float *out, size_t out_stride);
    /*
     * The V pass over positions p < n: acc (n_lanes rows of d floats) is set
     * so that row p % n_lanes is the fused multiply-add of p[p] * v_p over its
     * positions in increasing order, from zero.
     */
    void (*accum_v_f16)(float *acc, size_t acc_stride, const float *p, size_t p_stride, int nq,
                        const uint16_t *v, const int32_t *blocks, int bs, size_t row, int n, int d,
                        int n_lanes);
    /* out[i] = the n_lanes lanes of acc[.][i] summed in that path's order */
    void (*reduce_lanes)(const float *acc, int d, int n_lanes, float *out);
    /* y = e^(x - max) for n values in groups of 8 (zero past n); returns their sum */
    double (*exp_sum)(const float *x, float max, float *y, int n);
    /* x[i] = x[i] * s rounded to the nearest f16 value (ties to even), kept as float */
    void (*scale_round_f16)(float *x, float s, int n);
    /* y[i] = x[i] rounded to the nearest f16 (ties to even) */
    void (*to_f16)(const float *x, uint16_t *y, int n);
    /* out = silu(gate) * up over n values, 8 at a time, the rest with libm expf */
    void (*silu_mul)(const float *gate, const float *up, int n, float *out);
};

extern const struct cpu_kernels cpu_kernels_scalar;
#ifdef CINFER_HAVE_AVX2 /* the builds of avx2.c */
extern const struct cpu_kernels cpu_kernels_avx2, cpu_kernels_avx512, cpu_kernels_avxvnni,
    cpu_kernels_avx512vnni;
#endif

#endif

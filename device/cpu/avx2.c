/*
 * device/cpu/avx2.c - the x86 SIMD versions of the kernels in scalar.c.
 * One source, built several times (Makefile) and picked at run time by
 * cpuid (cpu.c):
 *   avx2        AVX2+FMA+F16C, the baseline;
 *   avx512      the same loops built for AVX-512 F/BW/VL: EVEX encodings and
 *               32 vector registers, still 256 bits wide;
 *   avxvnni     AVX2 with AVX-VNNI: vpdpbusd (VEX) for the byte dots;
 *   avx512vnni  avx512 with AVX512-VNNI: vpdpbusd (EVEX, 256 bits).
 * CPU_VNNI is 1 for the VEX vpdpbusd, 2 for the EVEX one.  Every build gives
 * the same bits: the byte dots are exact integers whichever instructions
 * make them, and the float arithmetic is the same instructions in the same
 * order.  With CPU_EMULATE (tests only) SIMDe supplies the instructions a
 * CPU lacks, so the VNNI builds are checked on a CPU without VNNI.
 * Quantization gives the same bytes as the scalar code; dot products
 * differ from it only in float summation order where kernels.h says so.
 */
#ifdef CPU_EMULATE
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#else
#include <immintrin.h>
#endif
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "device/cpu/kernels.h"
#include "util/quant.h"

#ifndef CPU_KERNELS_NAME
#define CPU_KERNELS_NAME avx2
#endif
#ifndef CPU_VNNI
#define CPU_VNNI 0
#endif

/* Weight rows are streamed once per token; asking for the bytes this far
 * ahead keeps a decode step from waiting on memory (tg128 +7% here). */
#define PF_DIST 320

static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float half(uint16_t h)
{
    return _cvtsh_ss(h);
}

/* x rounded to the nearest f16 (ties to even), as qt_f32_to_f16 does */
static inline float f16_round(float x)
{
    return _cvtsh_ss(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT));
}

static inline uint16_t rd16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/*
 * Byte dots: 32 u8 x 32 s8 products, each 32-bit lane the sum of the 4
 * products of its bytes.  AVX2 has no instruction for that: maddubs makes
 * 16-bit pair sums (the kernels let those pile up while they cannot
 * overflow) and madd with ones widens them.  VNNI's vpdpbusd adds the 4
 * products straight into 32 bits.  The lane sums are the same exact
 * integers either way.
 *   pdot_add(acc, u, s): acc + u . s, in the build's accumulator (AVX2:
 *     16-bit pair sums, VNNI: 32-bit sums);
 *   pdot_i32(acc): an accumulator's 32-bit lane sums;
 *   dot4_add(acc32, u, s): acc32 + the 32-bit lane sums of u . s.
 */
#if CPU_VNNI == 1 && !defined(CPU_EMULATE)
#define DPBUSD _mm256_dpbusd_avx_epi32
#elif CPU_VNNI
#define DPBUSD _mm256_dpbusd_epi32 /* AVX512-VNNI + VL, or SIMDe's */
#endif

static inline __m256i pdot_add(__m256i acc, __m256i u, __m256i s)
{
#if CPU_VNNI
    return DPBUSD(acc, u, s);
#else
    return _mm256_add_epi16(acc, _mm256_maddubs_epi16(u, s));
#endif
}

/* pdot_add of two products, the AVX2 build adding their pair sums first */
static inline __m256i pdot_add2(__m256i acc, __m256i u0, __m256i s0, __m256i u1, __m256i s1)
{
#if CPU_VNNI
    return DPBUSD(DPBUSD(acc, u0, s0), u1, s1);
#else
    return _mm256_add_epi16(
        acc, _mm256_add_epi16(_mm256_maddubs_epi16(u0, s0), _mm256_maddubs_epi16(u1, s1)));
#endif
}

static inline __m256i pdot_i32(__m256i acc)
{
#if CPU_VNNI
    return acc;
#else
    return _mm256_madd_epi16(acc, _mm256_set1_epi16(1));
#endif
}

static inline __m256i dot4_add(__m256i acc32, __m256i u, __m256i s)
{
#if CPU_VNNI
    return DPBUSD(acc32, u, s);
#else
    return _mm256_add_epi32(acc32, pdot_i32(_mm256_maddubs_epi16(u, s)));
#endif
}

/* 32 int8 x 32 int8 -> 8 int32 partial sums, as floats; w may be any sign */
static inline __m256 dot_i8(__m256i w, __m256i a)
{
    __m256i aw = _mm256_sign_epi8(w, w); /* |w| as unsigned */
    __m256i sa = _mm256_sign_epi8(a, w); /* a with w's sign */
    return _mm256_cvtepi32_ps(dot4_add(_mm256_setzero_si256(), aw, sa));
}

/* 32 uint8 (0..31) x 32 int8 */
static inline __m256 dot_u8(__m256i w, __m256i a)
{
    return _mm256_cvtepi32_ps(dot4_add(_mm256_setzero_si256(), w, a));
}

/* 16 packed bytes -> 32 nibbles: low nibbles first, then high */
static inline __m256i nibbles(const uint8_t *q)
{
    /* the bytes in both halves; the upper half shifted down by 4 bits */
    __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q));
    b = _mm256_srlv_epi32(b, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0f));
}

/* bit j of the 32-bit word at p -> byte j = 0x10 if set, else 0 */
static inline __m256i fifth_bits(const uint8_t *p)
{
    uint32_t x;
    memcpy(&x, p, 4);
    /* byte j takes byte j/8 of x ... */
    const __m256i pick = _mm256_set_epi8(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1,
                                         1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), pick);
    /* ... and tests bit j%8 of it */
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

/* quantizes 32 values into q; returns the scale, and the sum of q in *sum if asked */
static inline float quant_block(const float *x, int8_t *q, int *sum)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4], mx = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    float amax = _mm_cvtss_f32(m);
    float d = amax / 127.0f;
    __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
    __m256i i32[4];
    for (int i = 0; i < 4; i++)
        i32[i] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[i], id),
                                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (sum) {
        __m256i s =
            _mm256_add_epi32(_mm256_add_epi32(i32[0], i32[1]), _mm256_add_epi32(i32[2], i32[3]));
        __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
        h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
        *sum = _mm_cvtsi128_si32(h);
    }
    __m256i p16a = _mm256_packs_epi32(i32[0], i32[1]);
    __m256i p16b = _mm256_packs_epi32(i32[2], i32[3]);
    __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    /* undo the lane interleaving of the packs */
    p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, p8);
    return d;
}

static void quant_q8_0(const float *x, struct blk_q8_0 *y, int64_t k)
{
    for (int64_t b = 0; b < k / QK; b++) {
        int sum;
        y[b].d = f16_round(quant_block(x + b * QK, y[b].qs, &sum));
        y[b].sum = sum;
    }
}

static void quant_q8_1(const float *x, struct blk_q8_1 *y, int64_t k)
{
    for (int64_t b = 0; b < k / QK; b++) {
        int sum;
        float d = quant_block(x + b * QK, y[b].qs, &sum);
        y[b].d = f16_round(d);
        y[b].s = f16_round(d * (float)sum);
    }
}

static float dot_q4_0(const void *w, const struct blk_q8_0 *a, int64_t k)
{
    const uint8_t *p = w;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < k / QK; b++, p += 18) {
        __m256i q = _mm256_sub_epi8(nibbles(p + 2), _mm256_set1_epi8(8));
        __m256i qa = _mm256_loadu_si256((const __m256i *)a[b].qs);
        __m256 d = _mm256_set1_ps(half(rd16(p)) * a[b].d);
        acc = _mm256_fmadd_ps(d, dot_i8(q, qa), acc);
    }
    return hsum8(acc);
}

static float dot_q4_1(const void *w, const struct blk_q8_1 *a, int64_t k)
{
    const uint8_t *p = w;
    __m256 acc = _mm256_setzero_ps();
    float summ = 0.0f;
    for (int64_t b = 0; b < k / QK; b++, p += 20) {
        _mm_prefetch((const char *)p + PF_DIST, _MM_HINT_T0);
        __m256i qa = _mm256_loadu_si256((const __m256i *)a[b].qs);
        __m256 d = _mm256_set1_ps(half(rd16(p)) * a[b].d);
        acc = _mm256_fmadd_ps(d, dot_u8(nibbles(p + 4), qa), acc);
        summ = fmaf(half(rd16(p + 2)), a[b].s, summ);
    }
    return hsum8(acc) + summ;
}

static float dot_q5_0(const void *w, const struct blk_q8_0 *a, int64_t k)
{
    const uint8_t *p = w;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < k / QK; b++, p += 22) {
        __m256i q = _mm256_or_si256(nibbles(p + 6), fifth_bits(p + 2));
        q = _mm256_sub_epi8(q, _mm256_set1_epi8(16));
        __m256i qa = _mm256_loadu_si256((const __m256i *)a[b].qs);
        __m256 d = _mm256_set1_ps(half(rd16(p)) * a[b].d);
        acc = _mm256_fmadd_ps(d, dot_i8(q, qa), acc);
    }
    return hsum8(acc);
}

static float dot_q5_1(const void *w, const struct blk_q8_1 *a, int64_t k)
{
    const uint8_t *p = w;
    __m256 acc = _mm256_setzero_ps();
    float summ = 0.0f;
    for (int64_t b = 0; b < k / QK; b++, p += 24) {
        __m256i q = _mm256_or_si256(nibbles(p + 8), fifth_bits(p + 4));
        __m256i qa = _mm256_loadu_si256((const __m256i *)a[b].qs);
        __m256 d = _mm256_set1_ps(half(rd16(p)) * a[b].d);
        acc = _mm256_fmadd_ps(d, dot_u8(q, qa), acc);
        summ = fmaf(half(rd16(p + 2)), a[b].s, summ);
    }
    return hsum8(acc) + summ;
}

static float dot_q8_0(const void *w, const struct blk_q8_0 *a, int64_t k)
{
    const uint8_t *p = w;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < k / QK; b++, p += 34) {
        _mm_prefetch((const char *)p + PF_DIST, _MM_HINT_T0);
        __m256i q = _mm256_loadu_si256((const __m256i *)(p + 2));
        __m256i qa = _mm256_loadu_si256((const __m256i *)a[b].qs);
        __m256 d = _mm256_set1_ps(half(rd16(p)) * a[b].d);
        acc = _mm256_fmadd_ps(d, dot_i8(q, qa), acc);
    }
    return hsum8(acc);
}

/*
 * hsum8 of each of 8 accumulators, as the lanes
 * [x0 x1 x2 x3 y0 y1 y2 y3]: the same three rounds of adds (v_i + v_i+4,
 * then s_0 + s_2 and s_1 + s_3, then those two), done 8 sums at a time.
 */
static inline __m256 hsum8_2x4(const __m256 *x, const __m256 *y)
{
    __m256 s[4], u[2];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) /* [s(x_j) s(y_j)] */
        s[j] = _mm256_add_ps(_mm256_permute2f128_ps(x[j], y[j], 0x20),
                             _mm256_permute2f128_ps(x[j], y[j], 0x31));
#pragma GCC unroll 2
    for (int j = 0; j < 2; j++) /* per half: [t0 t1 of token 2j, t0 t1 of token 2j+1] */
        u[j] = _mm256_add_ps(_mm256_shuffle_ps(s[2 * j], s[2 * j + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(s[2 * j], s[2 * j + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm256_add_ps(_mm256_shuffle_ps(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm256_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/*
 * Packed weights (kernels.h): 8 rows against nt tokens.  For each block, a
 * 32-byte load holds 4 quants of each row; the 4 matching activation bytes,
 * broadcast, meet them in one pdot_add, giving each row's sums in its own
 * lanes.  Each row's integer dot is summed in those lanes (AVX2 Q4_1: 16-bit,
 * |16 products| <= 16 * 15 * 127 < 2^15; Q8_0 and VNNI: 32-bit) and reaches
 * floats once per block, for all 8 rows at a time.
 */

/*
 * How many packed blocks ahead of its use a kernel asks for (1280 and 1088
 * bytes).  tg128 @ d128, means of alternating runs: no prefetch 119.4, these
 * 134.9, 12 and 8 blocks 131.2, 6 and 3 126.4, 4 and 2 131.4, 2 and 1 127.6
 * (the spread of one run is about 10%).
 */
#define PF_X8_Q4_1 8
#define PF_X8_Q8_0 4

/*
 * Asks for the bytes [p, p + bytes) ahead of their use.  This calls
 * __builtin_prefetch, not _mm_prefetch: with the latter GCC 12 emitted no
 * prefetch instruction at all in the x8 kernels (`objdump -d` of avx2.o
 * showed none), silently, from their first commit until 2026-11-30.
 */
static inline void prefetch_bytes(const void *p, size_t bytes)
{
    for (size_t i = 0; i < bytes; i += 64)
        __builtin_prefetch((const char *)p + i, 0, 3);
}

/* ---- K-quants (kernels.h: llama.cpp's AVX2 arithmetic, lane for lane) ------------ */

/* how far ahead a K-quant row is asked for, in super-blocks */
#define PF_K 2

/* the 4 (Q4_K, Q5_K) min products of a super-block: mins of sub-blocks 2m, 2m+1 */
static inline __m128i k_min_products(const uint8_t *mn, const int16_t *bsums)
{
    __m128i q8s = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)bsums),
                                 _mm_loadu_si128((const __m128i *)(bsums + 8)));
    __m128i m16 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mn));
    return _mm_madd_epi16(m16, q8s);
}

static float dot_q4_K(const void *w, const struct blk_q8_K *a, int64_t k)
{
    const uint8_t *p = w;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256 acc = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int64_t i = 0; i < k / QKK; i++, p += 144) {
        prefetch_bytes(p + PF_K * 144, 144);
        const int8_t *q8 = a[i].qs;
        uint8_t sc[8], mn[8];
        k4_unpack(p + 4, sc, mn);
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i bits = _mm256_loadu_si256((const __m256i *)(p + 16 + 32 * j));
            __m256i lo = _mm256_and_si256(bits, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            __m256i pl = _mm256_madd_epi16(
                _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(q8 + 64 * j))),
                _mm256_set1_epi16(sc[2 * j]));
            __m256i ph = _mm256_madd_epi16(
                _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 64 * j + 32))),
                _mm256_set1_epi16(sc[2 * j + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc =
            _mm256_fmadd_ps(_mm256_set1_ps(a[i].d * half(rd16(p))), _mm256_cvtepi32_ps(sumi), acc);
        __m128i prod = k_min_products(mn, a[i].bsums);
        accm = _mm_fmadd_ps(_mm_set1_ps(-a[i].d * half(rd16(p + 2))), _mm_cvtepi32_ps(prod), accm);
    }
    accm = _mm_add_ps(accm, _mm_movehl_ps(accm, accm));
    accm = _mm_add_ss(accm, _mm_movehdup_ps(accm));
    return hsum8(acc) + _mm_cvtss_f32(accm);
}

static float dot_q5_K(const void *w, const struct blk_q8_K *a, int64_t k)
{
    const uint8_t *p = w;
    const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int64_t i = 0; i < k / QKK; i++, p += 176) {
        prefetch_bytes(p + PF_K * 176, 176);
        const int8_t *q8 = a[i].qs;
        uint8_t sc[8], mn[8];
        k4_unpack(p + 4, sc, mn);
        __m256i hbits = _mm256_loadu_si256((const __m256i *)(p + 16));
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i bits = _mm256_loadu_si256((const __m256i *)(p + 48 + 32 * j));
            __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j), one);
            __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j + 1), one);
            __m256i lo = _mm256_or_si256(_mm256_and_si256(bits, m4), _mm256_slli_epi16(h0, 4));
            __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4),
                                         _mm256_slli_epi16(h1, 4));
            __m256i pl = _mm256_madd_epi16(
                _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(q8 + 64 * j))),
                _mm256_set1_epi16(sc[2 * j]));
            __m256i ph = _mm256_madd_epi16(
                _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 64 * j + 32))),
                _mm256_set1_epi16(sc[2 * j + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc =
            _mm256_fmadd_ps(_mm256_set1_ps(a[i].d * half(rd16(p))), _mm256_cvtepi32_ps(sumi), acc);
        __m128i prod = k_min_products(mn, a[i].bsums);
        prod = _mm_hadd_epi32(_mm_hadd_epi32(prod, _mm_setzero_si128()), _mm_setzero_si128());
        summs = fmaf(-a[i].d * half(rd16(p + 2)), (float)_mm_cvtsi128_si32(prod), summs);
    }
    return hsum8(acc) + summs;
}

static float dot_q6_K(const void *w, const struct blk_q8_K *a, int64_t k)
{
    const uint8_t *p = w;
    const __m256i m4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3), m32 = _mm256_set1_epi8(32);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < k / QKK; i++, p += 210) {
        prefetch_bytes(p + PF_K * 210, 210);
        const int8_t *q8 = a[i].qs, *sc = (const int8_t *)(p + 192);
        __m256i sumi = _mm256_setzero_si256();
        for (int n = 0; n < 2; n++) {
            __m256i qa = _mm256_loadu_si256((const __m256i *)(p + 64 * n));
            __m256i qb = _mm256_loadu_si256((const __m256i *)(p + 64 * n + 32));
            __m256i qh = _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * n));
            __m256i q[4];
            q[0] = _mm256_and_si256(qa, m4);
            q[1] = _mm256_and_si256(qb, m4);
            q[2] = _mm256_and_si256(_mm256_srli_epi16(qa, 4), m4);
            q[3] = _mm256_and_si256(_mm256_srli_epi16(qb, 4), m4);
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                __m256i h = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), m3);
                __m256i v = _mm256_or_si256(q[c], _mm256_slli_epi16(h, 4));
                __m256i a8 = _mm256_loadu_si256((const __m256i *)(q8 + 128 * n + 32 * c));
                __m256i p16 =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(v, a8), _mm256_maddubs_epi16(m32, a8));
                int sub = 8 * n + 2 * c;
                __m256i s16 =
                    _mm256_set_m128i(_mm_set1_epi16(sc[sub + 1]), _mm_set1_epi16(sc[sub]));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s16, p16));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(a[i].d * half(rd16(p + 208))),
                              _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum8(acc);
}

/*
 * An empty asm that claims to change v: GCC must finish v's sum so far
 * before going on, instead of reassociating a block's integer sums into a
 * tree that keeps every product live.  With 4 tokens that tree needed more
 * than 16 registers: the Q4_1 kernel's loop had 28 stack moves a block.
 */
static inline void keep_order(__m256i *v)
{
    __asm__("" : "+x"(*v));
}

static inline __m256i bcast4(const int8_t *q)
{
    int32_t v;
    memcpy(&v, q, 4);
    return _mm256_set1_epi32(v);
}

/* stores the 8 rows' results of token t, or the first nr of them */
static inline void store_rows(float *y, __m256 v, int nr)
{
    if (nr == 8) {
        _mm256_storeu_ps(y, v);
        return;
    }
    float tmp[8];
    _mm256_storeu_ps(tmp, v);
    memcpy(y, tmp, sizeof(float) * (size_t)nr);
}

static inline __attribute__((always_inline)) void q4_1x8(const struct blk_q4_1x8 *w,
                                                         const struct blk_q8_1 *a, int64_t nb,
                                                         const int nt, float *y, int64_t ldy,
                                                         int nr)
{
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256 acc[4];
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++)
        acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w++) {
        prefetch_bytes(w + PF_X8_Q4_1, sizeof(*w));
        __m256i s16[4];
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++)
            s16[t] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)w->qs[c]);
            __m256i lo = _mm256_and_si256(q, low);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++) {
                const int8_t *qa = a[t * nb + b].qs;
                s16[t] = pdot_add2(s16[t], lo, bcast4(qa + 4 * c), hi, bcast4(qa + 16 + 4 * c));
                keep_order(&s16[t]);
            }
        }
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w->d));
        __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w->m));
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const struct blk_q8_1 *ab = &a[t * nb + b];
            __m256 isum = _mm256_cvtepi32_ps(pdot_i32(s16[t]));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_broadcast_ss(&ab->d)), isum, acc[t]);
            acc[t] = _mm256_fmadd_ps(mw, _mm256_broadcast_ss(&ab->s), acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++)
        store_rows(y + t * ldy, acc[t], nr);
}

static inline __attribute__((always_inline)) void q8_0x8(const struct blk_q8_0x8 *w,
                                                         const struct blk_q8_0 *a, int64_t nb,
                                                         const int nt, float *y, int64_t ldy,
                                                         int nr)
{
    __m256 acc[4];
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++)
        acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w++) {
        prefetch_bytes(w + PF_X8_Q8_0, sizeof(*w));
        __m256i s32[4];
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++)
            s32[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) {
            /* maddubs takes one unsigned operand: |w|, and a with w's sign */
            __m256i q = _mm256_loadu_si256((const __m256i *)w->qs[c]);
            __m256i u = _mm256_sign_epi8(q, q);
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++) {
                __m256i sa = _mm256_sign_epi8(bcast4(a[t * nb + b].qs + 4 * c), q);
                s32[t] = dot4_add(s32[t], u, sa);
                keep_order(&s32[t]);
            }
        }
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w->d));
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            __m256 d = _mm256_mul_ps(dw, _mm256_broadcast_ss(&a[t * nb + b].d));
            acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s32[t]), acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++)
        store_rows(y + t * ldy, acc[t], nr);
}

/*
 * Q4_0 and Q5_0: the unsigned quants (0..15, 0..31) meet the activations in
 * maddubs, and the offset comes off once a block: isum = sum q a - 8 (16)
 * sum a, with sum a the activation block's exact sum.  Pair sums stay in
 * 16-bit lanes, one sum for the low and one for the high nibbles
 * (8 * 31 * 127 < 2^15).  Q5_0's fifth bit of piece c is bit c (low) or
 * 4 + c (high) of each byte, moved to bit 4.  One body for both: w's blocks
 * of wsz bytes, d[8] first, (Q5_0: qh[8][4] next,) the quants at qs_off.
 */
static inline __attribute__((always_inline)) void
q45_0x8(const uint8_t *w, size_t wsz, size_t qs_off, const int five, const struct blk_q8_0 *a,
        int64_t nb, const int nt, float *y, int64_t ldy, int nr)
{
    const __m256i low = _mm256_set1_epi8(0x0f);
    const int off = five ? 16 : 8;
    __m256 acc[4];
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++)
        acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += wsz) {
        prefetch_bytes(w + PF_X8_Q4_1 * wsz, wsz);
        __m256i qh = five ? _mm256_loadu_si256((const __m256i *)(w + 16)) : _mm256_setzero_si256();
        __m256i slo[4], shi[4];
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++)
            slo[t] = shi[t] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(w + qs_off + 32 * c));
            __m256i lo = _mm256_and_si256(q, low);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
            if (five) {
                lo = _mm256_or_si256(
                    lo, _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8((char)(1 << c))),
                                          4 - c));
                hi = _mm256_or_si256(
                    hi, _mm256_srli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8((char)(0x10 << c))),
                                          c));
            }
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++) {
                const int8_t *qa = a[t * nb + b].qs;
                slo[t] = pdot_add(slo[t], lo, bcast4(qa + 4 * c));
                shi[t] = pdot_add(shi[t], hi, bcast4(qa + 16 + 4 * c));
            }
        }
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w));
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const struct blk_q8_0 *ab = &a[t * nb + b];
            __m256i isum = _mm256_add_epi32(pdot_i32(slo[t]), pdot_i32(shi[t]));
            isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(off * ab->sum));
            __m256 d = _mm256_mul_ps(dw, _mm256_broadcast_ss(&ab->d));
            acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++)
        store_rows(y + t * ldy, acc[t], nr);
}

static inline __attribute__((always_inline)) void q4_0x8(const struct blk_q4_0x8 *w,
                                                         const struct blk_q8_0 *a, int64_t nb,
                                                         const int nt, float *y, int64_t ldy,
                                                         int nr)
{
    q45_0x8((const uint8_t *)w, sizeof(*w), offsetof(struct blk_q4_0x8, qs), 0, a, nb, nt, y, ldy,
            nr);
}

static inline __attribute__((always_inline)) void q5_0x8(const struct blk_q5_0x8 *w,
                                                         const struct blk_q8_0 *a, int64_t nb,
                                                         const int nt, float *y, int64_t ldy,
                                                         int nr)
{
    q45_0x8((const uint8_t *)w, sizeof(*w), offsetof(struct blk_q5_0x8, qs), 1, a, nb, nt, y, ldy,
            nr);
}

/*
 * Packed K-quants (kernels.h), 8 rows against nt tokens.  A piece's 8 x 4
 * bytes meet the 4 matching activation bytes, broadcast; the pair sums of a
 * sub-block stay in 16-bit lanes as long as they cannot overflow (Q4_K: 8
 * pieces, 8 * 2 * 15 * 127 < 2^15; Q6_K: 2, 2 * 2 * 63 * 127 < 2^15), then
 * go to 32 bits, times the 8 rows' scales.
 */
static inline __attribute__((always_inline)) void q4_Kx8(const struct blk_q4_Kx8 *w,
                                                         const struct blk_q8_K *a, int64_t nb,
                                                         const int nt, float *y, int64_t ldy,
                                                         int nr)
{
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256 acc[4];
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++)
        acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w++) {
        prefetch_bytes(w + 1, sizeof(*w));
        __m256i isum[4];
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++)
            isum[t] = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i slo[4], shi[4];
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++)
                slo[t] = shi[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int p = 0; p < 8; p++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)w->qs[8 * j + p]);
                __m256i lo = _mm256_and_si256(q, low);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
#pragma GCC unroll 4
                for (int t = 0; t < nt; t++) {
                    const int8_t *qa = a[t * nb + b].qs + 64 * j + 4 * p;
                    slo[t] = pdot_add(slo[t], lo, bcast4(qa));
                    shi[t] = pdot_add(shi[t], hi, bcast4(qa + 32));
                }
            }
            __m256i sl = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)w->sc[2 * j]));
            __m256i sh = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)w->sc[2 * j + 1]));
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++)
                isum[t] = _mm256_add_epi32(
                    isum[t], _mm256_add_epi32(_mm256_mullo_epi32(pdot_i32(slo[t]), sl),
                                              _mm256_mullo_epi32(pdot_i32(shi[t]), sh)));
        }
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w->d));
        __m256 dm = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w->dmin));
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            const struct blk_q8_K *ab = &a[t * nb + b];
            __m256i msum = _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int pr = 0; pr < 4; pr++) {
                __m256i m16 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)w->mn[pr]));
                int32_t s0 = ab->bsums[4 * pr] + ab->bsums[4 * pr + 1],
                        s1 = ab->bsums[4 * pr + 2] + ab->bsums[4 * pr + 3];
                __m256i bs = _mm256_set1_epi32((int32_t)(((uint32_t)s1 << 16) | (uint16_t)s0));
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(m16, bs));
            }
            __m256 da = _mm256_broadcast_ss(&ab->d);
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(isum[t]), acc[t]);
            __m256 nm = _mm256_xor_ps(_mm256_mul_ps(dm, da), _mm256_set1_ps(-0.0f));
            acc[t] = _mm256_fmadd_ps(nm, _mm256_cvtepi32_ps(msum), acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++)
        store_rows(y + t * ldy, acc[t], nr);
}

static inline __attribute__((always_inline)) void q6_Kx8(const struct blk_q6_Kx8 *w,
                                                         const struct blk_q8_K *a, int64_t nb,
                                                         const int nt, float *y, int64_t ldy,
                                                         int nr)
{
    const __m256i low = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3);
    __m256 acc[4];
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++)
        acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w++) {
        prefetch_bytes(w + 1, sizeof(*w));
        __m256i isum[4];
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++)
            isum[t] = _mm256_setzero_si256();
        for (int g = 0; g < 8; g++) {
            __m256i slo[4], shi[4];
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++)
                slo[t] = shi[t] = _mm256_setzero_si256();
#pragma GCC unroll 2
            for (int cp = 0; cp < 2; cp++) {
                __m256i hb = _mm256_loadu_si256((const __m256i *)w->qh[2 * g + cp]);
                __m256i plo[4], phi[4];
#pragma GCC unroll 4
                for (int t = 0; t < 4; t++)
                    plo[t] = phi[t] = _mm256_setzero_si256();
#pragma GCC unroll 2
                for (int k = 0; k < 2; k++) {
                    int c = 2 * cp + k;
                    __m256i ql = _mm256_loadu_si256((const __m256i *)w->ql[4 * g + c]);
                    __m256i hl =
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4 * k), m3), 4);
                    __m256i hh = _mm256_slli_epi16(
                        _mm256_and_si256(_mm256_srli_epi16(hb, 4 * k + 2), m3), 4);
                    __m256i qlo = _mm256_or_si256(_mm256_and_si256(ql, low), hl);
                    __m256i qhi =
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql, 4), low), hh);
#pragma GCC unroll 4
                    for (int t = 0; t < nt; t++) {
                        const int8_t *qa = a[t * nb + b].qs + 32 * g + 4 * c;
                        plo[t] = pdot_add(plo[t], qlo, bcast4(qa));
                        phi[t] = pdot_add(phi[t], qhi, bcast4(qa + 16));
                    }
                }
#pragma GCC unroll 4
                for (int t = 0; t < nt; t++) {
                    slo[t] = _mm256_add_epi32(slo[t], pdot_i32(plo[t]));
                    shi[t] = _mm256_add_epi32(shi[t], pdot_i32(phi[t]));
                }
            }
            __m256i sl = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)w->sc[2 * g]));
            __m256i sh = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)w->sc[2 * g + 1]));
#pragma GCC unroll 4
            for (int t = 0; t < nt; t++) {
                const int16_t *bs = a[t * nb + b].bsums;
                __m256i lo = _mm256_sub_epi32(slo[t], _mm256_set1_epi32(32 * bs[2 * g]));
                __m256i hi = _mm256_sub_epi32(shi[t], _mm256_set1_epi32(32 * bs[2 * g + 1]));
                isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(_mm256_mullo_epi32(lo, sl),
                                                                     _mm256_mullo_epi32(hi, sh)));
            }
        }
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w->d));
#pragma GCC unroll 4
        for (int t = 0; t < nt; t++) {
            __m256 d = _mm256_mul_ps(dw, _mm256_broadcast_ss(&a[t * nb + b].d));
            acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum[t]), acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < nt; t++)
        store_rows(y + t * ldy, acc[t], nr);
}

/* one kernel body per token count, so its token loops unroll */
#define GEMM_X8(name, kern, wblk, ablk, bk)                                                        \
    static void name(const struct wblk *w, int64_t n_rows, const struct ablk *a, int64_t k,        \
                     float *y, int64_t ldy, int nt)                                                \
    {                                                                                              \
        int64_t nb = k / (bk);                                                                     \
        for (int64_t r = 0; r < n_rows; r += 8, w += nb) {                                         \
            int nr = n_rows - r < 8 ? (int)(n_rows - r) : 8;                                       \
            switch (nt) {                                                                          \
            case 1:                                                                                \
                kern(w, a, nb, 1, y + r, ldy, nr);                                                 \
                break;                                                                             \
            case 2:                                                                                \
                kern(w, a, nb, 2, y + r, ldy, nr);                                                 \
                break;                                                                             \
            case 3:                                                                                \
                kern(w, a, nb, 3, y + r, ldy, nr);                                                 \
                break;                                                                             \
            default:                                                                               \
                kern(w, a, nb, 4, y + r, ldy, nr);                                                 \
                break;                                                                             \
            }                                                                                      \
        }                                                                                          \
    }

GEMM_X8(gemm_q4_1x8, q4_1x8, blk_q4_1x8, blk_q8_1, QK)
GEMM_X8(gemm_q8_0x8, q8_0x8, blk_q8_0x8, blk_q8_0, QK)
GEMM_X8(gemm_q4_0x8, q4_0x8, blk_q4_0x8, blk_q8_0, QK)
GEMM_X8(gemm_q5_0x8, q5_0x8, blk_q5_0x8, blk_q8_0, QK)
GEMM_X8(gemm_q4_Kx8, q4_Kx8, blk_q4_Kx8, blk_q8_K, QKK)
GEMM_X8(gemm_q6_Kx8, q6_Kx8, blk_q6_Kx8, blk_q8_K, QKK)

static float dot_f32(const float *a, const float *b, int64_t k)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    float s = hsum8(_mm256_add_ps(acc0, acc1));
    for (; i < k; i++)
        s = fmaf(a[i], b[i], s);
    return s;
}

/* Walks a sequence's positions p, p + step, ... through its block table. */
struct paged {
    const uint16_t *base;
    const int32_t *blocks;
    int bs, bi, off, step;
    size_t row;
};

static inline void paged_at(struct paged *w, int p)
{
    w->bi = p / w->bs;
    w->off = p % w->bs;
}

static inline const uint16_t *paged_next(struct paged *w)
{
    const uint16_t *r = w->base + ((size_t)w->blocks[w->bi] * w->bs + (size_t)w->off) * w->row;
    w->off += w->step;
    while (w->off >= w->bs) {
        w->off -= w->bs;
        w->bi++;
    }
    return r;
}

static inline __m256 ld_f16(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* lane 0: the 32-lane sum of a[0..3]: (a0 + a2) + (a1 + a3), lo + hi, two hadds */
static inline float sum32_4(const __m256 *a)
{
    __m256 x = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    t = _mm_hadd_ps(t, t);
    return _mm_cvtss_f32(_mm_hadd_ps(t, t));
}

/* K rows are asked for this many positions ahead of their use */
#define PF_K_AHEAD 16

/*
 * The 8-lane order: R rows of K at a time against NQ queries, one
 * accumulator per (query, row), summed as hsum8 does.  Rows past n repeat
 * the last row and are not stored.  R * NQ <= 12 keeps them in registers.
 * The rows of K PF_K_AHEAD positions on, and of V (if given) at the same
 * positions, are asked for meanwhile: a sequence's rows are scattered over
 * its blocks, and the V pass reads them in strides that the hardware does
 * not prefetch.
 */
static inline __attribute__((always_inline)) void
scores8(const int R, const int NQ, const float *q, size_t q_stride, const uint16_t *k,
        const uint16_t *v, const int32_t *blocks, int bs, size_t row, int n, int d, float scale,
        float *out, size_t out_stride)
{
    struct paged wk = {k, blocks, bs, 0, 0, 1, row}, *w = &wk; /* local: kept in registers */
    struct paged pk = {k, blocks, bs, 0, 0, 1, row}, pv = {v, blocks, bs, 0, 0, 1, row};
    const __m256 vs = _mm256_set1_ps(scale);
    for (int p = 0; p < PF_K_AHEAD && p < n; p++)
        prefetch_bytes(paged_next(&pk), 2 * (size_t)d);
    for (int p0 = 0; p0 < n; p0 += R) {
        const uint16_t *kr[8];
        __m256 acc[3][8];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            if (p0 + PF_K_AHEAD + r < n)
                prefetch_bytes(paged_next(&pk), 2 * (size_t)d);
            if (v && p0 + r < n)
                prefetch_bytes(paged_next(&pv), 2 * (size_t)d);
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            kr[r] = p0 + r < n ? paged_next(w) : kr[r - 1];
#pragma GCC unroll 8
        for (int h = 0; h < NQ; h++)
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                acc[h][r] = _mm256_setzero_ps();
        for (int c = 0; c < d / 8; c++) {
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                __m256 kv = ld_f16(kr[r] + 8 * c);
#pragma GCC unroll 8
                for (int h = 0; h < NQ; h++)
                    acc[h][r] =
                        _mm256_fmadd_ps(_mm256_loadu_ps(q + h * q_stride + 8 * c), kv, acc[h][r]);
            }
        }
        /* hsum8_2x4 sums two sets of 4: rows 0-3 and 4-7 of one head (R = 8),
         * or rows 0-3 of heads h and h + 1 (R = 4) */
        int m = n - p0 < R ? n - p0 : R;
#pragma GCC unroll 8
        for (int h = 0; h < NQ; h += R == 8 ? 1 : 2) {
            int pair = R != 8 && h + 1 < NQ;
            const __m256 *hi = R == 8 ? acc[h] + 4 : acc[pair ? h + 1 : h];
            float res[8];
            _mm256_storeu_ps(res, _mm256_mul_ps(hsum8_2x4(acc[h], hi), vs));
            memcpy(out + h * out_stride + p0, res, sizeof(float) * (size_t)m);
            if (pair)
                memcpy(out + (h + 1) * out_stride + p0, res + 4, sizeof(float) * (size_t)m);
        }
    }
}

/* The 32-lane order: R rows against NQ queries, four accumulators each. */
static inline __attribute__((always_inline)) void
scores32(const int R, const int NQ, const float *q, size_t q_stride, const uint16_t *k,
         const int32_t *blocks, int bs, size_t row, int n, int d, float scale, float *out,
         size_t out_stride)
{
    struct paged wk = {k, blocks, bs, 0, 0, 1, row}, *w = &wk; /* local: kept in registers */
    int nc = d / 8;
    for (int p0 = 0; p0 < n; p0 += R) {
        const uint16_t *kr[2];
        __m256 acc[3][2][4];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            kr[r] = p0 + r < n ? paged_next(w) : kr[r - 1];
#pragma GCC unroll 8
        for (int h = 0; h < NQ; h++)
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
#pragma GCC unroll 8
                for (int j = 0; j < 4; j++)
                    acc[h][r][j] = _mm256_setzero_ps();
        int c = 0;
        for (; c + 4 <= nc; c += 4)
#pragma GCC unroll 8
            for (int j = 0; j < 4; j++)
#pragma GCC unroll 8
                for (int r = 0; r < R; r++) {
                    __m256 kv = ld_f16(kr[r] + 8 * (c + j));
#pragma GCC unroll 8
                    for (int h = 0; h < NQ; h++)
                        acc[h][r][j] = _mm256_fmadd_ps(
                            _mm256_loadu_ps(q + h * q_stride + 8 * (c + j)), kv, acc[h][r][j]);
                }
#pragma GCC unroll 8
        for (int j = 0; j < 3; j++) { /* the last chunks: chunk c + j to accumulator j */
            if (c + j >= nc)
                break;
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                __m256 kv = ld_f16(kr[r] + 8 * (c + j));
#pragma GCC unroll 8
                for (int h = 0; h < NQ; h++)
                    acc[h][r][j] = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * q_stride + 8 * (c + j)),
                                                   kv, acc[h][r][j]);
            }
        }
#pragma GCC unroll 8
        for (int h = 0; h < NQ; h++)
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                if (p0 + r < n)
                    out[h * out_stride + p0 + r] = sum32_4(acc[h][r]) * scale;
    }
}

static void scores_f16(const float *q, size_t q_stride, int nq, const uint16_t *k,
                       const uint16_t *v, const int32_t *blocks, int bs, size_t row, int n, int d,
                       int n_lanes, float scale, float *out, size_t out_stride)
{
    if (n_lanes == 8) {
        if (nq == 1)
            scores8(8, 1, q, q_stride, k, v, blocks, bs, row, n, d, scale, out, out_stride);
        else if (nq == 2)
            scores8(4, 2, q, q_stride, k, v, blocks, bs, row, n, d, scale, out, out_stride);
        else
            scores8(4, 3, q, q_stride, k, v, blocks, bs, row, n, d, scale, out, out_stride);
    } else {
        if (nq == 1)
            scores32(2, 1, q, q_stride, k, blocks, bs, row, n, d, scale, out, out_stride);
        else if (nq == 2)
            scores32(1, 2, q, q_stride, k, blocks, bs, row, n, d, scale, out, out_stride);
        else
            scores32(1, 3, q, q_stride, k, blocks, bs, row, n, d, scale, out, out_stride);
    }
}

/*
 * The V pass lane by lane: lane l's positions l, l + n_lanes, ... in order,
 * C * 8 values of each of the NQ heads in registers (C * NQ <= 12), so each
 * lane row is written once and each V row converted once for all heads.
 */
static inline __attribute__((always_inline)) void
accum_v_n(const int C, const int NQ, float *acc, size_t acc_stride, const float *p, size_t p_stride,
          const uint16_t *v, const int32_t *blocks, int bs, size_t row, int n, int d, int n_lanes)
{
    const int W = 8 * C;
    for (int l = 0; l < n_lanes; l++) {
        for (int s0 = 0; s0 < d; s0 += W) {
            struct paged w = {v + s0, blocks, bs, 0, 0, n_lanes, row};
            if (d - s0 >= W) {
                __m256 x[3][8];
#pragma GCC unroll 8
                for (int h = 0; h < NQ; h++)
#pragma GCC unroll 8
                    for (int c = 0; c < C; c++)
                        x[h][c] = _mm256_setzero_ps();
                if (l < n)
                    paged_at(&w, l);
                for (int r = l; r < n; r += n_lanes) {
                    const uint16_t *vr = paged_next(&w);
                    __m256 pr[3];
#pragma GCC unroll 8
                    for (int h = 0; h < NQ; h++)
                        pr[h] = _mm256_broadcast_ss(p + h * p_stride + r);
#pragma GCC unroll 8
                    for (int c = 0; c < C; c++) {
                        __m256 vv = ld_f16(vr + 8 * c);
#pragma GCC unroll 8
                        for (int h = 0; h < NQ; h++)
                            x[h][c] = _mm256_fmadd_ps(pr[h], vv, x[h][c]);
                    }
                }
#pragma GCC unroll 8
                for (int h = 0; h < NQ; h++)
#pragma GCC unroll 8
                    for (int c = 0; c < C; c++)
                        _mm256_storeu_ps(acc + h * acc_stride + (size_t)l * d + s0 + 8 * c,
                                         x[h][c]);
                continue;
            }
#pragma GCC unroll 8
            for (int h = 0; h < NQ; h++) /* a last slice under W values */
                for (int c = 0; c < (d - s0) / 8; c++) {
                    __m256 x = _mm256_setzero_ps();
                    if (l < n)
                        paged_at(&w, l);
                    for (int r = l; r < n; r += n_lanes)
                        x = _mm256_fmadd_ps(_mm256_set1_ps(p[h * p_stride + r]),
                                            ld_f16(paged_next(&w) + 8 * c), x);
                    _mm256_storeu_ps(acc + h * acc_stride + (size_t)l * d + s0 + 8 * c, x);
                }
        }
    }
}

static void accum_v_f16(float *acc, size_t acc_stride, const float *p, size_t p_stride, int nq,
                        const uint16_t *v, const int32_t *blocks, int bs, size_t row, int n, int d,
                        int n_lanes)
{
    if (nq == 1)
        accum_v_n(8, 1, acc, acc_stride, p, p_stride, v, blocks, bs, row, n, d, n_lanes);
    else if (nq == 2)
        accum_v_n(4, 2, acc, acc_stride, p, p_stride, v, blocks, bs, row, n, d, n_lanes);
    else
        accum_v_n(4, 3, acc, acc_stride, p, p_stride, v, blocks, bs, row, n, d, n_lanes);
}

static void reduce_lanes(const float *acc, int d, int n_lanes, float *out)
{
    int i = 0;
    for (; i + 8 <= d; i += 8) {
        /* lane j of dims i..i+7 is acc[j * d + i ...]: add lanes as the dots do */
        __m256 l[32];
        for (int j = 0; j < n_lanes; j++)
            l[j] = _mm256_loadu_ps(acc + (size_t)j * d + i);
        __m256 r;
        if (n_lanes == 8) {
            __m256 s0 = _mm256_add_ps(l[0], l[4]), s1 = _mm256_add_ps(l[1], l[5]);
            __m256 s2 = _mm256_add_ps(l[2], l[6]), s3 = _mm256_add_ps(l[3], l[7]);
            r = _mm256_add_ps(_mm256_add_ps(s0, s2), _mm256_add_ps(s1, s3));
        } else {
            __m256 x[8], t[4];
            for (int k = 0; k < 8; k++)
                x[k] = _mm256_add_ps(_mm256_add_ps(l[k], l[16 + k]),
                                     _mm256_add_ps(l[8 + k], l[24 + k]));
            for (int k = 0; k < 4; k++)
                t[k] = _mm256_add_ps(x[k], x[k + 4]);
            r = _mm256_add_ps(_mm256_add_ps(t[0], t[1]), _mm256_add_ps(t[2], t[3]));
        }
        _mm256_storeu_ps(out + i, r);
    }
    for (; i < d; i++) {
        float l[32];
        for (int j = 0; j < n_lanes; j++)
            l[j] = acc[(size_t)j * d + i];
        if (n_lanes == 8) {
            float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
            out[i] = (s0 + s2) + (s1 + s3);
        } else {
            float x[8], t[4];
            for (int k = 0; k < 8; k++)
                x[k] = (l[k] + l[16 + k]) + (l[8 + k] + l[24 + k]);
            for (int k = 0; k < 4; k++)
                t[k] = x[k] + x[k + 4];
            out[i] = (t[0] + t[1]) + (t[2] + t[3]);
        }
    }
}

/* e^x, 8 at a time: the algorithm of exp_poly() in scalar.c */
static inline __m256 exp8(__m256 x)
{
    const __m256 shifter = _mm256_set1_ps(0x1.8p23f);
    __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), shifter);
    __m256 n = _mm256_sub_ps(z, shifter);
    __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0f))));
    __m256 u = _mm256_mul_ps(b, b);
    __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)), u,
            _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
    __m256 absn = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), n);
    __m256 big = _mm256_cmp_ps(absn, _mm256_set1_ps(126.0f), _CMP_GT_OQ);
    __m256 normal = _mm256_fmadd_ps(j, k, k);
    if (!_mm256_movemask_ps(big))
        return normal;
    __m256i g =
        _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                         _mm256_set1_epi32((int)0x82000000u));
    __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
    __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    __m256 huge = _mm256_cmp_ps(absn, _mm256_set1_ps(192.0f), _CMP_GT_OQ);
    __m256 scaled = _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1);
    __m256 r = _mm256_blendv_ps(normal, scaled, big);
    return _mm256_blendv_ps(r, _mm256_mul_ps(s1, s1), huge);
}

static double exp_sum(const float *x, float max, float *y, int n)
{
    double sum = 0.0;
    __m256 mx = _mm256_set1_ps(max);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mx));
        _mm256_storeu_ps(y + i, v);
        sum += (double)hsum8(v);
    }
    for (; i < n; i += 8) { /* the last n % 8, padded as above */
        float in[8], out[8];
        int m = n - i < 8 ? n - i : 8;
        for (int l = 0; l < 8; l++)
            in[l] = l < m ? x[i + l] : -INFINITY; /* past n: e^-inf = 0 */
        __m256 v = exp8(_mm256_sub_ps(_mm256_loadu_ps(in), mx));
        _mm256_storeu_ps(out, v);
        memcpy(y + i, out, (size_t)m * sizeof(float));
        sum += (double)hsum8(v);
    }
    return sum;
}

static void silu_mul(const float *gate, const float *up, int n, float *out)
{
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 s = _mm256_div_ps(
            g, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++)
        out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

static void scale_round_f16(float *x, float s, int n)
{
    int i = 0;
    __m256 vs = _mm256_set1_ps(s);
    for (; i + 8 <= n; i += 8) {
        __m128i h =
            _mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), _MM_FROUND_TO_NEAREST_INT);
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++)
        x[i] = qt_f16_to_f32(qt_f32_to_f16(x[i] * s));
}

static void to_f16(const float *x, uint16_t *y, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        y[i] = qt_f32_to_f16(x[i]);
}

#define KERNELS_TABLE(n) KERNELS_TABLE_(n)
#define KERNELS_TABLE_(n) cpu_kernels_##n
#define KERNELS_STR(n) KERNELS_STR_(n)
#define KERNELS_STR_(n) #n

const struct cpu_kernels KERNELS_TABLE(CPU_KERNELS_NAME) = {
    .name = KERNELS_STR(CPU_KERNELS_NAME),
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

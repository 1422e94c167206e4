/*
 * util/quant.c - GGML tensor types: block geometry and scalar dequantization.
 *
 * One table says how many elements and bytes a block of each GGUF type has;
 * the dequantizers turn blocks of the common types back into f32, bit for
 * bit what ggml's reference dequantize_row_* produce.  They are the
 * reference the device kernels are checked against, written for clarity and
 * not for speed: no SIMD, no threads, no allocation, no matrix math.  Bytes
 * are read as little-endian (as GGUF stores them) whatever the host is.
 * Types without a dequantizer here (Q8_1, Q2_K, Q3_K, Q8_K, the integer
 * types, F64) still have their geometry so that the loader can size them.
 */
#include "util/quant.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#define QK 32    /* elements per block of the legacy quants (Q4_0 .. Q8_1) */
#define QK_K 256 /* elements per super-block of the K-quants */

/* one row a line, indexed by type id; ids with no row are unknown */
/* clang-format off */
static const struct qt_info qt_table[] = {
    [QT_F32] = {"F32", 1, 4, 1},
    [QT_F16] = {"F16", 1, 2, 1},
    [QT_Q4_0] = {"Q4_0", QK, 18, 1},
    [QT_Q4_1] = {"Q4_1", QK, 20, 1},
    [QT_Q5_0] = {"Q5_0", QK, 22, 1},
    [QT_Q5_1] = {"Q5_1", QK, 24, 1},
    [QT_Q8_0] = {"Q8_0", QK, 34, 1},
    [QT_Q8_1] = {"Q8_1", QK, 36, 0},
    [QT_Q2_K] = {"Q2_K", QK_K, 84, 0},
    [QT_Q3_K] = {"Q3_K", QK_K, 110, 0},
    [QT_Q4_K] = {"Q4_K", QK_K, 144, 1},
    [QT_Q5_K] = {"Q5_K", QK_K, 176, 1},
    [QT_Q6_K] = {"Q6_K", QK_K, 210, 1},
    [QT_Q8_K] = {"Q8_K", QK_K, 292, 0},
    [QT_I8] = {"I8", 1, 1, 0},
    [QT_I16] = {"I16", 1, 2, 0},
    [QT_I32] = {"I32", 1, 4, 0},
    [QT_I64] = {"I64", 1, 8, 0},
    [QT_F64] = {"F64", 1, 8, 0},
    [QT_BF16] = {"BF16", 1, 2, 1},
};
/* clang-format on */

/*
 * Block layouts, byte for byte as ggml lays them out.  Multi-byte fields are
 * kept as little-endian byte pairs and decoded with rd_le16(), so the structs
 * have no padding and no alignment of their own; each block is memcpy'd out
 * of the (possibly unaligned) source before it is read.
 */
struct blk_q4_0 {
    uint8_t d[2];       /* f16 scale */
    uint8_t qs[QK / 2]; /* nibbles: low = elements 0..15, high = 16..31 */
};

struct blk_q4_1 {
    uint8_t d[2], m[2]; /* f16 scale and min */
    uint8_t qs[QK / 2];
};

struct blk_q5_0 {
    uint8_t d[2];
    uint8_t qh[4]; /* little-endian u32: bit j is the 5th bit of element j */
    uint8_t qs[QK / 2];
};

struct blk_q5_1 {
    uint8_t d[2], m[2];
    uint8_t qh[4];
    uint8_t qs[QK / 2];
};

struct blk_q8_0 {
    uint8_t d[2];
    int8_t qs[QK];
};

struct blk_q4_k {
    uint8_t d[2], dmin[2]; /* f16 super-block scales for the scales and the mins */
    uint8_t scales[12];    /* 8 x (6-bit scale, 6-bit min), see scale_min_k4() */
    uint8_t qs[QK_K / 2];  /* 32-byte chunks: low nibbles = sub-block 2c, high = 2c+1 */
};

struct blk_q5_k {
    uint8_t d[2], dmin[2];
    uint8_t scales[12];
    uint8_t qh[QK_K / 8]; /* bit j of qh[l] is the 5th bit of element 32*j + l */
    uint8_t qs[QK_K / 2];
};

struct blk_q6_k {
    uint8_t ql[QK_K / 2];     /* low 4 bits */
    uint8_t qh[QK_K / 4];     /* high 2 bits */
    int8_t scales[QK_K / 16]; /* one signed 8-bit scale per 16 elements */
    uint8_t d[2];             /* f16 super-block scale */
};

_Static_assert(sizeof(struct blk_q4_0) == 18, "Q4_0 block size");
_Static_assert(sizeof(struct blk_q4_1) == 20, "Q4_1 block size");
_Static_assert(sizeof(struct blk_q5_0) == 22, "Q5_0 block size");
_Static_assert(sizeof(struct blk_q5_1) == 24, "Q5_1 block size");
_Static_assert(sizeof(struct blk_q8_0) == 34, "Q8_0 block size");
_Static_assert(sizeof(struct blk_q4_k) == 144, "Q4_K block size");
_Static_assert(sizeof(struct blk_q5_k) == 176, "Q5_K block size");
_Static_assert(sizeof(struct blk_q6_k) == 210, "Q6_K block size");

const struct qt_info *qt_info(uint32_t type)
{
    if (type >= sizeof(qt_table) / sizeof(qt_table[0]) || !qt_table[type].name)
        return NULL;
    return &qt_table[type];
}

size_t qt_row_size(uint32_t type, uint64_t n)
{
    const struct qt_info *ti = qt_info(type);
    if (!ti || n % ti->blck_size)
        return 0;
    uint64_t nb = n / ti->blck_size;
    if (nb > SIZE_MAX / ti->type_size)
        return 0;
    return (size_t)nb * ti->type_size;
}

/* ---- scalar conversions ---- */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float qt_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;

    if (exp == 0x1f) /* inf, or NaN with its payload kept */
        return f32_from_bits(sign | 0x7f800000 | (mant << 13));
    if (exp != 0) /* normal: rebias 15 -> 127 */
        return f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
    if (mant == 0)
        return f32_from_bits(sign);
    /* subnormal mant * 2^-24: shift until the implicit bit appears */
    exp = 113;
    while (!(mant & 0x400)) {
        mant <<= 1;
        exp--;
    }
    return f32_from_bits(sign | (exp << 23) | ((mant & 0x3ff) << 13));
}

uint16_t qt_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffff;

    if (a > 0x7f800000) /* NaN: quiet it, keep the top of the payload */
        return (uint16_t)(sign | 0x7e00 | ((a >> 13) & 0x3ff));
    if (a >= 0x477ff000) /* >= 65520 rounds past 65504: inf */
        return (uint16_t)(sign | 0x7c00);
    if (a >= 0x38800000) {
        /* normal half: round the 13 dropped bits to nearest even; a carry
         * out of the mantissa bumps the exponent, which is what we want */
        a += 0xfff + ((a >> 13) & 1);
        return (uint16_t)(sign | ((a >> 13) - (112u << 10)));
    }
    if (a < 0x33000000) /* below 2^-25: rounds to zero */
        return sign;
    /* subnormal half: value / 2^-24 = mant * 2^(e - 126), rounded to even */
    uint32_t e = a >> 23;
    uint32_t mant = (a & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - e; /* 14 .. 24 */
    uint32_t r = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1)))
        r++; /* may become 0x400, the smallest normal: still right */
    return (uint16_t)(sign | r);
}

float qt_bf16_to_f32(uint16_t h)
{
    return f32_from_bits((uint32_t)h << 16);
}

uint16_t qt_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffff) > 0x7f800000) /* NaN: set the quiet bit so it cannot become inf */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* ---- dequantizers: each handles nb whole blocks ---- */

static uint16_t rd_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t rd_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static float rd_f16(const uint8_t *p)
{
    return qt_f16_to_f32(rd_le16(p));
}

static void dequant_f32(const uint8_t *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = f32_from_bits(rd_le32(src + 4 * i));
}

static void dequant_f16(const uint8_t *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = rd_f16(src + 2 * i);
}

static void dequant_bf16(const uint8_t *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = qt_bf16_to_f32(rd_le16(src + 2 * i));
}

/* x = (q - 8) * d */
static void dequant_q4_0(const uint8_t *src, float *dst, size_t nb)
{
    for (size_t i = 0; i < nb; i++, dst += QK) {
        struct blk_q4_0 b;
        memcpy(&b, src + i * sizeof b, sizeof b);
        float d = rd_f16(b.d);
        for (int j = 0; j < QK / 2; j++) {
            dst[j] = (float)((b.qs[j] & 0xf) - 8) * d;
            dst[j + QK / 2] = (float)((b.qs[j] >> 4) - 8) * d;
        }
    }
}

/* x = q * d + m */
static void dequant_q4_1(const uint8_t *src, float *dst, size_t nb)
{
    for (size_t i = 0; i < nb; i++, dst += QK) {
        struct blk_q4_1 b;
        memcpy(&b, src + i * sizeof b, sizeof b);
        float d = rd_f16(b.d), m = rd_f16(b.m);
        for (int j = 0; j < QK / 2; j++) {
            dst[j] = (float)(b.qs[j] & 0xf) * d + m;
            dst[j + QK / 2] = (float)(b.qs[j] >> 4) * d + m;
        }
    }
}

/* x = (q - 16) * d, q = nibble | (bit j of qh) << 4 */
static void dequant_q5_0(const uint8_t *src, float *dst, size_t nb)
{
    for (size_t i = 0; i < nb; i++, dst += QK) {
        struct blk_q5_0 b;
        memcpy(&b, src + i * sizeof b, sizeof b);
        float d = rd_f16(b.d);
        uint32_t qh = rd_le32(b.qh);
        for (int j = 0; j < QK / 2; j++) {
            int q0 = (b.qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4);
            int q1 = (b.qs[j] >> 4) | (int)(((qh >> (j + QK / 2)) & 1) << 4);
            dst[j] = (float)(q0 - 16) * d;
            dst[j + QK / 2] = (float)(q1 - 16) * d;
        }
    }
}

/* x = q * d + m, q as in Q5_0 */
static void dequant_q5_1(const uint8_t *src, float *dst, size_t nb)
{
    for (size_t i = 0; i < nb; i++, dst += QK) {
        struct blk_q5_1 b;
        memcpy(&b, src + i * sizeof b, sizeof b);
        float d = rd_f16(b.d), m = rd_f16(b.m);
        uint32_t qh = rd_le32(b.qh);
        for (int j = 0; j < QK / 2; j++) {
            int q0 = (b.qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4);
            int q1 = (b.qs[j] >> 4) | (int)(((qh >> (j + QK / 2)) & 1) << 4);
            dst[j] = (float)q0 * d + m;
            dst[j + QK / 2] = (float)q1 * d + m;
        }
    }
}

/* x = q * d */
static void dequant_q8_0(const uint8_t *src, float *dst, size_t nb)
{
    for (size_t i = 0; i < nb; i++, dst += QK) {
        struct blk_q8_0 b;
        memcpy(&b, src + i * sizeof b, sizeof b);
        float d = rd_f16(b.d);
        for (int j = 0; j < QK; j++)
            dst[j] = (float)b.qs[j] * d;
    }
}

/*
 * The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block.
 * Bytes 0..3 hold scales 0..3 in their low 6 bits, bytes 4..7 mins 0..3;
 * bytes 8..11 hold the low 4 bits of scale/min 4..7 (scale in the low
 * nibble), whose top 2 bits sit in the spare top bits of bytes 0..7.
 */
static void scale_min_k4(int j, const uint8_t *q, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* 8 sub-blocks of 32: x = (d * sc) * q - (dmin * m) */
static void dequant_q4_k(const uint8_t *src, float *dst, size_t nb)
{
    for (size_t i = 0; i < nb; i++, dst += QK_K) {
        struct blk_q4_k b;
        memcpy(&b, src + i * sizeof b, sizeof b);
        float d = rd_f16(b.d), dmin = rd_f16(b.dmin);
        for (int j = 0; j < QK_K / 32; j++) {
            int sc, m;
            scale_min_k4(j, b.scales, &sc, &m);
            float d1 = d * (float)sc, m1 = dmin * (float)m;
            const uint8_t *q = b.qs + 32 * (j / 2);
            int shift = (j & 1) * 4;
            for (int l = 0; l < 32; l++)
                dst[32 * j + l] = d1 * (float)((q[l] >> shift) & 0xf) - m1;
        }
    }
}

/* as Q4_K, with a 5th bit per element from qh */
static void dequant_q5_k(const uint8_t *src, float *dst, size_t nb)
{
    for (size_t i = 0; i < nb; i++, dst += QK_K) {
        struct blk_q5_k b;
        memcpy(&b, src + i * sizeof b, sizeof b);
        float d = rd_f16(b.d), dmin = rd_f16(b.dmin);
        for (int j = 0; j < QK_K / 32; j++) {
            int sc, m;
            scale_min_k4(j, b.scales, &sc, &m);
            float d1 = d * (float)sc, m1 = dmin * (float)m;
            const uint8_t *q = b.qs + 32 * (j / 2);
            int shift = (j & 1) * 4;
            for (int l = 0; l < 32; l++) {
                int v = ((q[l] >> shift) & 0xf) | (((b.qh[l] >> j) & 1) << 4);
                dst[32 * j + l] = d1 * (float)v - m1;
            }
        }
    }
}

/*
 * 16 sub-blocks of 16: x = (d * scales[i / 16]) * (q - 32).  Element
 * i = 128*h + 32*k + l (h half, k quarter, l 0..31) takes its low 4 bits
 * from ql[64*h + 32*(k & 1) + l] (low nibble for k < 2, high for k >= 2)
 * and its high 2 bits from bits 2k, 2k+1 of qh[32*h + l].
 */
static void dequant_q6_k(const uint8_t *src, float *dst, size_t nb)
{
    for (size_t i = 0; i < nb; i++, dst += QK_K) {
        struct blk_q6_k b;
        memcpy(&b, src + i * sizeof b, sizeof b);
        float d = rd_f16(b.d);
        for (int e = 0; e < QK_K; e++) {
            int h = e / 128, k = (e % 128) / 32, l = e % 32;
            int lo = (b.ql[64 * h + 32 * (k & 1) + l] >> (k < 2 ? 0 : 4)) & 0xf;
            int hi = (b.qh[32 * h + l] >> (2 * k)) & 3;
            dst[e] = d * (float)b.scales[e / 16] * (float)((lo | (hi << 4)) - 32);
        }
    }
}

int qt_dequant(uint32_t type, const void *src, float *dst, uint64_t n)
{
    const struct qt_info *ti = qt_info(type);
    if (!ti || !ti->can_dequant || n % ti->blck_size)
        return -EINVAL;
    if (n == 0)
        return 0;
    if (!src || !dst || n > SIZE_MAX / sizeof(float) || qt_row_size(type, n) == 0)
        return -EINVAL;

    const uint8_t *s = src;
    size_t nb = (size_t)(n / ti->blck_size);
    switch (type) {
    case QT_F32:
        dequant_f32(s, dst, nb);
        break;
    case QT_F16:
        dequant_f16(s, dst, nb);
        break;
    case QT_BF16:
        dequant_bf16(s, dst, nb);
        break;
    case QT_Q4_0:
        dequant_q4_0(s, dst, nb);
        break;
    case QT_Q4_1:
        dequant_q4_1(s, dst, nb);
        break;
    case QT_Q5_0:
        dequant_q5_0(s, dst, nb);
        break;
    case QT_Q5_1:
        dequant_q5_1(s, dst, nb);
        break;
    case QT_Q8_0:
        dequant_q8_0(s, dst, nb);
        break;
    case QT_Q4_K:
        dequant_q4_k(s, dst, nb);
        break;
    case QT_Q5_K:
        dequant_q5_k(s, dst, nb);
        break;
    case QT_Q6_K:
        dequant_q6_k(s, dst, nb);
        break;
    default: /* can_dequant set without a case here: a table bug */
        return -EINVAL;
    }
    return 0;
}

/*
 * tests/unit/check_quant.c - util/quant: type geometry, f16/bf16 conversions
 * and the scalar dequantizers.
 *
 * Every dequantizer is checked on a hand-built block whose expected values
 * are worked out by hand in the comments (all exactly representable, so the
 * checks are exact float equality).  The blocks touch every sub-block path:
 * low/high nibbles, the 5th bit, and for the K-quants the packed 6-bit
 * scales of sub-blocks 4..7 that borrow the top bits of bytes 0..7.
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "tests/unit/suites.h"
#include "util/quant.h"

/* f16 constants used below */
#define H_0_125 0x3000 /* 2^-3 */
#define H_0_25 0x3400
#define H_0_5 0x3800
#define H_1 0x3c00
#define H_2 0x4000
#define H_M1 0xbc00 /* -1.0 */

static void put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xff);
    p[1] = (uint8_t)(v >> 8);
}

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- geometry ---- */

START_TEST(test_info_geometry)
{
    static const struct {
        uint32_t id;
        const char *name;
        uint32_t blck, size;
        int deq;
    } want[] = {
        {QT_F32, "F32", 1, 4, 1},       {QT_F16, "F16", 1, 2, 1},
        {QT_BF16, "BF16", 1, 2, 1},     {QT_Q4_0, "Q4_0", 32, 18, 1},
        {QT_Q4_1, "Q4_1", 32, 20, 1},   {QT_Q5_0, "Q5_0", 32, 22, 1},
        {QT_Q5_1, "Q5_1", 32, 24, 1},   {QT_Q8_0, "Q8_0", 32, 34, 1},
        {QT_Q8_1, "Q8_1", 32, 36, 0},   {QT_Q2_K, "Q2_K", 256, 84, 0},
        {QT_Q3_K, "Q3_K", 256, 110, 0}, {QT_Q4_K, "Q4_K", 256, 144, 1},
        {QT_Q5_K, "Q5_K", 256, 176, 1}, {QT_Q6_K, "Q6_K", 256, 210, 1},
        {QT_Q8_K, "Q8_K", 256, 292, 0}, {QT_I8, "I8", 1, 1, 0},
        {QT_I16, "I16", 1, 2, 0},       {QT_I32, "I32", 1, 4, 0},
        {QT_I64, "I64", 1, 8, 0},       {QT_F64, "F64", 1, 8, 0},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const struct qt_info *ti = qt_info(want[i].id);
        ck_assert_msg(ti != NULL, "type %u unknown", want[i].id);
        ck_assert_str_eq(ti->name, want[i].name);
        ck_assert_uint_eq(ti->blck_size, want[i].blck);
        ck_assert_uint_eq(ti->type_size, want[i].size);
        ck_assert_int_eq(ti->can_dequant, want[i].deq);
    }
    /* the GGUF ids are fixed by the file format */
    ck_assert_int_eq(QT_Q4_K, 12);
    ck_assert_int_eq(QT_BF16, 30);
}
END_TEST

START_TEST(test_info_unknown)
{
    /* removed Q4_2/Q4_3, the IQ types, IQ1_M, past the end, huge */
    static const uint32_t bad[] = {4, 5, 16, 19, 23, 29, 31, 34, 39, 99, 0xFFFFFFFFu};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(qt_info(bad[i]) == NULL, "type %u should be unknown", bad[i]);
        ck_assert_uint_eq(qt_row_size(bad[i], 32), 0);
    }
}
END_TEST

START_TEST(test_row_size)
{
    ck_assert_uint_eq(qt_row_size(QT_F32, 3), 12);
    ck_assert_uint_eq(qt_row_size(QT_BF16, 5), 10);
    ck_assert_uint_eq(qt_row_size(QT_Q4_0, 64), 36);     /* 2 blocks x 18 */
    ck_assert_uint_eq(qt_row_size(QT_Q8_0, 4096), 4352); /* 128 x 34 */
    ck_assert_uint_eq(qt_row_size(QT_Q4_K, 768), 432);   /* 3 x 144 */
    ck_assert_uint_eq(qt_row_size(QT_Q6_K, 256), 210);
    ck_assert_uint_eq(qt_row_size(QT_Q4_0, 0), 0);
    /* not a multiple of the block size */
    ck_assert_uint_eq(qt_row_size(QT_Q4_0, 33), 0);
    ck_assert_uint_eq(qt_row_size(QT_Q4_0, 16), 0);
    ck_assert_uint_eq(qt_row_size(QT_Q6_K, 100), 0);
    ck_assert_uint_eq(qt_row_size(QT_Q4_K, 32), 0);
    /* overflow of size_t */
    ck_assert_uint_eq(qt_row_size(QT_F32, UINT64_MAX), 0);
    ck_assert_uint_eq(qt_row_size(QT_I32, (uint64_t)1 << 62), 0);
    if (sizeof(size_t) == 8) {
        ck_assert_uint_eq(qt_row_size(QT_F64, (uint64_t)1 << 61), 0);
        /* under a byte per element a u64 count cannot overflow: no false alarm */
        ck_assert_uint_eq(qt_row_size(QT_Q4_0, UINT64_MAX - 31), (((uint64_t)1 << 59) - 1) * 18);
    }
}
END_TEST

/* ---- conversions ---- */

START_TEST(test_f16_values)
{
    ck_assert_float_eq(qt_f16_to_f32(0x3c00), 1.0f);
    ck_assert_float_eq(qt_f16_to_f32(0xc000), -2.0f);
    ck_assert_float_eq(qt_f16_to_f32(0x7bff), 65504.0f);                 /* largest finite */
    ck_assert_float_eq(qt_f16_to_f32(0x0001), ldexpf(1.0f, -24));        /* smallest subnormal */
    ck_assert_float_eq(qt_f16_to_f32(0x03ff), 1023 * ldexpf(1.0f, -24)); /* largest subnormal */
    ck_assert_float_eq(qt_f16_to_f32(0x0400), ldexpf(1.0f, -14));        /* smallest normal */
    ck_assert_float_eq(qt_f16_to_f32(0x3555), 0x555p-12f);               /* 1.0101010101b * 2^-2 */
    ck_assert_float_infinite(qt_f16_to_f32(0x7c00));
    ck_assert(qt_f16_to_f32(0x7c00) > 0);
    ck_assert(qt_f16_to_f32(0xfc00) < 0 && isinf(qt_f16_to_f32(0xfc00)));
    ck_assert_float_nan(qt_f16_to_f32(0x7e00));
    ck_assert_float_nan(qt_f16_to_f32(0x7c01));                     /* signalling NaN stays NaN */
    ck_assert_uint_eq(bits_of(qt_f16_to_f32(0x8000)), 0x80000000u); /* -0 */

    ck_assert_uint_eq(qt_f32_to_f16(1.0f), 0x3c00);
    ck_assert_uint_eq(qt_f32_to_f16(-2.0f), 0xc000);
    ck_assert_uint_eq(qt_f32_to_f16(65504.0f), 0x7bff);
    ck_assert_uint_eq(qt_f32_to_f16(ldexpf(1.0f, -24)), 0x0001);
    ck_assert_uint_eq(qt_f32_to_f16(-0.0f), 0x8000);
    ck_assert_uint_eq(qt_f32_to_f16(INFINITY), 0x7c00);
    ck_assert_uint_eq(qt_f32_to_f16(-INFINITY), 0xfc00);
    uint16_t n = qt_f32_to_f16(NAN);
    ck_assert_msg((n & 0x7c00) == 0x7c00 && (n & 0x3ff) != 0, "NaN -> 0x%04x", n);
    /* a NaN whose payload sits only in the low 13 bits must not become inf */
    n = qt_f32_to_f16(float_of(0x7f800001u));
    ck_assert_msg((n & 0x7c00) == 0x7c00 && (n & 0x3ff) != 0, "sNaN -> 0x%04x", n);
}
END_TEST

START_TEST(test_f16_rounding)
{
    /* 1 + 2^-11 is halfway between 1 (0x3c00) and 1 + 2^-10 (0x3c01): to even */
    ck_assert_uint_eq(qt_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00);
    /* 1 + 3*2^-11 is halfway between 0x3c01 and 0x3c02: to even 0x3c02 */
    ck_assert_uint_eq(qt_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02);
    /* just above halfway rounds up */
    ck_assert_uint_eq(qt_f32_to_f16(float_of(0x3f801001u)), 0x3c01);
    /* 65519 rounds down to 65504; 65520 is halfway to 65536 and goes to inf */
    ck_assert_uint_eq(qt_f32_to_f16(65519.0f), 0x7bff);
    ck_assert_uint_eq(qt_f32_to_f16(65520.0f), 0x7c00);
    ck_assert_uint_eq(qt_f32_to_f16(-1e9f), 0xfc00);
    /* subnormals: 2^-25 is halfway between 0 and 2^-24, to even 0 */
    ck_assert_uint_eq(qt_f32_to_f16(ldexpf(1.0f, -25)), 0x0000);
    ck_assert_uint_eq(qt_f32_to_f16(1.5f * ldexpf(1.0f, -25)), 0x0001);
    /* 3 * 2^-25 = 1.5 * 2^-24 is halfway between 0x0001 and 0x0002: to even */
    ck_assert_uint_eq(qt_f32_to_f16(3 * ldexpf(1.0f, -25)), 0x0002);
    ck_assert_uint_eq(qt_f32_to_f16(ldexpf(1.0f, -30)), 0x0000);
    ck_assert_uint_eq(qt_f32_to_f16(-ldexpf(1.0f, -30)), 0x8000);
    /* just below the smallest normal rounds up into it */
    ck_assert_uint_eq(qt_f32_to_f16(float_of(0x387fffffu)), 0x0400);
}
END_TEST

START_TEST(test_f16_roundtrip_all)
{
    /* every non-NaN half survives f16 -> f32 -> f16 unchanged */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
            continue;
        uint16_t back = qt_f32_to_f16(qt_f16_to_f32((uint16_t)h));
        ck_assert_msg(back == h, "0x%04x -> %a -> 0x%04x", h, qt_f16_to_f32((uint16_t)h), back);
    }
}
END_TEST

START_TEST(test_bf16)
{
    ck_assert_float_eq(qt_bf16_to_f32(0x3f80), 1.0f);
    ck_assert_float_eq(qt_bf16_to_f32(0xc040), -3.0f);
    ck_assert_float_eq(qt_bf16_to_f32(0x4049), 3.140625f); /* 0x40490000 */
    ck_assert_float_infinite(qt_bf16_to_f32(0x7f80));
    ck_assert_float_nan(qt_bf16_to_f32(0x7fc0));

    ck_assert_uint_eq(qt_f32_to_bf16(1.0f), 0x3f80);
    ck_assert_uint_eq(qt_f32_to_bf16(-3.0f), 0xc040);
    /* 1 + 2^-8 is halfway between 0x3f80 and 0x3f81: to even */
    ck_assert_uint_eq(qt_f32_to_bf16(float_of(0x3f808000u)), 0x3f80);
    /* 1 + 3*2^-8 is halfway between 0x3f81 and 0x3f82: to even */
    ck_assert_uint_eq(qt_f32_to_bf16(float_of(0x3f818000u)), 0x3f82);
    ck_assert_uint_eq(qt_f32_to_bf16(float_of(0x3f808001u)), 0x3f81);
    ck_assert_uint_eq(qt_f32_to_bf16(float_of(0x3f807fffu)), 0x3f80);
    ck_assert_uint_eq(qt_f32_to_bf16(INFINITY), 0x7f80);
    ck_assert_uint_eq(qt_f32_to_bf16(-INFINITY), 0xff80);
    ck_assert_uint_eq(qt_f32_to_bf16(3.4028235e38f), 0x7f80); /* FLT_MAX rounds to inf */
    /* NaN stays NaN, even when its payload is only in the dropped bits */
    ck_assert_float_nan(qt_bf16_to_f32(qt_f32_to_bf16(NAN)));
    ck_assert_uint_eq(qt_f32_to_bf16(float_of(0x7f800001u)), 0x7fc0);
    ck_assert_uint_eq(qt_f32_to_bf16(float_of(0xff800001u)), 0xffc0);
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7f80) == 0x7f80 && (h & 0x7f))
            continue;
        ck_assert_uint_eq(qt_f32_to_bf16(qt_bf16_to_f32((uint16_t)h)), h);
    }
}
END_TEST

/* ---- dequantizers, one hand-built block each ---- */

START_TEST(test_dequant_f32)
{
    /* little-endian 1.5f = 0x3fc00000, -2.0f = 0xc0000000 */
    const uint8_t src[] = {0x00, 0x00, 0xc0, 0x3f, 0x00, 0x00, 0x00, 0xc0};
    float y[2];
    ck_assert_int_eq(qt_dequant(QT_F32, src, y, 2), 0);
    ck_assert_float_eq(y[0], 1.5f);
    ck_assert_float_eq(y[1], -2.0f);
}
END_TEST

START_TEST(test_dequant_f16)
{
    /* 0x3c00 = 1, 0xc000 = -2, 0x7bff = 65504, 0x0001 = 2^-24 */
    const uint8_t src[] = {0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x01, 0x00};
    float y[4];
    ck_assert_int_eq(qt_dequant(QT_F16, src, y, 4), 0);
    ck_assert_float_eq(y[0], 1.0f);
    ck_assert_float_eq(y[1], -2.0f);
    ck_assert_float_eq(y[2], 65504.0f);
    ck_assert_float_eq(y[3], ldexpf(1.0f, -24));
}
END_TEST

START_TEST(test_dequant_bf16)
{
    /* 0x3f80 = 1, 0xc040 = -3, 0x4049 = 3.140625 */
    const uint8_t src[] = {0x80, 0x3f, 0x40, 0xc0, 0x49, 0x40};
    float y[3];
    ck_assert_int_eq(qt_dequant(QT_BF16, src, y, 3), 0);
    ck_assert_float_eq(y[0], 1.0f);
    ck_assert_float_eq(y[1], -3.0f);
    ck_assert_float_eq(y[2], 3.140625f);
}
END_TEST

START_TEST(test_dequant_q4_0)
{
    /* {f16 d; u8 qs[16]}, x = (nibble - 8) * d; low nibble of qs[j] is
     * element j, high nibble element j + 16 */
    uint8_t b[18] = {0};
    put_le16(b, H_0_5); /* d = 0.5 */
    b[2 + 0] = 0x3f;    /* e0: 15 -> (15-8)*0.5 = 3.5;  e16: 3 -> (3-8)*0.5 = -2.5 */
    b[2 + 7] = 0xc9;    /* e7: 9 -> 0.5;                e23: 12 -> 2.0 */
    b[2 + 15] = 0x80;   /* e15: 0 -> -4.0;              e31: 8 -> 0.0 */
    /* all other nibbles 0 -> (0-8)*0.5 = -4.0 */
    float y[32];
    ck_assert_int_eq(qt_dequant(QT_Q4_0, b, y, 32), 0);
    ck_assert_float_eq(y[0], 3.5f);
    ck_assert_float_eq(y[16], -2.5f);
    ck_assert_float_eq(y[7], 0.5f);
    ck_assert_float_eq(y[23], 2.0f);
    ck_assert_float_eq(y[15], -4.0f);
    ck_assert_float_eq(y[31], 0.0f);
    ck_assert_float_eq(y[1], -4.0f);
    ck_assert_float_eq(y[30], -4.0f);
}
END_TEST

START_TEST(test_dequant_q4_1)
{
    /* {f16 d, m; u8 qs[16]}, x = nibble * d + m */
    uint8_t b[20] = {0};
    put_le16(b, H_0_25);   /* d = 0.25 */
    put_le16(b + 2, H_M1); /* m = -1 */
    b[4 + 0] = 0xa3;       /* e0: 3 -> 0.75-1 = -0.25;   e16: 10 -> 2.5-1 = 1.5 */
    b[4 + 15] = 0xf0;      /* e15: 0 -> -1.0;            e31: 15 -> 3.75-1 = 2.75 */
    float y[32];
    ck_assert_int_eq(qt_dequant(QT_Q4_1, b, y, 32), 0);
    ck_assert_float_eq(y[0], -0.25f);
    ck_assert_float_eq(y[16], 1.5f);
    ck_assert_float_eq(y[15], -1.0f);
    ck_assert_float_eq(y[31], 2.75f);
    ck_assert_float_eq(y[5], -1.0f); /* nibble 0 -> m */
}
END_TEST

START_TEST(test_dequant_q5_0)
{
    /* {f16 d; u8 qh[4]; u8 qs[16]}, q = nibble | (bit j of LE u32 qh) << 4,
     * x = (q - 16) * d */
    uint8_t b[22] = {0};
    put_le16(b, H_2); /* d = 2 */
    b[2 + 0] = 0x01;  /* qh bit 0  -> element 0 */
    b[2 + 2] = 0x02;  /* qh bit 17 -> element 17 */
    b[2 + 3] = 0x80;  /* qh bit 31 -> element 31 */
    b[6 + 0] = 0x21;  /* e0: 1|16 = 17 -> (17-16)*2 = 2;  e16: 2 -> (2-16)*2 = -28 */
    b[6 + 1] = 0x54;  /* e1: 4 -> (4-16)*2 = -24;         e17: 5|16 = 21 -> 10 */
    b[6 + 15] = 0xf0; /* e15: 0 -> -32;                   e31: 15|16 = 31 -> 30 */
    float y[32];
    ck_assert_int_eq(qt_dequant(QT_Q5_0, b, y, 32), 0);
    ck_assert_float_eq(y[0], 2.0f);
    ck_assert_float_eq(y[16], -28.0f);
    ck_assert_float_eq(y[1], -24.0f);
    ck_assert_float_eq(y[17], 10.0f);
    ck_assert_float_eq(y[15], -32.0f);
    ck_assert_float_eq(y[31], 30.0f);
}
END_TEST

START_TEST(test_dequant_q5_1)
{
    /* {f16 d, m; u8 qh[4]; u8 qs[16]}, x = q * d + m */
    uint8_t b[24] = {0};
    put_le16(b, H_0_5);   /* d = 0.5 */
    put_le16(b + 2, H_1); /* m = 1 */
    b[4 + 0] = 0x08;      /* qh bit 3  -> element 3 */
    b[4 + 2] = 0x10;      /* qh bit 20 -> element 20 */
    b[8 + 3] = 0x27;      /* e3: 7|16 = 23 -> 11.5+1 = 12.5;  e19: 2 -> 1+1 = 2 */
    b[8 + 4] = 0x9f;      /* e4: 15 -> 7.5+1 = 8.5;          e20: 9|16 = 25 -> 12.5+1 = 13.5 */
    float y[32];
    ck_assert_int_eq(qt_dequant(QT_Q5_1, b, y, 32), 0);
    ck_assert_float_eq(y[3], 12.5f);
    ck_assert_float_eq(y[19], 2.0f);
    ck_assert_float_eq(y[4], 8.5f);
    ck_assert_float_eq(y[20], 13.5f);
    ck_assert_float_eq(y[0], 1.0f); /* q = 0 -> m */
    ck_assert_float_eq(y[31], 1.0f);
}
END_TEST

START_TEST(test_dequant_q8_0)
{
    /* {f16 d; i8 qs[32]}, x = q * d; two blocks to check the stride */
    uint8_t b[68] = {0};
    put_le16(b, H_0_125);   /* block 0: d = 0.125 */
    b[2 + 0] = 0x80;        /* -128 * 0.125 = -16 */
    b[2 + 1] = 0x7f;        /*  127 * 0.125 = 15.875 */
    b[2 + 10] = 8;          /*    8 * 0.125 = 1 */
    b[2 + 31] = 0xfd;       /*   -3 * 0.125 = -0.375 */
    put_le16(b + 34, H_M1); /* block 1: d = -1 */
    b[36 + 0] = 5;          /* 5 * -1 = -5 */
    b[36 + 31] = 0x9c;      /* -100 * -1 = 100 */
    float y[64];
    ck_assert_int_eq(qt_dequant(QT_Q8_0, b, y, 64), 0);
    ck_assert_float_eq(y[0], -16.0f);
    ck_assert_float_eq(y[1], 15.875f);
    ck_assert_float_eq(y[10], 1.0f);
    ck_assert_float_eq(y[31], -0.375f);
    ck_assert_float_eq(y[2], 0.0f);
    ck_assert_float_eq(y[32], -5.0f);
    ck_assert_float_eq(y[63], 100.0f);
}
END_TEST

/*
 * Packed scales shared by the Q4_K and Q5_K blocks.  Sub-block j < 4 has
 * scale = s[j] & 63 and min = s[j+4] & 63; j >= 4 has
 * scale = (s[j+4] & 15) | (s[j-4] >> 6) << 4 and min = (s[j+4] >> 4) | (s[j] >> 6) << 4.
 *   j=0: s[0]=0x81 -> 1,           s[4]=0x42 -> 2
 *   j=1: s[1]=0x03 -> 3,           s[5]=0x00 -> 0
 *   j=2: s[2]=0x0a -> 10,          s[6]=0x01 -> 1
 *   j=3: s[3]=0xc0 -> 0,           s[7]=0xc4 -> 4
 *   j=4: s[8]=0x35: scale 5 | (0x81>>6=2)<<4 = 37,  min 3 | (0x42>>6=1)<<4 = 19
 *   j=5: s[9]=0x00: scale 0 | (0x03>>6=0)<<4 = 0,   min 0 | (0x00>>6)<<4 = 0
 *   j=6: s[10]=0x21: scale 1 | 0 = 1,               min 2 | 0 = 2
 *   j=7: s[11]=0xff: scale 15 | (0xc0>>6=3)<<4 = 63, min 15 | (0xc4>>6=3)<<4 = 63
 */
static const uint8_t k_scales[12] = {0x81, 0x03, 0x0a, 0xc0, 0x42, 0x00,
                                     0x01, 0xc4, 0x35, 0x00, 0x21, 0xff};

START_TEST(test_dequant_q4_k)
{
    /* {f16 d, dmin; u8 scales[12]; u8 qs[128]}: sub-block j (32 elements)
     * reads qs[32*(j/2) + l], low nibble for even j, high for odd j;
     * x = d*scale_j*q - dmin*min_j */
    uint8_t b[144] = {0};
    put_le16(b, H_0_5);      /* d = 0.5 */
    put_le16(b + 2, H_0_25); /* dmin = 0.25 */
    memcpy(b + 4, k_scales, 12);
    uint8_t *qs = b + 16;
    qs[0] = 0xa7;  /* e0 (j0): 0.5*1*7 - 0.25*2 = 3;         e32 (j1): 0.5*3*10 - 0 = 15 */
    qs[37] = 0xf3; /* e69 (j2): 0.5*10*3 - 0.25*1 = 14.75;   e101 (j3): 0*15 - 0.25*4 = -1 */
    qs[64] = 0xf2; /* e128 (j4): 0.5*37*2 - 0.25*19 = 32.25; e160 (j5): 0*15 - 0 = 0 */
    qs[96] = 0x00; /* e192 (j6): 0 - 0.25*2 = -0.5;          e224 (j7): 0 - 0.25*63 = -15.75 */
    qs[127] =
        0xef; /* e223 (j6): 0.5*1*15 - 0.5 = 7;         e255 (j7): 0.5*63*14 - 15.75 = 425.25 */
    float y[256];
    ck_assert_int_eq(qt_dequant(QT_Q4_K, b, y, 256), 0);
    ck_assert_float_eq(y[0], 3.0f);
    ck_assert_float_eq(y[32], 15.0f);
    ck_assert_float_eq(y[69], 14.75f);
    ck_assert_float_eq(y[101], -1.0f);
    ck_assert_float_eq(y[128], 32.25f);
    ck_assert_float_eq(y[160], 0.0f);
    ck_assert_float_eq(y[192], -0.5f);
    ck_assert_float_eq(y[224], -15.75f);
    ck_assert_float_eq(y[223], 7.0f);
    ck_assert_float_eq(y[255], 425.25f);
    ck_assert_float_eq(y[129], -4.75f); /* j4, q = 0: -0.25*19 */
}
END_TEST

START_TEST(test_dequant_q5_k)
{
    /* {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: as Q4_K, plus
     * bit j of qh[l] as the 5th bit of element 32*j + l.  With d = 1 and
     * dmin = 0.5 the sub-block (scale, dmin*min) pairs are
     * j0 (1, 1), j1 (3, 0), j2 (10, 0.5), j3 (0, 2), j4 (37, 9.5), j5 (0, 0),
     * j6 (1, 1), j7 (63, 31.5). */
    uint8_t b[176] = {0};
    put_le16(b, H_1);       /* d = 1 */
    put_le16(b + 2, H_0_5); /* dmin = 0.5 */
    memcpy(b + 4, k_scales, 12);
    uint8_t *qh = b + 16, *qs = b + 48;
    qh[0] = 0x91;   /* bits 0, 4, 7: elements 0, 128, 224 */
    qh[1] = 0x02;   /* bit 1: element 33 */
    qh[31] = 0x80;  /* bit 7: element 255 */
    qs[0] = 0xa7;   /* e0: (7|16)=23*1 - 1 = 22;   e32: 10*3 - 0 = 30 */
    qs[1] = 0x00;   /* e33: (0|16)=16*3 - 0 = 48 */
    qs[37] = 0xf3;  /* e69: 3*10 - 0.5 = 29.5;     e101: 0*15 - 2 = -2 */
    qs[64] = 0x02;  /* e128: (2|16)=18*37 - 9.5 = 656.5; e160: 0 */
    qs[65] = 0x00;  /* e129: 0*37 - 9.5 = -9.5 */
    qs[96] = 0x00;  /* e192: 0 - 1 = -1;           e224: (0|16)=16*63 - 31.5 = 976.5 */
    qs[127] = 0xe0; /* e255: (14|16)=30*63 - 31.5 = 1858.5 */
    float y[256];
    ck_assert_int_eq(qt_dequant(QT_Q5_K, b, y, 256), 0);
    ck_assert_float_eq(y[0], 22.0f);
    ck_assert_float_eq(y[32], 30.0f);
    ck_assert_float_eq(y[33], 48.0f);
    ck_assert_float_eq(y[69], 29.5f);
    ck_assert_float_eq(y[101], -2.0f);
    ck_assert_float_eq(y[128], 656.5f);
    ck_assert_float_eq(y[129], -9.5f);
    ck_assert_float_eq(y[160], 0.0f);
    ck_assert_float_eq(y[192], -1.0f);
    ck_assert_float_eq(y[224], 976.5f);
    ck_assert_float_eq(y[255], 1858.5f);
}
END_TEST

START_TEST(test_dequant_q6_k)
{
    /* {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: element
     * e = 128h + 32k + l takes its low 4 bits from ql[64h + 32(k&1) + l]
     * (low nibble k < 2, high k >= 2), its top 2 bits from bits 2k..2k+1 of
     * qh[32h + l]; x = d * scales[e/16] * (q - 32). */
    static const int8_t sc[16] = {1, 2, 3, 4, 5, -2, 7, 8, 9, 10, 11, 12, 13, 14, 15, -128};
    uint8_t b[210] = {0};
    uint8_t *ql = b, *qh = b + 128;
    memcpy(b + 192, sc, 16);
    put_le16(b + 208, H_0_5); /* d = 0.5 */
    ql[0] = 0xf5;             /* e0: low 5;    e64: high 15 */
    ql[32] = 0x10;            /* e32: low 0;   e96: high 1 */
    qh[0] = 0x72;             /* bits 0-1 = 2 (e0), 2-3 = 0 (e32), 4-5 = 3 (e64), 6-7 = 1 (e96) */
    /* e0:  5|2<<4 = 37 - 32 = 5    -> 0.5*sc0(1)*5     = 2.5
     * e32: 0|0    = 0 - 32 = -32   -> 0.5*sc2(3)*-32   = -48
     * e64: 15|3<<4 = 63 - 32 = 31  -> 0.5*sc4(5)*31    = 77.5
     * e96: 1|1<<4 = 17 - 32 = -15  -> 0.5*sc6(7)*-15   = -52.5 */
    ql[16] = 0x40; /* e80 (k2, l16): high nibble 4 */
    qh[16] = 0x20; /* bits 4-5 = 2: 4|32 = 36 - 32 = 4 -> 0.5*sc5(-2)*4 = -4 */
    ql[64] = 0x01; /* e128 (h1, k0, l0): low 1 */
    qh[32] = 0x01; /* bits 0-1 = 1: 17 - 32 = -15 -> 0.5*sc8(9)*-15 = -67.5 */
    ql[72] = 0xa0; /* e200 (h1, k2, l8): high 10 */
    qh[40] = 0x20; /* bits 4-5 = 2: 42 - 32 = 10 -> 0.5*sc12(13)*10 = 65 */
    /* e255 (h1, k3, l31): ql[127] high 0, qh[63] bits 6-7 = 0: -32 -> 0.5*-128*-32 = 2048 */
    /* e1: all zero: -32 -> 0.5*1*-32 = -16 */
    float y[256];
    ck_assert_int_eq(qt_dequant(QT_Q6_K, b, y, 256), 0);
    ck_assert_float_eq(y[0], 2.5f);
    ck_assert_float_eq(y[32], -48.0f);
    ck_assert_float_eq(y[64], 77.5f);
    ck_assert_float_eq(y[96], -52.5f);
    ck_assert_float_eq(y[80], -4.0f);
    ck_assert_float_eq(y[128], -67.5f);
    ck_assert_float_eq(y[200], 65.0f);
    ck_assert_float_eq(y[255], 2048.0f);
    ck_assert_float_eq(y[1], -16.0f);
}
END_TEST

START_TEST(test_dequant_unaligned_src)
{
    /* blocks need not be aligned: a Q4_0 block at an odd address */
    uint8_t buf[1 + 18] = {0};
    put_le16(buf + 1, H_0_5);
    buf[1 + 2] = 0x3f; /* e0 = 3.5, e16 = -2.5 as in test_dequant_q4_0 */
    float y[32];
    ck_assert_int_eq(qt_dequant(QT_Q4_0, buf + 1, y, 32), 0);
    ck_assert_float_eq(y[0], 3.5f);
    ck_assert_float_eq(y[16], -2.5f);
}
END_TEST

START_TEST(test_dequant_refuses)
{
    uint8_t src[292] = {0};
    float y[256];
    for (int i = 0; i < 256; i++)
        y[i] = 42.0f;
    /* types without a dequantizer */
    ck_assert_int_eq(qt_dequant(QT_Q2_K, src, y, 256), -EINVAL);
    ck_assert_int_eq(qt_dequant(QT_Q3_K, src, y, 256), -EINVAL);
    ck_assert_int_eq(qt_dequant(QT_Q8_K, src, y, 256), -EINVAL);
    ck_assert_int_eq(qt_dequant(QT_Q8_1, src, y, 32), -EINVAL);
    ck_assert_int_eq(qt_dequant(QT_I8, src, y, 4), -EINVAL);
    ck_assert_int_eq(qt_dequant(QT_F64, src, y, 4), -EINVAL);
    /* unknown types */
    ck_assert_int_eq(qt_dequant(4, src, y, 32), -EINVAL);
    ck_assert_int_eq(qt_dequant(0xFFFFFFFFu, src, y, 32), -EINVAL);
    /* n not a multiple of the block size */
    ck_assert_int_eq(qt_dequant(QT_Q4_0, src, y, 33), -EINVAL);
    ck_assert_int_eq(qt_dequant(QT_Q6_K, src, y, 128), -EINVAL);
    /* NULL buffers, and a size that cannot exist */
    ck_assert_int_eq(qt_dequant(QT_Q8_0, NULL, y, 32), -EINVAL);
    ck_assert_int_eq(qt_dequant(QT_Q8_0, src, NULL, 32), -EINVAL);
    ck_assert_int_eq(qt_dequant(QT_F32, src, y, UINT64_MAX), -EINVAL);
    /* refusals write nothing */
    for (int i = 0; i < 256; i++)
        ck_assert_float_eq(y[i], 42.0f);
    /* zero elements is a valid empty row */
    ck_assert_int_eq(qt_dequant(QT_Q4_K, src, y, 0), 0);
    ck_assert_float_eq(y[0], 42.0f);
}
END_TEST

Suite *quant_suite(void)
{
    Suite *s = suite_create("quant");

    TCase *tc = tcase_create("geometry");
    tcase_add_test(tc, test_info_geometry);
    tcase_add_test(tc, test_info_unknown);
    tcase_add_test(tc, test_row_size);
    suite_add_tcase(s, tc);

    tc = tcase_create("convert");
    tcase_add_test(tc, test_f16_values);
    tcase_add_test(tc, test_f16_rounding);
    tcase_add_test(tc, test_f16_roundtrip_all);
    tcase_add_test(tc, test_bf16);
    suite_add_tcase(s, tc);

    tc = tcase_create("dequant");
    tcase_add_test(tc, test_dequant_f32);
    tcase_add_test(tc, test_dequant_f16);
    tcase_add_test(tc, test_dequant_bf16);
    tcase_add_test(tc, test_dequant_q4_0);
    tcase_add_test(tc, test_dequant_q4_1);
    tcase_add_test(tc, test_dequant_q5_0);
    tcase_add_test(tc, test_dequant_q5_1);
    tcase_add_test(tc, test_dequant_q8_0);
    tcase_add_test(tc, test_dequant_q4_k);
    tcase_add_test(tc, test_dequant_q5_k);
    tcase_add_test(tc, test_dequant_q6_k);
    tcase_add_test(tc, test_dequant_unaligned_src);
    tcase_add_test(tc, test_dequant_refuses);
    suite_add_tcase(s, tc);

    return s;
}

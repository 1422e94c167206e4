/*
 * util/quant.h - GGML tensor types: block geometry and scalar dequantization.
 *
 * This module knows how each GGUF tensor type lays out its bytes: how many
 * elements a block holds, how many bytes a block takes, and how to turn
 * blocks back into f32.  The GGUF loader uses the geometry to validate
 * tensor sizes; the device kernels are checked against the scalar
 * dequantizers here.  It does not do any matrix math and never allocates.
 */
#ifndef CINFER_UTIL_QUANT_H
#define CINFER_UTIL_QUANT_H

#include <stddef.h>
#include <stdint.h>

/* Type ids as GGUF files store them (ggml's enum). */
enum qt_type {
    QT_F32 = 0,
    QT_F16 = 1,
    QT_Q4_0 = 2,
    QT_Q4_1 = 3,
    QT_Q5_0 = 6,
    QT_Q5_1 = 7,
    QT_Q8_0 = 8,
    QT_Q8_1 = 9,
    QT_Q2_K = 10,
    QT_Q3_K = 11,
    QT_Q4_K = 12,
    QT_Q5_K = 13,
    QT_Q6_K = 14,
    QT_Q8_K = 15,
    QT_I8 = 24,
    QT_I16 = 25,
    QT_I32 = 26,
    QT_I64 = 27,
    QT_F64 = 28,
    QT_BF16 = 30,
};

/* Geometry of one type; NULL from qt_info() for ids we do not know. */
struct qt_info {
    const char *name;   /* "Q4_K" */
    uint32_t blck_size; /* elements per block (1 for plain types) */
    uint32_t type_size; /* bytes per block */
    int can_dequant;    /* 1 when qt_dequant() handles it */
};

/* Returns the geometry of type id `type`, or NULL when it is unknown. */
const struct qt_info *qt_info(uint32_t type);

/*
 * Bytes taken by a row of `n` elements of `type`, or 0 when the type is
 * unknown or `n` is not a multiple of the block size.
 */
size_t qt_row_size(uint32_t type, uint64_t n);

/*
 * Dequantizes `n` elements of `type` from `src` into `dst`.  `n` must be a
 * multiple of the type's block size.  Returns 0, or -EINVAL for a type
 * without a dequantizer or a bad `n`.  The caller guarantees that `src`
 * holds qt_row_size(type, n) bytes.
 */
int qt_dequant(uint32_t type, const void *src, float *dst, uint64_t n);

/* IEEE half and bfloat16 conversions (round to nearest even on the way in). */
float qt_f16_to_f32(uint16_t h);
uint16_t qt_f32_to_f16(float f);
float qt_bf16_to_f32(uint16_t h);
uint16_t qt_f32_to_bf16(float f);

#endif

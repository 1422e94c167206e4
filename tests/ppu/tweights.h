/*
 * tests/ppu/tweights.h - random valid weights of every GGUF type, for the PPU
 * checks (check_ops.c) and the random-weight models (make_gguf.c): float
 * types 0.1 * N(0, 1); block types random quants with small finite f16
 * scales, as tests/unit/check_device.c makes them.
 */
#ifndef CINFER_TESTS_PPU_TWEIGHTS_H
#define CINFER_TESTS_PPU_TWEIGHTS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/quant.h"

static uint64_t g_rng __attribute__((unused)) = 0x9e3779b97f4a7c15ull;
static inline uint32_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}
static inline float frand(void) /* about N(0, 1) */
{
    float s = 0;
    for (int i = 0; i < 4; i++)
        s += (float)rnd() / 4294967296.0f * 2.0f - 1.0f;
    return s * 0.866f;
}
static inline void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline uint16_t f16r(float lo, float hi)
{
    float v = lo + (hi - lo) * (float)(rnd() & 0xffff) / 65536.0f;
    return qt_f32_to_f16((rnd() & 1) ? -v : v);
}

/* rows x cols of `type` (malloc'd, NULL when out of memory); *rb: bytes per row */
static inline uint8_t *make_weight(uint32_t type, int64_t rows, int64_t cols, size_t *rb)
{
    const struct qt_info *qi = qt_info(type);
    *rb = qt_row_size(type, (uint64_t)cols);
    uint8_t *d = malloc(*rb * (size_t)rows);
    size_t nblk = (size_t)(rows * cols) / qi->blck_size;
    for (size_t i = 0; d && i < nblk; i++) {
        uint8_t *b = d + i * qi->type_size;
        float f = 0.1f * frand();
        switch (type) {
        case QT_F32:
            memcpy(b, &f, 4);
            continue;
        case QT_F16:
            put16(b, qt_f32_to_f16(f));
            continue;
        case QT_BF16:
            put16(b, qt_f32_to_bf16(f));
            continue;
        }
        for (uint32_t j = 0; j < qi->type_size; j++)
            b[j] = (uint8_t)rnd();
        switch (type) {
        case QT_Q8_0:
            put16(b, f16r(0.001f, 0.004f));
            break;
        case QT_Q4_0:
        case QT_Q5_0:
            put16(b, f16r(0.01f, 0.1f));
            break;
        case QT_Q4_1:
        case QT_Q5_1:
            put16(b, f16r(0.01f, 0.1f));
            put16(b + 2, f16r(0.01f, 0.1f));
            break;
        case QT_Q4_K:
        case QT_Q5_K:
            put16(b, qt_f32_to_f16(0.001f + 0.003f * (float)(rnd() & 255) / 256.0f));
            put16(b + 2, qt_f32_to_f16(0.001f + 0.003f * (float)(rnd() & 255) / 256.0f));
            break;
        case QT_Q6_K:
            put16(b + 208, f16r(0.0002f, 0.0008f));
            break;
        }
    }
    return d;
}

#endif

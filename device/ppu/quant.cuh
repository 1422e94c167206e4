/*
 * device/ppu/quant.cuh - GGUF block formats read on the device: 32
 * elements at a time (a K-quant's sub-block), as util/quant.c reads them on
 * the host.  Fields are read a byte at a time: blocks of 18, 20 or 22 bytes
 * leave them unaligned.
 */
#ifndef CINFER_DEVICE_PPU_QUANT_CUH
#define CINFER_DEVICE_PPU_QUANT_CUH

#include <cuda_fp16.h>
#include <stdint.h>

#include "util/quant.h"

#define PPU_QK 32
#define PPU_QK_K 256

__device__ __forceinline__ uint32_t rd16(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8);
}

__device__ __forceinline__ uint32_t rd32(const uint8_t *p)
{
    return rd16(p) | (rd16(p + 2) << 16);
}

__device__ __forceinline__ float h2f(uint32_t bits)
{
    return __half2float(__ushort_as_half((unsigned short)bits));
}

/* bytes of one block and elements in it */
__host__ __device__ __forceinline__ int ppu_blk_bytes(uint32_t type)
{
    switch (type) {
    case QT_F32:
        return 4;
    case QT_F16:
    case QT_BF16:
        return 2;
    case QT_Q4_0:
        return 18;
    case QT_Q4_1:
        return 20;
    case QT_Q5_0:
        return 22;
    case QT_Q5_1:
        return 24;
    case QT_Q8_0:
        return 34;
    case QT_Q4_K:
        return 144;
    case QT_Q5_K:
        return 176;
    case QT_Q6_K:
        return 210;
    default:
        return 0;
    }
}

__host__ __device__ __forceinline__ int ppu_blk_elems(uint32_t type)
{
    if (type == QT_F32 || type == QT_F16 || type == QT_BF16)
        return 1;
    if (type == QT_Q4_K || type == QT_Q5_K || type == QT_Q6_K)
        return PPU_QK_K;
    return PPU_QK;
}

/* scale and min of sub-block j (0..7) of a Q4_K / Q5_K block (util/quant.c's scale_min_k4) */
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t *q, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/*
 * Elements [32c, 32c + n) of a row of `type` into out[0..n) as f32 (n is 32
 * except at the end of a row of a plain type).
 */
__device__ __forceinline__ void ppu_deq32(uint32_t type, const uint8_t *row, int c, int n,
                                          float *out)
{
    switch (type) {
    case QT_F32:
        for (int i = 0; i < n; i++)
            out[i] = __uint_as_float(rd32(row + 4 * (32 * c + i)));
        return;
    case QT_F16:
        for (int i = 0; i < n; i++)
            out[i] = h2f(rd16(row + 2 * (32 * c + i)));
        return;
    case QT_BF16:
        for (int i = 0; i < n; i++)
            out[i] = __uint_as_float(rd16(row + 2 * (32 * c + i)) << 16);
        return;
    case QT_Q4_0: {
        const uint8_t *b = row + 18 * c;
        float d = h2f(rd16(b));
        for (int j = 0; j < 16; j++) {
            out[j] = (float)((b[2 + j] & 0xf) - 8) * d;
            out[j + 16] = (float)((b[2 + j] >> 4) - 8) * d;
        }
        return;
    }
    case QT_Q4_1: {
        const uint8_t *b = row + 20 * c;
        float d = h2f(rd16(b)), m = h2f(rd16(b + 2));
        for (int j = 0; j < 16; j++) {
            out[j] = (float)(b[4 + j] & 0xf) * d + m;
            out[j + 16] = (float)(b[4 + j] >> 4) * d + m;
        }
        return;
    }
    case QT_Q5_0:
    case QT_Q5_1: {
        int one = type == QT_Q5_1;
        const uint8_t *b = row + (one ? 24 : 22) * c;
        float d = h2f(rd16(b)), m = one ? h2f(rd16(b + 2)) : 0.0f;
        uint32_t qh = rd32(b + (one ? 4 : 2));
        const uint8_t *qs = b + (one ? 8 : 6);
        for (int j = 0; j < 16; j++) {
            int q0 = (qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4);
            int q1 = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            out[j] = one ? (float)q0 * d + m : (float)(q0 - 16) * d;
            out[j + 16] = one ? (float)q1 * d + m : (float)(q1 - 16) * d;
        }
        return;
    }
    case QT_Q8_0: {
        const uint8_t *b = row + 34 * c;
        float d = h2f(rd16(b));
        for (int j = 0; j < 32; j++)
            out[j] = (float)(int8_t)b[2 + j] * d;
        return;
    }
    case QT_Q4_K:
    case QT_Q5_K: {
        int five = type == QT_Q5_K;
        const uint8_t *b = row + (five ? 176 : 144) * (c / 8);
        int j = c % 8, sc, m;
        float d = h2f(rd16(b)), dmin = h2f(rd16(b + 2));
        scale_min_k4(j, b + 4, &sc, &m);
        float d1 = d * (float)sc, m1 = dmin * (float)m;
        const uint8_t *qh = b + 16, *q = b + (five ? 48 : 16) + 32 * (j / 2);
        int shift = (j & 1) * 4;
        for (int l = 0; l < 32; l++) {
            int v = (q[l] >> shift) & 0xf;
            if (five)
                v |= ((qh[l] >> j) & 1) << 4;
            out[l] = d1 * (float)v - m1;
        }
        return;
    }
    case QT_Q6_K: {
        const uint8_t *b = row + 210 * (c / 8);
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *scales = (const int8_t *)(b + 192);
        float d = h2f(rd16(b + 208));
        for (int i = 0; i < 32; i++) {
            int e = 32 * (c % 8) + i;
            int h = e / 128, k = (e % 128) / 32, l = e % 32;
            int lo = (ql[64 * h + 32 * (k & 1) + l] >> (k < 2 ? 0 : 4)) & 0xf;
            int hi = (qh[32 * h + l] >> (2 * k)) & 3;
            out[i] = d * (float)scales[e / 16] * (float)((lo | (hi << 4)) - 32);
        }
        return;
    }
    default:
        for (int i = 0; i < n; i++)
            out[i] = 0.0f;
    }
}

#endif

/*
 * device/ppu/matmul.cu - y[T x rows] = x[T x cols] . w^T for every GGUF type
 * the CPU backend serves.
 *
 * As on the CPU, Q4_0, Q5_0 and Q8_0 weights meet activations quantized to
 * Q8_0 blocks, Q4_1 and Q5_1 weights Q8_1 blocks (scale and scaled sum
 * rounded to f16, values x * 127/amax rounded to even), with an integer dot
 * per block; float and K-quant weights are dequantized 32 at a time and
 * dotted in f32.  One warp computes a row for up to 8 tokens: lane l takes
 * the row's 32-element chunks l, l + 32, ... in order, and the 32 lanes'
 * sums meet in a fixed butterfly.  Which lane sums what depends on the
 * row's width alone, so every (row, token) is the same bits whatever T is:
 * the backend is batch-invariant.  No cuBLAS on this path.
 */
#include <errno.h>
#include <math.h>

#include "device/ppu/internal.h"
#include "device/ppu/quant.cuh"

#define MM_ROWS 4   /* warps (rows) per block */
#define MM_TOKENS 8 /* tokens per block */

enum { ACT_F32, ACT_Q8_0, ACT_Q8_1 };

/* one quantized activation chunk (Q8_0: s unused) */
struct q8blk {
    float d, s;
    int8_t qs[32];
};

static int act_fmt(uint32_t type)
{
    switch (type) {
    case QT_Q4_0:
    case QT_Q5_0:
    case QT_Q8_0:
        return ACT_Q8_0;
    case QT_Q4_1:
    case QT_Q5_1:
        return ACT_Q8_1;
    default:
        return ACT_F32;
    }
}

extern "C" int ppu_matmul_type_ok(uint32_t type)
{
    return ppu_blk_bytes(type) > 0;
}

/* one thread per (token, chunk): amax / 127 as the scale, as the CPU's quant_block */
__global__ void quant_k(const float *x, int64_t cols, int nch, int T, struct q8blk *a)
{
    int64_t id = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= (int64_t)T * nch)
        return;
    int t = (int)(id / nch), c = (int)(id % nch);
    const float *xr = x + t * cols + 32 * c;
    float amax = 0.0f;
    for (int j = 0; j < 32; j++)
        amax = fmaxf(amax, fabsf(xr[j]));
    float d = amax / 127.0f, inv = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; j++) {
        int q = (int)rintf(xr[j] * inv);
        a[id].qs[j] = (int8_t)q;
        sum += q;
    }
    a[id].d = __half2float(__float2half_rn(d));
    a[id].s = __half2float(__float2half_rn(d * (float)sum));
}

/* chunk c of a Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 row as integers (offsets applied), its scale and min */
__device__ __forceinline__ void wq32(uint32_t type, const uint8_t *row, int c, int *q, float *d,
                                     float *m)
{
    *m = 0.0f;
    switch (type) {
    case QT_Q4_0:
    case QT_Q4_1: {
        int one = type == QT_Q4_1;
        const uint8_t *b = row + (one ? 20 : 18) * c, *qs = b + (one ? 4 : 2);
        *d = h2f(rd16(b));
        if (one)
            *m = h2f(rd16(b + 2));
        int off = one ? 0 : 8;
        for (int j = 0; j < 16; j++) {
            q[j] = (qs[j] & 0xf) - off;
            q[j + 16] = (qs[j] >> 4) - off;
        }
        return;
    }
    case QT_Q5_0:
    case QT_Q5_1: {
        int one = type == QT_Q5_1;
        const uint8_t *b = row + (one ? 24 : 22) * c, *qs = b + (one ? 8 : 6);
        *d = h2f(rd16(b));
        if (one)
            *m = h2f(rd16(b + 2));
        uint32_t qh = rd32(b + (one ? 4 : 2));
        int off = one ? 0 : 16;
        for (int j = 0; j < 16; j++) {
            q[j] = ((qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4)) - off;
            q[j + 16] = ((qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4)) - off;
        }
        return;
    }
    default: { /* Q8_0 */
        const uint8_t *b = row + 34 * c;
        *d = h2f(rd16(b));
        for (int j = 0; j < 32; j++)
            q[j] = (int8_t)b[2 + j];
        return;
    }
    }
}

__global__ void matmul_k(const uint8_t *w, uint32_t type, int64_t rows, int64_t cols,
                         size_t row_bytes, int fmt, const float *x, const struct q8blk *a, int T,
                         float *y)
{
    int lane = threadIdx.x % 32;
    int64_t r = (int64_t)blockIdx.x * MM_ROWS + threadIdx.x / 32;
    int t0 = blockIdx.y * MM_TOKENS, nt = T - t0 < MM_TOKENS ? T - t0 : MM_TOKENS;
    if (r >= rows)
        return;
    const uint8_t *row = w + (size_t)r * row_bytes;
    int nch = (int)((cols + 31) / 32);
    float part[MM_TOKENS];
    for (int j = 0; j < MM_TOKENS; j++)
        part[j] = 0.0f;
    for (int c = lane; c < nch; c += 32) {
        if (fmt == ACT_F32) {
            int n = cols - 32 * (int64_t)c < 32 ? (int)(cols - 32 * (int64_t)c) : 32;
            float wv[32];
            ppu_deq32(type, row, c, n, wv);
            for (int j = 0; j < nt; j++) {
                const float *xr = x + (t0 + j) * cols + 32 * c;
                float s = part[j];
                for (int i = 0; i < n; i++)
                    s = fmaf(wv[i], xr[i], s);
                part[j] = s;
            }
        } else {
            int q[32];
            float d, m;
            wq32(type, row, c, q, &d, &m);
            for (int j = 0; j < nt; j++) {
                const struct q8blk *ab = a + (size_t)(t0 + j) * nch + c;
                int isum = 0;
                for (int i = 0; i < 32; i++)
                    isum += q[i] * ab->qs[i];
                part[j] = fmaf(d * ab->d, (float)isum, part[j]);
                if (fmt == ACT_Q8_1)
                    part[j] = fmaf(m, ab->s, part[j]);
            }
        }
    }
    for (int j = 0; j < nt; j++) {
        float s = part[j];
        for (int k = 16; k > 0; k /= 2)
            s += __shfl_xor_sync(0xffffffffu, s, k);
        if (lane == 0)
            y[(size_t)(t0 + j) * rows + r] = s;
    }
}

extern "C" int ppu_matmul(struct ppu *p, const struct dev_weight *w, const float *x, int T,
                          float *y)
{
    if (!ppu_matmul_type_ok(w->type) || w->packed || T < 0 || w->cols <= 0 || w->rows <= 0 ||
        w->cols % ppu_blk_elems(w->type))
        return -EINVAL;
    if (!T)
        return 0;
    int fmt = act_fmt(w->type), nch = (int)((w->cols + 31) / 32);
    struct q8blk *a = NULL;
    if (fmt != ACT_F32) {
        size_t need = sizeof(struct q8blk) * (size_t)nch * (size_t)T;
        if (need > p->cap_act) {
            if (ppu_retire(p, p->act))
                return -ENOMEM;
            p->act = NULL;
            p->cap_act = 0;
            if (cudaMalloc(&p->act, need) != cudaSuccess)
                return -ENOMEM;
            p->cap_act = need;
        }
        a = (struct q8blk *)p->act;
        size_t n = (size_t)nch * (size_t)T;
        quant_k<<<(unsigned)((n + 127) / 128), 128, 0, p->stream>>>(x, w->cols, nch, T, a);
        if (ppu_launched())
            return -EIO;
    }
    dim3 grid((unsigned)((w->rows + MM_ROWS - 1) / MM_ROWS),
              (unsigned)((T + MM_TOKENS - 1) / MM_TOKENS));
    matmul_k<<<grid, 32 * MM_ROWS, 0, p->stream>>>((const uint8_t *)w->data, w->type, w->rows,
                                                   w->cols, w->row_bytes, fmt, x, a, T, y);
    return ppu_launched();
}

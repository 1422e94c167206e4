/*
 * device/ppu/attention.cu - causal attention over the paged K/V cache.
 *
 * One block of 128 threads per (token, query head).  Positions 0..pos go in
 * tiles of 128, one position per thread: its score q.k (q rounded to f16
 * for an f16 cache, as on the CPU; the dot summed in order of the head's
 * dimensions); then the tile's maximum and sum of exponentials by one fixed
 * tree, and an online-softmax update of the output, each output dimension
 * summed over the tile's positions in order.  Nothing depends on what else
 * is in the batch or on how long other sequences are: the same bits for a
 * token alone or inside any batch.
 */
#include <errno.h>
#include <math.h>

#include "device/ppu/internal.h"
#include "device/ppu/quant.cuh"

#define ATT_THREADS 128
#define ATT_MAX_HD (2 * ATT_THREADS)

__device__ __forceinline__ float kv_at(const void *c, int f16, size_t i)
{
    return f16 ? __half2float(((const __half *)c)[i]) : ((const float *)c)[i];
}

/* red[0] = max or sum of red[0..ATT_THREADS), by a fixed tree; every thread returns it */
__device__ float block_reduce(float *red, int is_max)
{
    for (int k = ATT_THREADS / 2; k > 0; k /= 2) {
        if ((int)threadIdx.x < k)
            red[threadIdx.x] = is_max ? fmaxf(red[threadIdx.x], red[threadIdx.x + k])
                                      : red[threadIdx.x] + red[threadIdx.x + k];
        __syncthreads();
    }
    float r = red[0];
    __syncthreads();
    return r;
}

__global__ void attn_k(const void *kc, const void *vc, int f16, int bs, int n_kv, int hd,
                       int n_heads, const int32_t *pos, const int32_t *seq, const int32_t *tab,
                       const int32_t *tab_off, const float *q, float scale, float *out)
{
    extern __shared__ float sh[];
    float *qs = sh, *sc = sh + hd, *red = sc + ATT_THREADS;
    int t = blockIdx.x / n_heads, h = blockIdx.x % n_heads, kh = h / (n_heads / n_kv);
    int tid = threadIdx.x;
    const float *qh = q + ((size_t)t * n_heads + h) * hd;
    for (int d = tid; d < hd; d += ATT_THREADS)
        qs[d] = f16 ? __half2float(__float2half_rn(qh[d])) : qh[d];
    __syncthreads();
    size_t row = (size_t)n_kv * hd, off = (size_t)kh * hd;
    const int32_t *blocks = tab + tab_off[seq[t]];
    int n = pos[t] + 1;
    float m = -INFINITY, l = 0.0f, acc[2] = {0.0f, 0.0f};
    for (int p0 = 0; p0 < n; p0 += ATT_THREADS) {
        int p = p0 + tid;
        float s = -INFINITY;
        if (p < n) {
            size_t slot = (size_t)blocks[p / bs] * bs + (size_t)(p % bs);
            float dot = 0.0f;
            for (int d = 0; d < hd; d++)
                dot = fmaf(qs[d], kv_at(kc, f16, slot * row + off + d), dot);
            s = dot * scale;
        }
        red[tid] = s;
        __syncthreads();
        float mnew = fmaxf(m, block_reduce(red, 1));
        float e = p < n ? expf(s - mnew) : 0.0f;
        sc[tid] = e;
        red[tid] = e;
        __syncthreads();
        float lt = block_reduce(red, 0), corr = expf(m - mnew);
        l = l * corr + lt;
        int cnt = n - p0 < ATT_THREADS ? n - p0 : ATT_THREADS;
        for (int i = 0; i < 2; i++) {
            int d = tid + i * ATT_THREADS;
            if (d >= hd)
                break;
            float a = acc[i] * corr;
            for (int j = 0; j < cnt; j++) {
                int pj = p0 + j;
                size_t slot = (size_t)blocks[pj / bs] * bs + (size_t)(pj % bs);
                a = fmaf(sc[j], kv_at(vc, f16, slot * row + off + d), a);
            }
            acc[i] = a;
        }
        m = mnew;
        __syncthreads(); /* sc is rewritten by the next tile */
    }
    float *o = out + ((size_t)t * n_heads + h) * hd;
    for (int i = 0; i < 2; i++) {
        int d = tid + i * ATT_THREADS;
        if (d < hd)
            o[d] = acc[i] / l;
    }
}

extern "C" int ppu_attention(struct ppu *p, const struct dev_kv *kv, const float *q, int n_heads,
                             float scale, float *out)
{
    if (kv->n_kv_heads <= 0 || n_heads % kv->n_kv_heads || kv->head_dim > ATT_MAX_HD ||
        kv->head_dim <= 0 || ppu_batch_fits(p, kv))
        return -EINVAL;
    if (!p->b.n)
        return 0;
    size_t shared = sizeof(float) * ((size_t)kv->head_dim + 2 * ATT_THREADS);
    attn_k<<<(unsigned)p->b.n *(unsigned)n_heads, ATT_THREADS, shared, p->stream>>>(
        kv->k, kv->v, kv->type == QT_F16, kv->block_size, kv->n_kv_heads, kv->head_dim, n_heads,
        p->b.pos, p->b.seq, p->b.tab, p->b.tab_off, q, scale, out);
    return ppu_launched();
}

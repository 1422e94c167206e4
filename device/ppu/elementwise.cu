/*
 * device/ppu/elementwise.cu - the per-token and per-element ops: embedding,
 * RMSNorm, RoPE, SiLU*up, adds, the K/V store and the logits-row gather.
 * Each output element is computed by one thread (or one block's fixed
 * reduction tree), the same way whatever the batch holds.
 */
#include <errno.h>
#include <math.h>

#include "device/ppu/internal.h"
#include "device/ppu/quant.cuh"

int ppu_launched(void)
{
    return cudaGetLastError() == cudaSuccess ? 0 : -EIO;
}

static unsigned blocks_for(size_t n, unsigned threads)
{
    return (unsigned)((n + threads - 1) / threads);
}

/* one block per token: its row of the table, 32 elements per thread step */
__global__ void embed_k(const uint8_t *table, uint32_t type, int64_t cols, size_t row_bytes,
                        const int32_t *tokens, float *out)
{
    int t = blockIdx.x;
    const uint8_t *row = table + (size_t)tokens[t] * row_bytes;
    float v[32];
    for (int64_t c = threadIdx.x; c * 32 < cols; c += blockDim.x) {
        int n = cols - c * 32 < 32 ? (int)(cols - c * 32) : 32;
        ppu_deq32(type, row, (int)c, n, v);
        for (int i = 0; i < n; i++)
            out[t * cols + c * 32 + i] = v[i];
    }
}

extern "C" int ppu_embed(struct ppu *p, const struct dev_weight *w, float *out)
{
    if (w->packed || !p->b.has_tokens || !ppu_matmul_type_ok(w->type))
        return -EINVAL;
    for (int t = 0; t < p->b.n; t++) /* the host copy of the ids, against this table */
        if (p->b.h_tokens[t] < 0 || p->b.h_tokens[t] >= w->rows)
            return -EINVAL;
    if (!p->b.n)
        return 0;
    embed_k<<<p->b.n, 64, 0, p->stream>>>((const uint8_t *)w->data, w->type, w->cols, w->row_bytes,
                                          p->b.tokens, out);
    return ppu_launched();
}

/* one block of 256 per row: each thread sums its elements in double, then a fixed tree */
__global__ void rmsnorm_k(const float *x, const float *w, int n, float eps, float *out)
{
    __shared__ double part[256];
    const float *xr = x + (size_t)blockIdx.x * n;
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s += (double)(xr[i] * xr[i]);
    part[threadIdx.x] = s;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k /= 2) {
        if ((int)threadIdx.x < k)
            part[threadIdx.x] += part[threadIdx.x + k];
        __syncthreads();
    }
    float scale = 1.0f / sqrtf((float)(part[0] / n) + eps);
    float *o = out + (size_t)blockIdx.x * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        o[i] = w ? (xr[i] * scale) * w[i] : xr[i] * scale;
}

extern "C" int ppu_rmsnorm(struct ppu *p, const float *x, const float *w, int T, int n, float eps,
                           float *out)
{
    if (T < 0 || n <= 0)
        return -EINVAL;
    if (!T)
        return 0;
    rmsnorm_k<<<T, 256, 0, p->stream>>>(x, w, n, eps, out);
    return ppu_launched();
}

/* one thread per (token, pair): the angle as the CPU builds it (pos * theta_scale^i) */
__global__ void rope_k(float *x, const int32_t *pos, int T, int n_heads, int head_dim, int n_rot,
                       int neox, float freq_base, float freq_scale, const float *ff)
{
    int half_rot = n_rot / 2;
    int64_t id = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= (int64_t)T * half_rot)
        return;
    int t = (int)(id / half_rot), i = (int)(id % half_rot);
    const float theta_scale = powf(freq_base, -2.0f / (float)n_rot);
    float theta = (float)pos[t];
    for (int k = 0; k < i; k++)
        theta *= theta_scale;
    float f = ff ? ff[i] : 1.0f, sn, cs;
    sincosf(freq_scale * (theta / f), &sn, &cs);
    int a = neox ? i : 2 * i, b = neox ? i + half_rot : 2 * i + 1;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + ((size_t)t * n_heads + h) * head_dim;
        float x0 = v[a], x1 = v[b];
        v[a] = fmaf(x0, cs, -(x1 * sn));
        v[b] = fmaf(x0, sn, x1 * cs);
    }
}

extern "C" int ppu_rope(struct ppu *p, float *x, int n_heads, int head_dim,
                        const struct dev_rope *r)
{
    if (r->n_rot > head_dim || r->n_rot % 2)
        return -EINVAL;
    size_t n = (size_t)p->b.n * (size_t)(r->n_rot / 2);
    if (!n)
        return 0;
    rope_k<<<blocks_for(n, 128), 128, 0, p->stream>>>(x, p->b.pos, p->b.n, n_heads, head_dim,
                                                      r->n_rot, r->neox, r->freq_base,
                                                      r->freq_scale, r->freq_factors);
    return ppu_launched();
}

__global__ void silu_mul_k(const float *g, const float *u, size_t n, float *out)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

extern "C" int ppu_silu_mul(struct ppu *p, const float *gate, const float *up, int T, int n,
                            float *out)
{
    size_t len = (size_t)T * (size_t)n;
    if (!len)
        return 0;
    silu_mul_k<<<blocks_for(len, 256), 256, 0, p->stream>>>(gate, up, len, out);
    return ppu_launched();
}

__global__ void add_bias_k(float *x, const float *b, size_t len, int n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len)
        x[i] += b[i % n];
}

extern "C" int ppu_add_bias(struct ppu *p, float *x, const float *b, int T, int n)
{
    size_t len = (size_t)T * (size_t)n;
    if (!len)
        return 0;
    add_bias_k<<<blocks_for(len, 256), 256, 0, p->stream>>>(x, b, len, n);
    return ppu_launched();
}

__global__ void add_k(float *x, const float *y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] += y[i];
}

extern "C" int ppu_add(struct ppu *p, float *x, const float *y, size_t n)
{
    if (!n)
        return 0;
    add_k<<<blocks_for(n, 256), 256, 0, p->stream>>>(x, y, n);
    return ppu_launched();
}

__global__ void gather_k(const float *x, int cols, const int32_t *rows, int n, float *out)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)n * cols)
        out[i] = x[(size_t)rows[i / cols] * cols + i % cols];
}

extern "C" int ppu_gather_rows(struct ppu *p, const float *x, int cols, float *out)
{
    size_t n = (size_t)p->b.n_out * (size_t)cols;
    if (!n)
        return 0;
    gather_k<<<blocks_for(n, 256), 256, 0, p->stream>>>(x, cols, p->b.rows, p->b.n_out, out);
    return ppu_launched();
}

/* one thread per (token, element) of k and v: into its slot, as f16 or f32 */
__global__ void kv_store_k(void *kc, void *vc, int f16, int bs, size_t row, const int32_t *pos,
                           const int32_t *seq, const int32_t *tab, const int32_t *tab_off,
                           const float *k, const float *v, int T)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * row)
        return;
    int t = (int)(i / row);
    size_t e = i % row;
    int32_t p = pos[t];
    size_t slot = (size_t)tab[tab_off[seq[t]] + p / bs] * bs + (size_t)(p % bs);
    if (f16) {
        ((__half *)kc)[slot * row + e] = __float2half_rn(k[i]);
        ((__half *)vc)[slot * row + e] = __float2half_rn(v[i]);
    } else {
        ((float *)kc)[slot * row + e] = k[i];
        ((float *)vc)[slot * row + e] = v[i];
    }
}

extern "C" int ppu_kv_store(struct ppu *p, const struct dev_kv *kv, const float *k, const float *v)
{
    if (ppu_batch_fits(p, kv))
        return -EINVAL;
    size_t row = (size_t)kv->n_kv_heads * kv->head_dim, n = (size_t)p->b.n * row;
    if (!n)
        return 0;
    kv_store_k<<<blocks_for(n, 256), 256, 0, p->stream>>>(kv->k, kv->v, kv->type == QT_F16,
                                                          kv->block_size, row, p->b.pos, p->b.seq,
                                                          p->b.tab, p->b.tab_off, k, v, p->b.n);
    return ppu_launched();
}

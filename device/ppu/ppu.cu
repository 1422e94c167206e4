/*
 * device/ppu/ppu.cu - the PPU backend: device selection, memory, the batch
 * descriptor, and the dev_ops table over the kernels in elementwise.cu,
 * attention.cu and matmul.cu.
 *
 * Every op is queued on one stream; the host waits only in download (the
 * logits) and in upload at load.  Every CUDA error becomes a negative code:
 * -ENOMEM for a failed allocation, -EIO for anything else; nothing aborts.
 * Weights are copied to the device as the GGUF stores them (pack_weight is
 * not offered: the kernels read the GGUF layouts).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device/ppu/internal.h"
#include "device/ppu/ppu.h"

static int fail(char *err, size_t errlen, int rc, const char *what, cudaError_t e)
{
    if (err && errlen)
        snprintf(err, errlen, "device 'ppu': %s (%s)", what, ppu_err_str(e));
    return rc;
}

/* CINFER_PPU_GRAPHS: 1 (the default) or 0, else -EINVAL */
static int graphs_setting(char *err, size_t errlen)
{
    const char *v = getenv("CINFER_PPU_GRAPHS");
    if (!v || !strcmp(v, "1"))
        return 1;
    if (!strcmp(v, "0"))
        return 0;
    if (err && errlen)
        snprintf(err, errlen, "device 'ppu': CINFER_PPU_GRAPHS is '%.32s'; it must be 0 or 1", v);
    return -EINVAL;
}

extern "C" int dev_ppu_probe(char *err, size_t errlen)
{
    if (graphs_setting(err, errlen) < 0)
        return -EINVAL;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n < 1)
        return fail(err, errlen, -ENODEV, "no " PPU_VENDOR " device was found",
                    e != cudaSuccess ? e : cudaErrorNoDevice);
    cudaDeviceProp prop;
    e = cudaGetDeviceProperties(&prop, 0);
    if (e != cudaSuccess)
        return fail(err, errlen, -ENODEV, "cannot read device 0's properties", e);
    if (prop.major < PPU_MIN_CC_MAJOR) {
        if (err && errlen)
            snprintf(err, errlen,
                     "device 'ppu': %s has compute capability %d.%d; cinfer needs %d.0", prop.name,
                     prop.major, prop.minor, PPU_MIN_CC_MAJOR);
        return -ENODEV;
    }
    return 0;
}

/* ---- memory ------------------------------------------------------------------- */

static void *ppu_alloc(void *ctx, size_t n)
{
    (void)ctx;
    void *p = NULL;
    return cudaMalloc(&p, n ? n : 1) == cudaSuccess ? p : NULL;
}

static void ppu_free(void *ctx, void *p)
{
    ppu_flush((struct ppu *)ctx);
    cudaFree(p);
}

/* a copy the host waits for, after the step's graph (if one is being captured) is launched */
static int copy_wait(struct ppu *p, void *dst, const void *src, size_t n, cudaMemcpyKind kind)
{
    if (ppu_flush(p) || cudaMemcpyAsync(dst, src, n, kind, p->stream) != cudaSuccess ||
        cudaStreamSynchronize(p->stream) != cudaSuccess)
        return -EIO;
    return 0;
}

static int ppu_upload(void *ctx, void *dst, const void *src, size_t n)
{
    return copy_wait((struct ppu *)ctx, dst, src, n, cudaMemcpyHostToDevice);
}

/* the one wait of a step: the logits */
static int ppu_download(void *ctx, void *dst, const void *src, size_t n)
{
    return copy_wait((struct ppu *)ctx, dst, src, n, cudaMemcpyDeviceToHost);
}

static const void *ppu_weight_load(void *ctx, const void *host, size_t n)
{
    void *d = ppu_alloc(ctx, n);
    if (d && ppu_upload(ctx, d, host, n)) {
        cudaFree(d);
        d = NULL;
    }
    return d;
}

static void ppu_weight_free(void *ctx, const void *p)
{
    ppu_flush((struct ppu *)ctx);
    cudaFree((void *)p);
}

/* most of the free memory: the rest stays for activations and the runtime */
static int ppu_mem(void *ctx, size_t *usable, size_t *total)
{
    (void)ctx;
    size_t fr = 0;
    if (ppu_mem_info(&fr, total) != cudaSuccess)
        return -EIO;
    *usable = (size_t)((double)fr * PPU_FREE_MEM_SHARE);
    return 0;
}

/* ---- the batch ---------------------------------------------------------------- */

static size_t up8(size_t n)
{
    return (n + 7) / 8 * 8;
}

static int grow_host(struct ppu_batch *b, size_t n)
{
    if (n <= b->cap_h)
        return 0;
    int32_t *t = (int32_t *)realloc(b->h_tokens, n * sizeof(int32_t));
    if (t)
        b->h_tokens = t;
    struct dev_seq_bounds *sb =
        t ? (struct dev_seq_bounds *)realloc(b->h_bounds, n * sizeof(*sb)) : NULL;
    if (!sb)
        return -ENOMEM;
    b->h_bounds = sb;
    b->cap_h = n;
    return 0;
}

static int ppu_set_batch(void *ctx, const struct dev_batch *in)
{
    struct ppu *p = (struct ppu *)ctx;
    struct ppu_batch *b = &p->b;
    int n = in->n, ns = in->n_seq, no = in->n_out;
    size_t tab;
    if (dev_batch_check(in, &tab))
        return -EINVAL;
    if (ppu_flush(p)) /* the last step, when it wanted no logits */
        return -EIO;
    /*
     * the device buffer's layout, int32 arrays: tokens pos seq rows tab tab_off (the chunk
     * flags are not needed: the PPU has one attention order for every token)
     */
    size_t o_tok = 0, o_pos = o_tok + up8(n), o_seq = o_pos + up8(n), o_rows = o_seq + up8(n),
           o_tab = o_rows + up8(no), o_off = o_tab + up8(tab), n32 = o_off + up8(ns);
    size_t bytes = n32 * sizeof(int32_t);
    size_t hn = (size_t)(n > ns ? n : ns) + 1;
    if (grow_host(b, hn))
        return -ENOMEM;
    if (bytes > b->cap_staging) {
        cudaStreamSynchronize(p->stream); /* the last batch's copy may still read it */
        cudaFreeHost(b->staging);
        b->staging = NULL;
        b->cap_staging = 0;
        if (cudaMallocHost(&b->staging, bytes) != cudaSuccess)
            return -ENOMEM;
        b->cap_staging = bytes;
    }
    if (bytes > b->cap_dev) {
        cudaStreamSynchronize(p->stream); /* the last step's kernels may still read it */
        cudaFree(b->dev);
        b->dev = NULL;
        b->cap_dev = 0;
        if (cudaMalloc(&b->dev, bytes) != cudaSuccess)
            return -ENOMEM;
        b->cap_dev = bytes;
    }
    cudaStreamSynchronize(p->stream); /* the staging buffer is about to be rewritten */
    int32_t *h = (int32_t *)b->staging;
    size_t off = 0;
    for (int s = 0; s < ns; s++) {
        memcpy(h + o_tab + off, in->tables[s], sizeof(int32_t) * (size_t)in->n_blocks[s]);
        h[o_off + (size_t)s] = (int32_t)off;
        off += (size_t)in->n_blocks[s];
    }
    dev_batch_bounds(in, b->h_bounds);
    for (int t = 0; t < n; t++) {
        int32_t sq = in->seq ? in->seq[t] : 0;
        h[o_tok + t] = in->tokens ? in->tokens[t] : 0;
        h[o_pos + t] = in->pos[t];
        h[o_seq + t] = sq;
        b->h_tokens[t] = in->tokens ? in->tokens[t] : -1;
    }
    for (int i = 0; i < no; i++)
        h[o_rows + i] = in->out_rows[i];
    if (cudaMemcpyAsync(b->dev, b->staging, bytes, cudaMemcpyHostToDevice, p->stream) !=
        cudaSuccess)
        return -EIO;
    int32_t *d = (int32_t *)b->dev;
    b->tokens = d + o_tok;
    b->pos = d + o_pos;
    b->seq = d + o_seq;
    b->rows = d + o_rows;
    b->tab = d + o_tab;
    b->tab_off = d + o_off;
    b->n = n;
    b->n_seq = ns;
    b->n_out = no;
    b->has_tokens = in->tokens != NULL;
    b->has_seq = in->seq != NULL;
    ppu_capture_begin(p); /* the ops up to the next wait become one graph */
    return 0;
}

extern "C" int ppu_batch_fits(const struct ppu *p, const struct dev_kv *kv)
{
    return p->b.has_seq ? dev_batch_fits(p->b.h_bounds, p->b.n_seq, kv) : -EINVAL;
}

/* ---- the ops table ------------------------------------------------------------ */

static void ppu_destroy(void *ctx)
{
    struct ppu *p = (struct ppu *)ctx;
    if (!p)
        return;
    ppu_graphs_free(p);
    cudaFree(p->b.dev);
    cudaFreeHost(p->b.staging);
    cudaFree(p->act);
    free(p->b.h_tokens);
    free(p->b.h_bounds);
    cudaStreamDestroy(p->stream);
    free(p);
}

static const char *ppu_kernels(void *ctx)
{
    struct ppu *p = (struct ppu *)ctx;
    if (p->graph_error != cudaSuccess)
        snprintf(p->kernels, sizeof(p->kernels), "%s, graphs off after: %s", p->name,
                 ppu_err_str(p->graph_error));
    else
        snprintf(p->kernels, sizeof(p->kernels), "%s, %s", p->name,
                 p->graphs ? "graphs" : "no graphs");
    return p->kernels;
}

#define P(ctx) ((struct ppu *)(ctx))

static int op_matmul(void *ctx, const struct dev_weight *w, const float *x, int T, float *y)
{
    return ppu_matmul(P(ctx), w, x, T, y);
}
static int op_embed(void *ctx, const struct dev_weight *t, float *out)
{
    return ppu_embed(P(ctx), t, out);
}
static int op_rmsnorm(void *ctx, const float *x, const float *w, int T, int n, float eps,
                      float *out)
{
    return ppu_rmsnorm(P(ctx), x, w, T, n, eps, out);
}
static int op_rope(void *ctx, float *x, int nh, int hd, const struct dev_rope *r)
{
    return ppu_rope(P(ctx), x, nh, hd, r);
}
static int op_kv_store(void *ctx, const struct dev_kv *kv, const float *k, const float *v)
{
    return ppu_kv_store(P(ctx), kv, k, v);
}
static int op_attention(void *ctx, const struct dev_kv *kv, const float *q, int nh, float scale,
                        float *out)
{
    return ppu_attention(P(ctx), kv, q, nh, scale, out);
}
static int op_silu_mul(void *ctx, const float *g, const float *u, int T, int n, float *out)
{
    return ppu_silu_mul(P(ctx), g, u, T, n, out);
}
static int op_add_bias(void *ctx, float *x, const float *b, int T, int n)
{
    return ppu_add_bias(P(ctx), x, b, T, n);
}
static int op_add(void *ctx, float *x, const float *y, size_t n)
{
    return ppu_add(P(ctx), x, y, n);
}
static int op_gather_rows(void *ctx, const float *x, int cols, float *out)
{
    return ppu_gather_rows(P(ctx), x, cols, out);
}

static const struct dev_ops dev_ppu_ops = {
    .name = "ppu",
    .destroy = ppu_destroy,
    .kernels = ppu_kernels,
    .alloc = ppu_alloc,
    .free = ppu_free,
    .upload = ppu_upload,
    .download = ppu_download,
    .weight_load = ppu_weight_load,
    .weight_free = ppu_weight_free,
    .mem_info = ppu_mem,
    .set_batch = ppu_set_batch,
    .matmul = op_matmul,
    .matmul_n = NULL,
    .pack_weight = NULL,
    .prefetch = NULL,
    .embed = op_embed,
    .rmsnorm = op_rmsnorm,
    .rope = op_rope,
    .kv_store = op_kv_store,
    .attention = op_attention,
    .silu_mul = op_silu_mul,
    .add_bias = op_add_bias,
    .add = op_add,
    .gather_rows = op_gather_rows,
};

extern "C" int dev_ppu_create(const struct dev_config *cfg, struct dev *out, char *err,
                              size_t errlen)
{
    (void)cfg;
    int rc = dev_ppu_probe(err, errlen);
    if (rc)
        return rc;
    int graphs = graphs_setting(err, errlen);
    struct ppu *p = (struct ppu *)calloc(1, sizeof(*p));
    if (!p)
        return fail(err, errlen, -ENOMEM, "out of memory", cudaErrorMemoryAllocation);
    cudaError_t e = cudaSetDevice(0);
    if (e == cudaSuccess)
        e = cudaGetDeviceProperties(&p->prop, 0);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&p->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        free(p);
        return fail(err, errlen, -ENODEV, "cannot start on device 0", e);
    }
    snprintf(p->name, sizeof(p->name), "sm_%d%d %s", p->prop.major, p->prop.minor, p->prop.name);
    p->graphs = graphs;
    out->ops = &dev_ppu_ops;
    out->ctx = p;
    return 0;
}

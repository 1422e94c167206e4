/*
 * device/dev.h - the device layer: the ops a transformer needs, behind one
 * table of function pointers per backend (CPU today, PPU next).
 *
 * The model calls only the dev_* wrappers below; it never calls intrinsics
 * or CUDA.  Activations are row-major f32 matrices [T rows x n]; a weight is
 * a struct dev_weight in a GGUF tensor type.  Every op computes each output
 * element with one reduction order whatever T is (batch invariance), and
 * quantized matmuls quantize the activations to 8 bits per block as
 * llama.cpp does, so that results track the reference closely.
 */
#ifndef CINFER_DEVICE_DEV_H
#define CINFER_DEVICE_DEV_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" { /* the PPU backend's .cu files include this too */
#endif

/* A 2-D weight: rows of `cols` elements of `type` (enum qt_type). */
struct dev_weight {
    uint32_t type;
    int64_t cols;     /* ne[0], the contiguous dimension */
    int64_t rows;     /* ne[1] */
    size_t row_bytes; /* qt_row_size(type, cols) */
    const void *data; /* rows * row_bytes bytes, on the device */
    /*
     * 0: data is the GGUF's rows.  1: pack_weight rearranged them into the
     * backend's own layout in memory it allocated (free with dev_free); then
     * only matmul and matmul_n may read the weight.
     */
    int packed;
};

/* KV cache storage of one layer as the attention op reads it. */
struct dev_kv {
    void *k, *v;      /* [n_blocks][block_size][n_kv_heads * head_dim] each */
    uint32_t type;    /* QT_F16 or QT_F32 */
    int32_t n_blocks; /* block ids a table may hold: 0 .. n_blocks-1 */
    int block_size;
    int n_kv_heads;
    int head_dim;
};

/*
 * A forward pass's tokens as the host describes them.  dev_set_batch copies
 * it into memory the backend owns, in one call, before the pass's first op;
 * the ops that need token ids, positions or block tables (embed, rope,
 * kv_store, attention, gather_rows) read that copy until the next
 * set_batch.  No host pointer in here is kept.
 */
struct dev_batch {
    int n;                 /* tokens */
    const int32_t *tokens; /* n token ids; NULL: embed refuses */
    const int32_t *pos;    /* n positions in their sequences; t attends to 0..pos[t] */
    const int32_t *seq;    /* n: each token's sequence, 0..n_seq-1; NULL: kv ops refuse */
    const uint8_t *chunk;  /* n: 1 = one of several tokens of its sequence (GEMM order
                            * for attention), 0 = a lone token; NULL: all 0 */
    int n_seq;
    const int32_t *const *tables; /* n_seq block tables (block ids) */
    const int32_t *n_blocks;      /* n_seq: each table's length */
    int n_out;                    /* rows gather_rows takes */
    const int32_t *out_rows;      /* n_out token indices (< n), in output order */
};

struct dev_rope {
    int n_rot; /* rotated dims per head (<= head_dim) */
    int neox;  /* 1: rotate (i, i + n_rot/2) pairs; 0: (2i, 2i+1) */
    float freq_base;
    float freq_scale;          /* 1 / linear scaling factor */
    const float *freq_factors; /* n_rot/2 divisors (Llama 3 rope_freqs), or NULL */
};

struct dev_ops {
    const char *name;
    void (*destroy)(void *ctx);
    /* the kernels this instance runs (a static string) */
    const char *(*kernels)(void *ctx);
    /* device memory: NULL when out of memory; upload/download copy n bytes */
    void *(*alloc)(void *ctx, size_t n);
    void (*free)(void *ctx, void *p);
    int (*upload)(void *ctx, void *dst, const void *src, size_t n);
    int (*download)(void *ctx, void *dst, const void *src, size_t n);
    /*
     * A model tensor's n bytes, in host memory that outlives its use (the
     * GGUF's mmap), placed on the device: returns the device address, or
     * NULL when out of memory.  The CPU backend adopts the host memory as it
     * is (no copy, no RSS) unless fenced.  Free with weight_free.
     */
    const void *(*weight_load)(void *ctx, const void *host, size_t n);
    void (*weight_free)(void *ctx, const void *p);
    /*
     * Optional: the device memory a KV pool may take now (free memory less
     * what the backend keeps for activations) and the total; 0 or -EIO.
     * Backends on host memory leave it NULL.
     */
    int (*mem_info)(void *ctx, size_t *usable, size_t *total);
    /* Takes the next pass's batch (see struct dev_batch); 0, -EINVAL or -ENOMEM. */
    int (*set_batch)(void *ctx, const struct dev_batch *b);
    /* y[T x w->rows] = x[T x w->cols] . w^T */
    int (*matmul)(void *ctx, const struct dev_weight *w, const float *x, int T, float *y);
    /*
     * Optional: y[i] = x . w[i]^T for n (<= DEV_MATMUL_MAX) weights of one type,
     * packing and column count, each result as matmul gives it; the activations
     * are prepared once and the rows of all n shared out as one job.
     */
    int (*matmul_n)(void *ctx, const struct dev_weight *const *w, int n, const float *x, int T,
                    float *const *y);
    /*
     * Optional, at load: lays w out the way this backend's matmul reads
     * fastest, from w->data in host memory (the GGUF's) into new device
     * memory (setting w->packed), or leaves it as it is (then place it with
     * weight_load); the results of matmul are then the backend's packed
     * path's, the same for every T.  Returns 0 or -ENOMEM.
     */
    int (*pack_weight)(void *ctx, struct dev_weight *w);
    /*
     * Optional: a hint that w is read soon (the model gives the matmul that
     * follows attention).  The backend may fetch it into cache alongside its
     * next op; results do not change.
     */
    void (*prefetch)(void *ctx, const struct dev_weight *w);
    /* out[n x cols] = rows tokens[t] of table, dequantized (the batch's n tokens) */
    int (*embed)(void *ctx, const struct dev_weight *table, float *out);
    /* out[t] = x[t] / rms(x[t]) * w (w may be NULL) */
    int (*rmsnorm)(void *ctx, const float *x, const float *w, int T, int n, float eps, float *out);
    /* x[t][h] rotated in place for the batch's pos[t]; x is [n x n_heads*head_dim] */
    int (*rope)(void *ctx, float *x, int n_heads, int head_dim, const struct dev_rope *r);
    /* stores k, v [n x n_kv*head_dim] of each batch token at its position */
    int (*kv_store)(void *ctx, const struct dev_kv *kv, const float *k, const float *v);
    /* out[n x n_heads*head_dim]: causal softmax(q k^T * scale) v over each token's sequence */
    int (*attention)(void *ctx, const struct dev_kv *kv, const float *q, int n_heads, float scale,
                     float *out);
    /* out[t] = silu(gate[t]) * up[t], for T rows of n */
    int (*silu_mul)(void *ctx, const float *gate, const float *up, int T, int n, float *out);
    /* x[t] += b (b has n elements; T rows) */
    int (*add_bias)(void *ctx, float *x, const float *b, int T, int n);
    /* x += y, elementwise over n */
    int (*add)(void *ctx, float *x, const float *y, size_t n);
    /* out[i] = x[out_rows[i]] for the batch's n_out rows of `cols` floats */
    int (*gather_rows)(void *ctx, const float *x, int cols, float *out);
};

/* A backend instance. */
struct dev {
    const struct dev_ops *ops;
    void *ctx;
};

/* How to make a backend (dev_create); zero means the default everywhere. */
struct dev_config {
    int threads; /* CPU worker threads; <= 0: the CPUs this process may use (util/cpus.h) */
    /* CPU only, for tests and reference checks; other backends ignore them */
    int force_scalar; /* 1: the scalar reference path even where AVX2 exists */
    /*
     * The CPU's inner loops: NULL or "auto" (the widest this CPU has, by
     * cpuid), "scalar", "avx2", "avx512", "avxvnni" or "avx512vnni"
     * (device/cpu/avx2.c); naming a path the CPU or the build lacks
     * is an error (dev_create says which).  Every path gives the same bits.
     */
    const char *kernels;
    /*
     * 1: follow llama.cpp's AVX2 arithmetic step for step, for checking
     * against it (slower): pack_weight leaves every weight as the GGUF has
     * it, and a lone token's attention sums in llama.cpp's vector-dot order.
     */
    int exact_llamacpp;
    /*
     * Tests only: device memory is an arena the host cannot touch outside
     * the backend's own ops (PROT_NONE between them), weights are copied
     * into it, and an op given a pointer outside it fails with -EFAULT; so
     * a host read or write of device memory faults.  fenced_mib: the arena
     * (0: 1024).  Results are the same bits as unfenced.
     */
    int fenced;
    int fenced_mib;
};

/*
 * Makes the backend `name`: "cpu", "ppu" or "auto" (the PPU when one is
 * built in and present, else the CPU).  Returns 0, or -EINVAL for an
 * unknown name and -ENODEV for a backend this build or machine lacks, each
 * with a one-line message in err (may be NULL); -ENOMEM or -errno when it
 * cannot start.  On success err is empty, except after "auto" passed over a
 * built-in PPU backend: then it says why (no device, ...), for a log line.
 * Free with dev_destroy.
 */
int dev_create(const char *name, const struct dev_config *cfg, struct dev *out, char *err,
               size_t errlen);

/* What dev_create would say of `name` without making anything: 0, -EINVAL or -ENODEV. */
int dev_check(const char *name, char *err, size_t errlen);

/* 0 when dev_config.kernels `name` (NULL: auto) can run here, else -EINVAL and why. */
int dev_kernels_check(const char *name, char *err, size_t errlen);
/*
 * The CPU kernel paths this build has and this CPU runs, space-separated, the
 * one auto takes last: "scalar avx2", "scalar avx2 avx512 avx512vnni".
 */
const char *dev_kernels_here(void);

/*
 * For backends' set_batch: 0 when b is well formed (counts, positions >= 0,
 * sequence indices and logits rows in range, block ids >= 0), with *n_tab
 * the total length of its tables; else -EINVAL.
 */
int dev_batch_check(const struct dev_batch *b, size_t *n_tab);

/* What the kv ops check one sequence of a batch against (dev_batch_bounds). */
struct dev_seq_bounds {
    int32_t n_blocks;  /* its table's length */
    int32_t max_block; /* its largest block id; -1: none */
    int32_t max_pos;   /* the largest position of its tokens; -1: none */
};

/* For a batch dev_batch_check passed: the bounds of each of its n_seq sequences into out. */
void dev_batch_bounds(const struct dev_batch *b, struct dev_seq_bounds *out);

/* 0 when each sequence's positions lie in its table and its blocks in kv, else -EINVAL. */
int dev_batch_fits(const struct dev_seq_bounds *sb, int n_seq, const struct dev_kv *kv);

/* "cpu" or "ppu": the backend d is. */
static inline const char *dev_backend_name(const struct dev *d)
{
    return d->ops->name;
}

/* The kernels the backend runs: "avx2", "avx512vnni", "scalar"... on the CPU. */
static inline const char *dev_kernels_name(const struct dev *d)
{
    return d->ops->kernels(d->ctx);
}

/* The backends this build has, space-separated: "cpu" (and "ppu" when built in). */
const char *dev_built(void);

/* 1 when backend `name` can run `kernels` on this machine ("cpu", "avx2"). */
int dev_has_kernels(const char *name, const char *kernels);

static inline void dev_destroy(struct dev *d)
{
    if (d && d->ops)
        d->ops->destroy(d->ctx);
}

static inline void *dev_alloc(struct dev *d, size_t n)
{
    return d->ops->alloc(d->ctx, n);
}

static inline void dev_free(struct dev *d, void *p)
{
    if (p)
        d->ops->free(d->ctx, p);
}

static inline int dev_upload(struct dev *d, void *dst, const void *src, size_t n)
{
    return d->ops->upload(d->ctx, dst, src, n);
}

static inline int dev_download(struct dev *d, void *dst, const void *src, size_t n)
{
    return d->ops->download(d->ctx, dst, src, n);
}

/* Places w (whose data is the GGUF's host bytes) on the device; 0 or -ENOMEM. */
static inline int dev_weight_load(struct dev *d, struct dev_weight *w)
{
    const void *p = d->ops->weight_load(d->ctx, w->data, (size_t)w->rows * w->row_bytes);
    if (!p)
        return -ENOMEM;
    w->data = p;
    return 0;
}

/* Places n f32 values of host memory on the device; NULL when out of memory. */
static inline const float *dev_vector_load(struct dev *d, const float *host, size_t n)
{
    return (const float *)d->ops->weight_load(d->ctx, host, n * sizeof(float));
}

static inline void dev_weight_free(struct dev *d, const void *p)
{
    if (p)
        d->ops->weight_free(d->ctx, p);
}

/* -ENOSYS when the backend's memory is the host's */
static inline int dev_mem_info(struct dev *d, size_t *usable, size_t *total)
{
    return d->ops->mem_info ? d->ops->mem_info(d->ctx, usable, total) : -ENOSYS;
}

static inline int dev_set_batch(struct dev *d, const struct dev_batch *b)
{
    return d->ops->set_batch(d->ctx, b);
}

static inline int dev_matmul(struct dev *d, const struct dev_weight *w, const float *x, int T,
                             float *y)
{
    return d->ops->matmul(d->ctx, w, x, T, y);
}

#define DEV_MATMUL_MAX 4

/* matmul_n where the backend has it and the weights allow, else n matmuls */
static inline int dev_matmul_n(struct dev *d, const struct dev_weight *const *w, int n,
                               const float *x, int T, float *const *y)
{
    int same = d->ops->matmul_n && n > 1 && n <= DEV_MATMUL_MAX;
    for (int i = 1; same && i < n; i++)
        same = w[i]->type == w[0]->type && w[i]->cols == w[0]->cols && w[i]->packed == w[0]->packed;
    if (same)
        return d->ops->matmul_n(d->ctx, w, n, x, T, y);
    for (int i = 0; i < n; i++) {
        int rc = d->ops->matmul(d->ctx, w[i], x, T, y[i]);
        if (rc)
            return rc;
    }
    return 0;
}

static inline int dev_pack_weight(struct dev *d, struct dev_weight *w)
{
    return d->ops->pack_weight ? d->ops->pack_weight(d->ctx, w) : 0;
}

static inline void dev_prefetch(struct dev *d, const struct dev_weight *w)
{
    if (d->ops->prefetch)
        d->ops->prefetch(d->ctx, w);
}

static inline int dev_embed(struct dev *d, const struct dev_weight *table, float *out)
{
    return d->ops->embed(d->ctx, table, out);
}

static inline int dev_rmsnorm(struct dev *d, const float *x, const float *w, int T, int n,
                              float eps, float *out)
{
    return d->ops->rmsnorm(d->ctx, x, w, T, n, eps, out);
}

static inline int dev_rope(struct dev *d, float *x, int n_heads, int head_dim,
                           const struct dev_rope *r)
{
    return d->ops->rope(d->ctx, x, n_heads, head_dim, r);
}

static inline int dev_kv_store(struct dev *d, const struct dev_kv *kv, const float *k,
                               const float *v)
{
    return d->ops->kv_store(d->ctx, kv, k, v);
}

static inline int dev_attention(struct dev *d, const struct dev_kv *kv, const float *q, int n_heads,
                                float scale, float *out)
{
    return d->ops->attention(d->ctx, kv, q, n_heads, scale, out);
}

static inline int dev_silu_mul(struct dev *d, const float *gate, const float *up, int T, int n,
                               float *out)
{
    return d->ops->silu_mul(d->ctx, gate, up, T, n, out);
}

static inline int dev_add_bias(struct dev *d, float *x, const float *b, int T, int n)
{
    return d->ops->add_bias(d->ctx, x, b, T, n);
}

static inline int dev_add(struct dev *d, float *x, const float *y, size_t n)
{
    return d->ops->add(d->ctx, x, y, n);
}

static inline int dev_gather_rows(struct dev *d, const float *x, int cols, float *out)
{
    return d->ops->gather_rows(d->ctx, x, cols, out);
}

#ifdef __cplusplus
}
#endif

#endif

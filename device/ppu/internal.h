/*
 * device/ppu/internal.h - shared by the PPU backend's .cu files: the
 * backend's state and the kernels' launchers.  Never included outside
 * device/ppu/.
 */
#ifndef CINFER_DEVICE_PPU_INTERNAL_H
#define CINFER_DEVICE_PPU_INTERNAL_H

#include <stdint.h>

#include "device/dev.h"
#include "device/ppu/vendor.h"

/* The current batch on the device (set_batch), one allocation: */
struct ppu_batch {
    int n, n_seq, n_out, has_tokens, has_seq;
    int32_t *tokens;  /* n (device) */
    int32_t *pos;     /* n */
    int32_t *seq;     /* n */
    int32_t *rows;    /* n_out */
    int32_t *tab;     /* the tables back to back */
    int32_t *tab_off; /* n_seq: where each starts in tab */
    /* host copies for checks */
    int32_t *h_tokens;               /* n: the ids, for embed's check against its table */
    struct dev_seq_bounds *h_bounds; /* n_seq: what the kv ops check (dev_batch_fits) */
    size_t cap_h;
    void *dev;      /* the device buffer all the above point into */
    size_t cap_dev; /* its bytes */
    void *staging;  /* pinned host memory the batch is built in */
    size_t cap_staging;
};

/* an instantiated step graph (graph.cu), kept for steps with its node count */
struct ppu_graph {
    cudaGraphExec_t exec;
    size_t nodes;
    unsigned long long used; /* p->clock when last launched */
};
#define PPU_GRAPHS 4

struct ppu {
    int device;
    cudaStream_t stream;
    cudaDeviceProp prop;
    char name[96];     /* "sm_90 NVIDIA H200" */
    char kernels[200]; /* name and whether steps run as graphs */
    struct ppu_batch b;
    void *act; /* quantized activations of a matmul (device) */
    size_t cap_act;
    /* graph.cu */
    int graphs;              /* 1: steps are captured as graphs (CINFER_PPU_GRAPHS) */
    int capturing;           /* the stream is being captured */
    cudaError_t graph_error; /* what turned graphs off, or cudaSuccess */
    struct ppu_graph g[PPU_GRAPHS];
    unsigned long long clock;
    void **retired; /* device buffers freed while capturing: freed after the launch */
    size_t n_retired, cap_retired;
};

#ifdef __cplusplus
extern "C" {
#endif

/* elementwise.cu */
int ppu_embed(struct ppu *p, const struct dev_weight *table, float *out);
int ppu_rmsnorm(struct ppu *p, const float *x, const float *w, int T, int n, float eps, float *out);
int ppu_rope(struct ppu *p, float *x, int n_heads, int head_dim, const struct dev_rope *r);
int ppu_silu_mul(struct ppu *p, const float *gate, const float *up, int T, int n, float *out);
int ppu_add_bias(struct ppu *p, float *x, const float *b, int T, int n);
int ppu_add(struct ppu *p, float *x, const float *y, size_t n);
int ppu_gather_rows(struct ppu *p, const float *x, int cols, float *out);
int ppu_kv_store(struct ppu *p, const struct dev_kv *kv, const float *k, const float *v);
/* attention.cu */
int ppu_attention(struct ppu *p, const struct dev_kv *kv, const float *q, int n_heads, float scale,
                  float *out);
/* matmul.cu */
int ppu_matmul(struct ppu *p, const struct dev_weight *w, const float *x, int T, float *y);
/* 1 when ppu_matmul runs weights of this type */
int ppu_matmul_type_ok(uint32_t type);

/* graph.cu: capture from set_batch; flush (end the capture, launch) before the host waits */
void ppu_capture_begin(struct ppu *p);
int ppu_flush(struct ppu *p);
/* free a device buffer now, or after the captured step ran; 0 or -ENOMEM */
int ppu_retire(struct ppu *p, void *ptr);
void ppu_graphs_free(struct ppu *p);

/* 0 after a launch went in, else -EIO (the launch error is cleared) */
int ppu_launched(void);

/* 0 when every batch token's slot lies in its table and the tables in kv's blocks */
int ppu_batch_fits(const struct ppu *p, const struct dev_kv *kv);

#ifdef __cplusplus
}
#endif

#endif

/*
 * engine/model.h - a transformer read from a GGUF file and run through the
 * device layer.  Architectures: llama (SmolLM2, TinyLlama, Llama 2/3,
 * Mistral), qwen2 (q/k/v biases) and qwen3 (q/k RMSNorm).
 *
 * model_forward() takes a batch of tokens from many sequences at once -
 * prefill chunks and decode tokens mixed - and reads and writes K/V through
 * each token's block table.  The model owns the K/V storage (model_kv);
 * which blocks a sequence uses is the kv-cache module's business.
 */
#ifndef CINFER_ENGINE_MODEL_H
#define CINFER_ENGINE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "device/dev.h"
#include "engine/gguf.h"

enum model_arch { MODEL_LLAMA, MODEL_QWEN2, MODEL_QWEN3 };

struct model_hparams {
    enum model_arch arch;
    int n_vocab;
    int n_embd;
    int n_layer;
    int n_head;
    int n_head_kv;
    int head_dim;
    int n_ff;
    int n_ctx_train;
    float rms_eps;
    struct dev_rope rope;
};

/* Every tensor is on the device (dev_weight_load, dev_vector_load, or packed). */
struct model_layer {
    const float *attn_norm;           /* (n_embd) */
    struct dev_weight wq, wk, wv, wo; /* (n_head*head_dim, n_embd) ... (n_embd, n_head*head_dim) */
    const float *bq, *bk, *bv;        /* qwen2 biases, else NULL */
    const float *q_norm, *k_norm;     /* qwen3 per-head norms (head_dim), else NULL */
    const float *ffn_norm;            /* (n_embd) */
    struct dev_weight w_gate, w_up;   /* (n_ff, n_embd) */
    struct dev_weight w_down;         /* (n_embd, n_ff) */
};

struct model {
    struct model_hparams hp;
    struct dev *dev;
    struct dev_weight tok_embd; /* (n_vocab, n_embd) */
    struct dev_weight output;   /* (n_vocab, n_embd), tok_embd when tied */
    const float *output_norm;   /* (n_embd) */
    struct model_layer *layers;
    int output_shared; /* output.data is tok_embd.data (tied, not packed) */
    float *owned;      /* host f32 copies of vectors the GGUF stores in another type */
    /* what dev_weight_load / dev_vector_load placed, for dev_weight_free */
    const void **placed;
    int n_placed, cap_placed;
    /* activations on the device, grown to the largest batch seen */
    int cap_tokens, cap_logits;
    float *logits_dev; /* (cap_logits, n_vocab): the logits rows of a step */
    /* the batch descriptor's host arrays, grown with cap_tokens: no allocation per step */
    int32_t *h_rows;
    uint8_t *h_chunk;
    float *x, *xb, *xb2, *q, *k, *v, *att, *hb, *hb2, *out_rows;
};

/*
 * The GGUF bytes of the matrices one decode token reads: every layer's seven
 * and the output (a batch-1 step's memory traffic, less the K/V).
 */
size_t model_weight_bytes(const struct model *m);

/* K/V storage for every layer, for n_blocks blocks of block_size tokens. */
struct model_kv {
    struct dev_kv *layers; /* n_layer */
    int n_layer;
    int32_t n_blocks;
    size_t bytes;
};

/* One forward pass: n tokens of n_seq sequences, each token with its position. */
struct model_batch {
    int n;
    const int32_t *tokens;      /* n */
    const int32_t *pos;         /* n: position in its sequence; attends to 0..pos */
    const int32_t *seq;         /* n: its sequence, 0 .. n_seq-1 */
    const uint8_t *want_logits; /* n: 1 for the rows whose logits are returned */
    /*
     * n: the attention order of each token - 1: the GEMM order llama.cpp
     * uses for a multi-token chunk, 0: its vector order for a lone token.
     * NULL: by the batch (1 when the token's sequence has other tokens in
     * it).  A scheduler that gives each token a fixed order (e.g. by prompt
     * or generated) gets the same K/V bits however it splits the work.
     */
    const uint8_t *gemm_order;
    int n_seq;
    const int32_t *const *tables; /* n_seq block tables (kv-cache block ids) */
    const int32_t *n_blocks;      /* n_seq: each table's length */
    /*
     * n, or NULL: 1 for the rows whose final hidden state (after the output
     * norm) is returned in embd, n_embd floats each, in batch order (a row
     * wants logits or its hidden state, not both).
     */
    const uint8_t *want_embd;
    float *embd;
};

/*
 * Reads hyper-parameters and tensors from g (which must outlive the model)
 * and binds them to the device.  Returns 0, or -EINVAL with a message naming
 * the unsupported architecture, missing tensor or bad shape; -ENOMEM.
 */
int model_load(const struct gguf_file *g, struct dev *dev, struct model **out, char *err,
               size_t errlen);
void model_free(struct model *m);

/* Allocates K/V storage: type QT_F16 or QT_F32.  0, -EINVAL or -ENOMEM. */
int model_kv_init(const struct model *m, struct model_kv *kv, int32_t n_blocks, int32_t block_size,
                  uint32_t type);
void model_kv_free(const struct model *m, struct model_kv *kv);
/* Bytes of K/V storage one block takes across all layers. */
size_t model_kv_block_bytes(const struct model *m, int32_t block_size, uint32_t type);

/*
 * Runs the batch; writes n_vocab logits per row that wants them, in batch
 * order, to logits.  Every token's slot must have been allocated in its
 * block table.  Returns 0, -EINVAL (bad token id or position), -ENOMEM.
 */
int model_forward(struct model *m, struct model_kv *kv, const struct model_batch *b, float *logits);

#endif

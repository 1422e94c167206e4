/*
 * engine/model.c - loading a llama-family transformer from GGUF and its
 * batched forward pass over the paged KV cache, written as the math reads.
 */
#include "engine/model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/errmsg.h"
#include "util/quant.h"

struct loader {
    const struct gguf_file *g;
    struct model *m;
    const char *arch;
    char *err;
    size_t errlen;
    float *owned; /* bump allocator for f32 copies */
    size_t used, cap;
};

static int hp_int(struct loader *L, const char *suffix, int dflt, int *out)
{
    char key[128];
    int64_t v;
    snprintf(key, sizeof(key), "%s.%s", L->arch, suffix);
    int rc = gguf_get_int(L->g, key, &v);
    if (rc == -ENOENT && dflt >= 0) {
        *out = dflt;
        return 0;
    }
    if (rc)
        return errmsg(L->err, L->errlen, -EINVAL, "%s is %s", key,
                      rc == -ENOENT ? "missing" : "not an integer");
    if (v <= 0 || v > (1 << 24))
        return errmsg(L->err, L->errlen, -EINVAL, "%s = %lld is out of range", key, (long long)v);
    *out = (int)v;
    return 0;
}

static int hp_float(struct loader *L, const char *suffix, float dflt, float *out)
{
    char key[128];
    double v;
    snprintf(key, sizeof(key), "%s.%s", L->arch, suffix);
    int rc = gguf_get_float(L->g, key, &v);
    if (rc == -ENOENT && dflt >= 0) {
        *out = dflt;
        return 0;
    }
    if (rc || !(v > 0) || !isfinite(v))
        return errmsg(L->err, L->errlen, -EINVAL, "%s is missing or not a positive number", key);
    *out = (float)v;
    return 0;
}

/* A 2-D weight named `name` of shape (cols, rows). */
static int get_weight(struct loader *L, const char *name, int64_t cols, int64_t rows,
                      struct dev_weight *w)
{
    const struct gguf_tensor *t = gguf_find_tensor(L->g, name);
    if (!t)
        return errmsg(L->err, L->errlen, -EINVAL, "tensor %s is missing", name);
    if (t->ne[0] != (uint64_t)cols || t->ne[1] != (uint64_t)rows || t->ne[2] != 1 || t->ne[3] != 1)
        return errmsg(L->err, L->errlen, -EINVAL,
                      "tensor %s has shape (%llu, %llu, %llu), expected (%lld, %lld)", name,
                      (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                      (unsigned long long)t->ne[2], (long long)cols, (long long)rows);
    const struct qt_info *qi = qt_info(t->type);
    if (!qi || !qi->can_dequant)
        return errmsg(L->err, L->errlen, -EINVAL, "tensor %s has type %s, which cinfer cannot run",
                      name, qi ? qi->name : "unknown");
    w->type = t->type;
    w->cols = cols;
    w->rows = rows;
    w->row_bytes = qt_row_size(t->type, (uint64_t)cols);
    w->data = t->data;
    return 0;
}

/* Notes p (from dev_weight_load / dev_vector_load) for model_free; 0 or -ENOMEM. */
static int track(struct model *m, const void *p)
{
    if (m->n_placed == m->cap_placed) {
        int cap = m->cap_placed ? 2 * m->cap_placed : 64;
        const void **q = realloc(m->placed, sizeof(*q) * (size_t)cap);
        if (!q)
            return -ENOMEM;
        m->placed = q;
        m->cap_placed = cap;
    }
    m->placed[m->n_placed++] = p;
    return 0;
}

/* A vector of n elements on the device, as f32; NULL in *out when absent and optional. */
static int get_vector(struct loader *L, const char *name, int64_t n, int optional,
                      const float **out)
{
    *out = NULL;
    const struct gguf_tensor *t = gguf_find_tensor(L->g, name);
    if (!t) {
        if (optional)
            return 0;
        return errmsg(L->err, L->errlen, -EINVAL, "tensor %s is missing", name);
    }
    const struct qt_info *qi = qt_info(t->type);
    if (t->ne[0] != (uint64_t)n || t->ne[1] * t->ne[2] * t->ne[3] != 1 || !qi || !qi->can_dequant ||
        n % qi->blck_size)
        return errmsg(L->err, L->errlen, -EINVAL, "tensor %s is not a vector of %lld numbers", name,
                      (long long)n);
    const float *host = t->data; /* f32 in the file: placed from the mmap */
    if (t->type != QT_F32) {
        if (L->used + (size_t)n > L->cap)
            return errmsg(L->err, L->errlen, -EINVAL, "internal: vector space exhausted at %s",
                          name);
        float *dst = L->owned + L->used;
        qt_dequant(t->type, t->data, dst, (uint64_t)n);
        L->used += (size_t)n;
        host = dst;
    }
    const float *dv = dev_vector_load(L->m->dev, host, (size_t)n);
    if (!dv || track(L->m, dv)) {
        dev_weight_free(L->m->dev, dv);
        return errmsg(L->err, L->errlen, -ENOMEM, "out of memory placing %s", name);
    }
    *out = dv;
    return 0;
}

static int load_hparams(struct loader *L, struct model_hparams *hp)
{
    int rc = hp_int(L, "embedding_length", -1, &hp->n_embd);
    rc = rc ? rc : hp_int(L, "block_count", -1, &hp->n_layer);
    rc = rc ? rc : hp_int(L, "attention.head_count", -1, &hp->n_head);
    rc = rc ? rc : hp_int(L, "attention.head_count_kv", hp->n_head, &hp->n_head_kv);
    rc = rc ? rc : hp_int(L, "feed_forward_length", -1, &hp->n_ff);
    rc = rc ? rc : hp_int(L, "context_length", 2048, &hp->n_ctx_train);
    rc = rc ? rc : hp_float(L, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->rms_eps);
    if (rc)
        return rc;
    if (hp->n_embd % hp->n_head)
        return errmsg(L->err, L->errlen, -EINVAL, "%d heads do not divide n_embd %d", hp->n_head,
                      hp->n_embd);
    rc = hp_int(L, "attention.key_length", hp->n_embd / hp->n_head, &hp->head_dim);
    if (rc)
        return rc;
    if (hp->n_head % hp->n_head_kv)
        return errmsg(L->err, L->errlen, -EINVAL, "%d KV heads do not divide %d heads",
                      hp->n_head_kv, hp->n_head);
    rc = hp_int(L, "rope.dimension_count", hp->head_dim, &hp->rope.n_rot);
    rc = rc ? rc : hp_float(L, "rope.freq_base", 10000.0f, &hp->rope.freq_base);
    if (rc)
        return rc;
    if (hp->rope.n_rot > hp->head_dim || hp->rope.n_rot % 2 || hp->head_dim % 2)
        return errmsg(L->err, L->errlen, -EINVAL, "rope dimension %d does not fit head size %d",
                      hp->rope.n_rot, hp->head_dim);
    hp->rope.neox = hp->arch != MODEL_LLAMA;
    hp->rope.freq_scale = 1.0f;
    char key[128];
    struct gguf_str st;
    snprintf(key, sizeof(key), "%s.rope.scaling.type", L->arch);
    if (gguf_get_str(L->g, key, &st) == 0 && !(st.n == 4 && memcmp(st.p, "none", 4) == 0)) {
        if (!(st.n == 6 && memcmp(st.p, "linear", 6) == 0))
            return errmsg(L->err, L->errlen, -EINVAL,
                          "rope scaling '%.*s' is not supported (only linear)", (int)st.n, st.p);
        float factor;
        rc = hp_float(L, "rope.scaling.factor", -1.0f, &factor);
        if (rc)
            return rc;
        hp->rope.freq_scale = 1.0f / factor;
    }
    return 0;
}

/* a layer's matmul weights, into ws[7]; returns how many */
static int layer_weights(struct model_layer *ly, struct dev_weight **ws)
{
    struct dev_weight *all[] = {&ly->wq,     &ly->wk,   &ly->wv,    &ly->wo,
                                &ly->w_gate, &ly->w_up, &ly->w_down};
    memcpy(ws, all, sizeof(all));
    return (int)(sizeof(all) / sizeof(all[0]));
}

size_t model_weight_bytes(const struct model *m)
{
    size_t n = (size_t)m->output.rows * m->output.row_bytes;
    for (int l = 0; l < m->hp.n_layer; l++) {
        struct dev_weight *ws[7];
        for (int i = 0, k = layer_weights(&m->layers[l], ws); i < k; i++)
            n += (size_t)ws[i]->rows * ws[i]->row_bytes;
    }
    return n;
}

/*
 * Puts w (its data the GGUF's bytes) on the device: in the backend's packed
 * layout when it has one for w (the file's pages then leave memory), else
 * as it is.
 */
static int place(const struct gguf_file *g, struct model *m, struct dev_weight *w)
{
    const void *src = w->data;
    int rc = dev_pack_weight(m->dev, w);
    if (!rc && w->packed)
        gguf_release(g, src, (size_t)w->rows * w->row_bytes);
    if (!rc && !w->packed && !(rc = dev_weight_load(m->dev, w)) && (rc = track(m, w->data)))
        dev_weight_free(m->dev, w->data);
    return rc;
}

int model_load(const struct gguf_file *g, struct dev *dev, struct model **out, char *err,
               size_t errlen)
{
    *out = NULL;
    struct gguf_str a;
    if (gguf_get_str(g, "general.architecture", &a) != 0)
        return errmsg(err, errlen, -EINVAL, "general.architecture is missing");
    char arch[32];
    snprintf(arch, sizeof(arch), "%.*s", (int)(a.n < 31 ? a.n : 31), a.p);
    struct model *m = calloc(1, sizeof(*m));
    if (!m)
        return errmsg(err, errlen, -ENOMEM, "out of memory");
    m->dev = dev;
    struct model_hparams *hp = &m->hp;
    if (strcmp(arch, "llama") == 0)
        hp->arch = MODEL_LLAMA;
    else if (strcmp(arch, "qwen2") == 0)
        hp->arch = MODEL_QWEN2;
    else if (strcmp(arch, "qwen3") == 0)
        hp->arch = MODEL_QWEN3;
    else {
        free(m);
        return errmsg(err, errlen, -EINVAL,
                      "architecture '%s' is not supported (supported: llama, qwen2, qwen3)", arch);
    }
    struct loader L = {.g = g, .m = m, .arch = arch, .err = err, .errlen = errlen};
    int rc = load_hparams(&L, hp);
    const struct gguf_tensor *emb = rc ? NULL : gguf_find_tensor(g, "token_embd.weight");
    if (!rc && !emb)
        rc = errmsg(err, errlen, -EINVAL, "tensor token_embd.weight is missing");
    if (!rc) {
        hp->n_vocab = (int)emb->ne[1];
        rc = get_weight(&L, "token_embd.weight", hp->n_embd, hp->n_vocab, &m->tok_embd);
    }
    int qd = hp->n_head * hp->head_dim, kvd = hp->n_head_kv * hp->head_dim;
    if (!rc) {
        /* room for every vector: norms, biases, per-head norms, rope factors */
        L.cap = (size_t)hp->n_layer * (2 * (size_t)hp->n_embd + qd + 2 * kvd + 2 * hp->head_dim) +
                hp->n_embd + hp->rope.n_rot;
        L.owned = m->owned = malloc(L.cap * sizeof(float));
        m->layers = calloc((size_t)hp->n_layer, sizeof(*m->layers));
        if (!m->owned || !m->layers)
            rc = errmsg(err, errlen, -ENOMEM, "out of memory");
    }
    for (int l = 0; l < hp->n_layer && !rc; l++) {
        struct model_layer *ly = &m->layers[l];
        char n[96];
#define W(field, name, cols, rows)                                                                 \
    (snprintf(n, sizeof(n), "blk.%d." name ".weight", l), get_weight(&L, n, cols, rows, field))
#define V(field, name, len, opt)                                                                   \
    (snprintf(n, sizeof(n), "blk.%d." name, l), get_vector(&L, n, len, opt, field))
        rc = V(&ly->attn_norm, "attn_norm.weight", hp->n_embd, 0);
        rc = rc ? rc : W(&ly->wq, "attn_q", hp->n_embd, qd);
        rc = rc ? rc : W(&ly->wk, "attn_k", hp->n_embd, kvd);
        rc = rc ? rc : W(&ly->wv, "attn_v", hp->n_embd, kvd);
        rc = rc ? rc : W(&ly->wo, "attn_output", qd, hp->n_embd);
        rc = rc ? rc : V(&ly->bq, "attn_q.bias", qd, hp->arch != MODEL_QWEN2);
        rc = rc ? rc : V(&ly->bk, "attn_k.bias", kvd, hp->arch != MODEL_QWEN2);
        rc = rc ? rc : V(&ly->bv, "attn_v.bias", kvd, hp->arch != MODEL_QWEN2);
        rc = rc ? rc : V(&ly->q_norm, "attn_q_norm.weight", hp->head_dim, hp->arch != MODEL_QWEN3);
        rc = rc ? rc : V(&ly->k_norm, "attn_k_norm.weight", hp->head_dim, hp->arch != MODEL_QWEN3);
        rc = rc ? rc : V(&ly->ffn_norm, "ffn_norm.weight", hp->n_embd, 0);
        rc = rc ? rc : W(&ly->w_gate, "ffn_gate", hp->n_embd, hp->n_ff);
        rc = rc ? rc : W(&ly->w_up, "ffn_up", hp->n_embd, hp->n_ff);
        rc = rc ? rc : W(&ly->w_down, "ffn_down", hp->n_ff, hp->n_embd);
#undef W
#undef V
    }
    if (!rc)
        rc = get_vector(&L, "output_norm.weight", hp->n_embd, 0, &m->output_norm);
    int tied = !gguf_find_tensor(g, "output.weight");
    if (!rc) {
        if (!tied)
            rc = get_weight(&L, "output.weight", hp->n_embd, hp->n_vocab, &m->output);
        else
            m->output = m->tok_embd; /* tied embeddings: packed apart, if the device packs */
    }
    if (!rc) {
        const float *ff;
        rc = get_vector(&L, "rope_freqs.weight", hp->rope.n_rot / 2, 1, &ff);
        hp->rope.freq_factors = ff;
    }
    /* every weight on the device, the matmuls' in its own layout (tok_embd is read by row) */
    for (int l = 0; l < hp->n_layer && !rc; l++) {
        struct dev_weight *ws[7];
        for (int i = 0, n = layer_weights(&m->layers[l], ws); i < n && !rc; i++)
            rc = place(g, m, ws[i]);
    }
    if (!rc && tied) {
        rc = dev_pack_weight(dev, &m->output); /* from the file's bytes, as tok_embd has them */
        m->output_shared = !rc && !m->output.packed;
        if (!rc && m->output.packed) /* embed reads a row at a time: the rest leaves memory */
            gguf_release(g, m->tok_embd.data, (size_t)m->tok_embd.rows * m->tok_embd.row_bytes);
    } else if (!rc) {
        rc = place(g, m, &m->output);
    }
    if (!rc && (rc = dev_weight_load(dev, &m->tok_embd)) == 0 &&
        (rc = track(m, m->tok_embd.data)) != 0)
        dev_weight_free(dev, m->tok_embd.data);
    if (!rc && m->output_shared)
        m->output.data = m->tok_embd.data;
    if (rc == -ENOMEM)
        rc = errmsg(err, errlen, rc, "out of memory preparing the weights");
    if (rc) {
        model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

static void free_acts(struct model *m)
{
    float **bufs[] = {&m->x, &m->xb,  &m->xb2, &m->q,   &m->k,
                      &m->v, &m->att, &m->hb,  &m->hb2, &m->out_rows};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(*bufs); i++) {
        dev_free(m->dev, *bufs[i]);
        *bufs[i] = NULL;
    }
    free(m->h_rows);
    free(m->h_chunk);
    m->h_rows = NULL;
    m->h_chunk = NULL;
    m->cap_tokens = 0;
}

/* The device buffer for n logits rows; 0 or -ENOMEM. */
static int grow_logits(struct model *m, int n)
{
    if (n <= m->cap_logits)
        return 0;
    dev_free(m->dev, m->logits_dev);
    m->logits_dev = dev_alloc(m->dev, (size_t)n * (size_t)m->hp.n_vocab * sizeof(float));
    m->cap_logits = m->logits_dev ? n : 0;
    return m->logits_dev ? 0 : -ENOMEM;
}

void model_free(struct model *m)
{
    if (!m)
        return;
    free_acts(m);
    dev_free(m->dev, m->logits_dev);
    for (int l = 0; m->layers && l < m->hp.n_layer; l++) {
        struct dev_weight *ws[7];
        for (int i = 0, n = layer_weights(&m->layers[l], ws); i < n; i++)
            if (ws[i]->packed)
                dev_free(m->dev, (void *)ws[i]->data);
    }
    if (m->output.packed)
        dev_free(m->dev, (void *)m->output.data);
    for (int i = 0; i < m->n_placed; i++)
        dev_weight_free(m->dev, m->placed[i]);
    free(m->placed);
    free(m->layers);
    free(m->owned);
    free(m);
}

static int grow_acts(struct model *m, int n)
{
    if (n <= m->cap_tokens)
        return 0;
    free_acts(m);
    const struct model_hparams *hp = &m->hp;
    size_t qd = (size_t)hp->n_head * hp->head_dim, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    size_t e = (size_t)hp->n_embd, nn = (size_t)n;
    size_t wide = e > qd ? e : qd;
    m->x = dev_alloc(m->dev, nn * e * sizeof(float));
    m->xb = dev_alloc(m->dev, nn * wide * sizeof(float));
    m->xb2 = dev_alloc(m->dev, nn * e * sizeof(float));
    m->q = dev_alloc(m->dev, nn * qd * sizeof(float));
    m->k = dev_alloc(m->dev, nn * kvd * sizeof(float));
    m->v = dev_alloc(m->dev, nn * kvd * sizeof(float));
    m->att = dev_alloc(m->dev, nn * qd * sizeof(float));
    m->hb = dev_alloc(m->dev, nn * (size_t)hp->n_ff * sizeof(float));
    m->hb2 = dev_alloc(m->dev, nn * (size_t)hp->n_ff * sizeof(float));
    m->out_rows = dev_alloc(m->dev, nn * e * sizeof(float));
    m->h_rows = malloc(nn * sizeof(*m->h_rows));
    m->h_chunk = malloc(nn);
    if (!m->x || !m->xb || !m->xb2 || !m->q || !m->k || !m->v || !m->att || !m->hb || !m->hb2 ||
        !m->out_rows || !m->h_rows || !m->h_chunk) {
        free_acts(m);
        return -ENOMEM;
    }
    m->cap_tokens = n;
    return 0;
}

size_t model_kv_block_bytes(const struct model *m, int32_t block_size, uint32_t type)
{
    size_t el = type == QT_F16 ? 2 : 4;
    return 2 * (size_t)m->hp.n_layer * (size_t)block_size * (size_t)m->hp.n_head_kv *
           (size_t)m->hp.head_dim * el;
}

int model_kv_init(const struct model *m, struct model_kv *kv, int32_t n_blocks, int32_t block_size,
                  uint32_t type)
{
    memset(kv, 0, sizeof(*kv));
    if ((type != QT_F16 && type != QT_F32) || n_blocks < 1 || block_size < 1)
        return -EINVAL;
    kv->layers = calloc((size_t)m->hp.n_layer, sizeof(*kv->layers));
    if (!kv->layers)
        return -ENOMEM;
    kv->n_layer = m->hp.n_layer;
    kv->n_blocks = n_blocks;
    size_t per =
        (size_t)n_blocks * block_size * m->hp.n_head_kv * m->hp.head_dim * (type == QT_F16 ? 2 : 4);
    for (int l = 0; l < m->hp.n_layer; l++) {
        struct dev_kv *d = &kv->layers[l];
        *d = (struct dev_kv){.type = type,
                             .n_blocks = n_blocks,
                             .block_size = block_size,
                             .n_kv_heads = m->hp.n_head_kv,
                             .head_dim = m->hp.head_dim};
        d->k = dev_alloc(m->dev, per);
        d->v = dev_alloc(m->dev, per);
        if (!d->k || !d->v) {
            model_kv_free(m, kv);
            return -ENOMEM;
        }
        kv->bytes += 2 * per;
    }
    return 0;
}

void model_kv_free(const struct model *m, struct model_kv *kv)
{
    if (kv->layers)
        for (int l = 0; l < kv->n_layer; l++) {
            dev_free(m->dev, kv->layers[l].k);
            dev_free(m->dev, kv->layers[l].v);
        }
    free(kv->layers);
    memset(kv, 0, sizeof(*kv));
}

int model_forward(struct model *m, struct model_kv *kv, const struct model_batch *b, float *logits)
{
    const struct model_hparams *hp = &m->hp;
    struct dev *d = m->dev;
    int n = b->n, e = hp->n_embd, hd = hp->head_dim;
    int qd = hp->n_head * hd, kvd = hp->n_head_kv * hd;
    if (n <= 0)
        return 0;
    int bs = kv->layers[0].block_size;
    for (int t = 0; t < n; t++) {
        if (b->tokens[t] < 0 || b->tokens[t] >= hp->n_vocab)
            return -EINVAL;
        if (b->pos[t] < 0 || b->seq[t] < 0 || b->seq[t] >= b->n_seq ||
            b->pos[t] / bs >= b->n_blocks[b->seq[t]])
            return -EINVAL;
    }
    int rc = grow_acts(m, n);
    if (rc)
        return rc;
    int32_t *rows = m->h_rows;
    uint8_t *chunk = m->h_chunk;
    int n_out = 0;
    for (int t = 0; t < n; t++)
        if (b->want_logits[t])
            rows[n_out++] = t;
    /* the hidden-state rows follow the logits rows; both are normed, only these projected */
    int n_logit = n_out;
    for (int t = 0; b->want_embd && t < n; t++)
        if (b->want_embd[t] && !b->want_logits[t])
            rows[n_out++] = t;
    if (n_out > n_logit && !b->embd)
        return -EINVAL;
    if ((rc = grow_logits(m, n_logit)))
        return rc;
    /* a token is part of a chunk when its sequence has other tokens in the batch */
    for (int t = 0; t < n; t++) {
        chunk[t] = b->gemm_order ? b->gemm_order[t] != 0 : 0;
        for (int u = 0; !b->gemm_order && u < n && !chunk[t]; u++)
            chunk[t] = u != t && b->seq[u] == b->seq[t];
    }
    const float kq_scale = 1.0f / sqrtf((float)hd);
    struct dev_batch db = {.n = n,
                           .tokens = b->tokens,
                           .pos = b->pos,
                           .seq = b->seq,
                           .chunk = chunk,
                           .n_seq = b->n_seq,
                           .tables = b->tables,
                           .n_blocks = b->n_blocks,
                           .n_out = n_out,
                           .out_rows = rows};
    if ((rc = dev_set_batch(d, &db)))
        return rc;

    // token embeddings
    rc = dev_embed(d, &m->tok_embd, m->x);
    for (int l = 0; l < hp->n_layer && !rc; l++) {
        const struct model_layer *ly = &m->layers[l];
        // attention rmsnorm
        rc = dev_rmsnorm(d, m->x, ly->attn_norm, n, e, hp->rms_eps, m->xb);
        // qkv matmuls (+ biases for qwen2)
        const struct dev_weight *qkv[3] = {&ly->wq, &ly->wk, &ly->wv};
        float *qkv_out[3] = {m->q, m->k, m->v};
        rc = rc ? rc : dev_matmul_n(d, qkv, 3, m->xb, n, qkv_out);
        if (!rc && ly->bq) {
            dev_add_bias(d, m->q, ly->bq, n, qd);
            dev_add_bias(d, m->k, ly->bk, n, kvd);
            dev_add_bias(d, m->v, ly->bv, n, kvd);
        }
        // per-head q/k norms (qwen3)
        if (!rc && ly->q_norm) {
            rc = dev_rmsnorm(d, m->q, ly->q_norm, n * hp->n_head, hd, hp->rms_eps, m->q);
            rc = rc ? rc
                    : dev_rmsnorm(d, m->k, ly->k_norm, n * hp->n_head_kv, hd, hp->rms_eps, m->k);
        }
        // rotary position embeddings
        rc = rc ? rc : dev_rope(d, m->q, hp->n_head, hd, &hp->rope);
        rc = rc ? rc : dev_rope(d, m->k, hp->n_head_kv, hd, &hp->rope);
        // store k, v in the cache, then attend over each token's sequence
        rc = rc ? rc : dev_kv_store(d, &kv->layers[l], m->k, m->v);
        dev_prefetch(d, &ly->wo); /* read next; idle threads may fetch it meanwhile */
        rc = rc ? rc : dev_attention(d, &kv->layers[l], m->q, hp->n_head, kq_scale, m->att);
        // output projection and residual
        rc = rc ? rc : dev_matmul(d, &ly->wo, m->att, n, m->xb2);
        rc = rc ? rc : dev_add(d, m->x, m->xb2, (size_t)n * e);
        // ffn rmsnorm
        rc = rc ? rc : dev_rmsnorm(d, m->x, ly->ffn_norm, n, e, hp->rms_eps, m->xb);
        // silu(gate) * up, then down, and residual
        const struct dev_weight *gate_up[2] = {&ly->w_gate, &ly->w_up};
        float *gate_up_out[2] = {m->hb, m->hb2};
        rc = rc ? rc : dev_matmul_n(d, gate_up, 2, m->xb, n, gate_up_out);
        rc = rc ? rc : dev_silu_mul(d, m->hb, m->hb2, n, hp->n_ff, m->hb);
        rc = rc ? rc : dev_matmul(d, &ly->w_down, m->hb, n, m->xb2);
        rc = rc ? rc : dev_add(d, m->x, m->xb2, (size_t)n * e);
    }
    // final rmsnorm and logits, only for the rows that want them; one download (two with
    // hidden-state rows)
    if (!rc && n_out) {
        rc = dev_gather_rows(d, m->x, e, m->out_rows);
        rc = rc ? rc
                : dev_rmsnorm(d, m->out_rows, m->output_norm, n_out, e, hp->rms_eps, m->out_rows);
        if (!rc && n_logit) {
            rc = dev_matmul(d, &m->output, m->out_rows, n_logit, m->logits_dev);
            rc = rc ? rc
                    : dev_download(d, logits, m->logits_dev,
                                   (size_t)n_logit * (size_t)hp->n_vocab * sizeof(float));
        }
        if (!rc && n_out > n_logit)
            rc = dev_download(d, b->embd, m->out_rows + (size_t)n_logit * e,
                              (size_t)(n_out - n_logit) * e * sizeof(float));
    }
    return rc;
}

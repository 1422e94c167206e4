/*
 * tests/unit/tbatch.h - tests that call the kv and token ops directly
 * describe each token as (block table, position, chunk) and turn that into
 * the struct dev_batch the backend takes (dev_set_batch).
 */
#ifndef CINFER_TESTS_TBATCH_H
#define CINFER_TESTS_TBATCH_H

#include <check.h>
#include <stdlib.h>

#include "device/dev.h"

struct tpos {
    const int32_t *blocks; /* its sequence's block table */
    int32_t pos;
    uint8_t chunk;
};

/*
 * Sets the batch of T tokens tp (ids: NULL or T token ids), their tables
 * told apart by address, each as long as its tokens need at block size bs.
 * Returns what dev_set_batch does.
 */
static inline int tbatch_set(struct dev *d, const struct tpos *tp, int T, const int32_t *ids,
                             int bs)
{
    const int32_t **tabs = calloc((size_t)T + 1, sizeof(*tabs));
    int32_t *nb = calloc((size_t)T + 1, sizeof(*nb)), *seq = calloc((size_t)T + 1, sizeof(*seq)),
            *pos = calloc((size_t)T + 1, sizeof(*pos));
    uint8_t *chunk = calloc((size_t)T + 1, 1);
    ck_assert(tabs && nb && seq && pos && chunk);
    int ns = 0;
    for (int t = 0; t < T; t++) {
        int s = 0;
        while (s < ns && tabs[s] != tp[t].blocks)
            s++;
        if (s == ns)
            tabs[ns++] = tp[t].blocks;
        if (tp[t].pos / bs + 1 > nb[s])
            nb[s] = tp[t].pos / bs + 1;
        seq[t] = s;
        pos[t] = tp[t].pos;
        chunk[t] = tp[t].chunk;
    }
    struct dev_batch b = {.n = T,
                          .tokens = ids,
                          .pos = pos,
                          .seq = seq,
                          .chunk = chunk,
                          .n_seq = ns,
                          .tables = tabs,
                          .n_blocks = nb};
    int rc = dev_set_batch(d, &b);
    free(tabs);
    free(nb);
    free(seq);
    free(pos);
    free(chunk);
    return rc;
}

/* The batch of T tokens with ids and positions only (embed, rope); what dev_set_batch returns. */
static inline int tbatch_plain(struct dev *d, const int32_t *ids, const int32_t *pos, int T)
{
    struct dev_batch b = {.n = T, .tokens = ids, .pos = pos};
    return dev_set_batch(d, &b);
}

/* kv_store of the T tokens tp: sets the batch, then stores; the first failure's code */
static inline int tb_kv_store(struct dev *d, const struct dev_kv *kv, const struct tpos *tp, int T,
                              const float *k, const float *v)
{
    int rc = tbatch_set(d, tp, T, NULL, kv->block_size);
    return rc ? rc : dev_kv_store(d, kv, k, v);
}

/* attention of the T tokens tp, the same way */
static inline int tb_attention(struct dev *d, const struct dev_kv *kv, const struct tpos *tp, int T,
                               const float *q, int n_heads, float scale, float *out)
{
    int rc = tbatch_set(d, tp, T, NULL, kv->block_size);
    return rc ? rc : dev_attention(d, kv, q, n_heads, scale, out);
}

#endif

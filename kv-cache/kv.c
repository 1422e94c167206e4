/*
 * kv-cache/kv.c - block pool and block tables (see kv.h).  The free list is
 * a stack of ids; a block returns to it when its last reference goes.
 */
#include "kv-cache/kv.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct kv_pool {
    int32_t n_blocks, block_size;
    int32_t *refs; /* per block */
    int32_t *free_ids;
    int32_t n_free;
};

int kv_pool_create(int32_t n_blocks, int32_t block_size, struct kv_pool **out)
{
    *out = NULL;
    if (n_blocks < 2 || block_size < 1)
        return -EINVAL;
    struct kv_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->n_blocks = n_blocks;
    p->block_size = block_size;
    p->refs = calloc((size_t)n_blocks, sizeof(*p->refs));
    p->free_ids = malloc((size_t)n_blocks * sizeof(*p->free_ids));
    if (!p->refs || !p->free_ids) {
        kv_pool_destroy(p);
        return -ENOMEM;
    }
    /* lowest ids on top of the stack; block 0 stays out */
    for (int32_t b = n_blocks - 1; b >= 1; b--)
        p->free_ids[p->n_free++] = b;
    *out = p;
    return 0;
}

void kv_pool_destroy(struct kv_pool *p)
{
    if (!p)
        return;
    free(p->refs);
    free(p->free_ids);
    free(p);
}

int32_t kv_pool_block_size(const struct kv_pool *p)
{
    return p->block_size;
}

int32_t kv_pool_n_blocks(const struct kv_pool *p)
{
    return p->n_blocks;
}

int32_t kv_pool_n_free(const struct kv_pool *p)
{
    return p->n_free;
}

int32_t kv_block_refs(const struct kv_pool *p, int32_t block)
{
    return block >= 0 && block < p->n_blocks ? p->refs[block] : 0;
}

void kv_seq_init(struct kv_seq *s)
{
    memset(s, 0, sizeof(*s));
}

static int seq_reserve(struct kv_seq *s, int32_t n)
{
    if (n <= s->cap)
        return 0;
    int32_t cap = s->cap ? s->cap : 8;
    while (cap < n)
        cap *= 2;
    int32_t *b = realloc(s->blocks, (size_t)cap * sizeof(*b));
    if (!b)
        return -ENOMEM;
    s->blocks = b;
    s->cap = cap;
    return 0;
}

int kv_alloc_slots(struct kv_pool *p, struct kv_seq *s, int32_t n_new)
{
    if (n_new < 0 || s->n_tokens > INT32_MAX - n_new)
        return -EINVAL;
    int64_t need_tokens = (int64_t)s->n_tokens + n_new;
    int32_t need = (int32_t)((need_tokens + p->block_size - 1) / p->block_size);
    int32_t extra = need - s->n_blocks;
    if (extra > p->n_free)
        return -ENOSPC;
    if (seq_reserve(s, need))
        return -ENOMEM;
    for (int32_t i = 0; i < extra; i++) {
        int32_t b = p->free_ids[--p->n_free];
        p->refs[b] = 1;
        s->blocks[s->n_blocks++] = b;
    }
    s->n_tokens = (int32_t)need_tokens;
    return 0;
}

void kv_free_seq(struct kv_pool *p, struct kv_seq *s)
{
    for (int32_t i = 0; i < s->n_blocks; i++) {
        int32_t b = s->blocks[i];
        if (b > 0 && b < p->n_blocks && p->refs[b] > 0 && --p->refs[b] == 0)
            p->free_ids[p->n_free++] = b;
    }
    free(s->blocks);
    kv_seq_init(s);
}

int kv_seq_share(struct kv_pool *p, const struct kv_seq *src, struct kv_seq *dst)
{
    int32_t full = src->n_tokens / p->block_size;
    if (seq_reserve(dst, full))
        return -ENOMEM;
    for (int32_t i = 0; i < full; i++) {
        dst->blocks[i] = src->blocks[i];
        p->refs[src->blocks[i]]++;
    }
    dst->n_blocks = full;
    dst->n_tokens = full * p->block_size;
    return 0;
}

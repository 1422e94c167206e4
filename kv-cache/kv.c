/*
 * kv-cache/kv.c - block pool, block tables and the prefix cache (see kv.h).
 *
 * A block whose last reference goes returns to a stack of free ids, unless
 * it is in the prefix cache: then it joins the LRU list of cached blocks,
 * still findable by its hash, and is evicted (oldest first) only when the
 * stack is empty.  Free space is the stack plus the LRU list.  Cached
 * blocks are found through buckets of a chained hash table; a lookup checks
 * the parent hash and the block's token ids, so a hash collision can never
 * hand out the wrong K/V.
 */
#include "kv-cache/kv.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct kv_pool {
    int32_t n_blocks, block_size;
    int32_t *refs; /* per block */
    int32_t *free_ids;
    int32_t n_free; /* on the stack (not cached) */
    /* the prefix cache (NULL arrays when off) */
    uint64_t *hash, *parent; /* per cached block */
    int32_t *tokens;         /* per block: block_size ids */
    uint8_t *cached;
    int32_t *bucket_next;
    int32_t *buckets; /* heads, -1 = empty */
    uint32_t bucket_mask;
    int32_t *lru_prev, *lru_next; /* cached blocks with no reference */
    int32_t lru_head, lru_tail, n_lru;
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
    free(p->hash);
    free(p->parent);
    free(p->tokens);
    free(p->cached);
    free(p->bucket_next);
    free(p->buckets);
    free(p->lru_prev);
    free(p->lru_next);
    free(p);
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

int kv_prefix_cache_enable(struct kv_pool *p)
{
    if (p->hash)
        return 0;
    size_t n = (size_t)p->n_blocks;
    uint32_t nb = 1;
    while (nb < n && nb < (1u << 30))
        nb <<= 1;
    p->hash = calloc(n, sizeof(*p->hash));
    p->parent = calloc(n, sizeof(*p->parent));
    p->tokens = calloc(n * (size_t)p->block_size, sizeof(*p->tokens));
    p->cached = calloc(n, 1);
    p->bucket_next = malloc(n * sizeof(*p->bucket_next));
    p->buckets = malloc(nb * sizeof(*p->buckets));
    p->lru_prev = malloc(n * sizeof(*p->lru_prev));
    p->lru_next = malloc(n * sizeof(*p->lru_next));
    if (!p->hash || !p->parent || !p->tokens || !p->cached || !p->bucket_next || !p->buckets ||
        !p->lru_prev || !p->lru_next) {
        free(p->hash), free(p->parent), free(p->tokens), free(p->cached);
        free(p->bucket_next), free(p->buckets), free(p->lru_prev), free(p->lru_next);
        p->hash = p->parent = NULL;
        p->tokens = p->bucket_next = p->buckets = p->lru_prev = p->lru_next = NULL;
        p->cached = NULL;
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < nb; i++)
        p->buckets[i] = -1;
    p->bucket_mask = nb - 1;
    p->lru_head = p->lru_tail = -1;
    p->n_lru = 0;
    return 0;
}

uint64_t kv_block_hash(uint64_t parent, const int32_t *tokens, int32_t n)
{
    uint64_t h = parent ^ 0x9e3779b97f4a7c15ull;
    for (int32_t i = 0; i < n; i++) {
        h ^= (uint32_t)tokens[i];
        h *= 0xff51afd7ed558ccdull;
        h ^= h >> 32;
    }
    h ^= h >> 29;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 32);
}

static void lru_unlink(struct kv_pool *p, int32_t b)
{
    int32_t pr = p->lru_prev[b], nx = p->lru_next[b];
    if (pr >= 0)
        p->lru_next[pr] = nx;
    else
        p->lru_head = nx;
    if (nx >= 0)
        p->lru_prev[nx] = pr;
    else
        p->lru_tail = pr;
    p->n_lru--;
}

static void lru_push(struct kv_pool *p, int32_t b)
{
    p->lru_prev[b] = p->lru_tail;
    p->lru_next[b] = -1;
    if (p->lru_tail >= 0)
        p->lru_next[p->lru_tail] = b;
    else
        p->lru_head = b;
    p->lru_tail = b;
    p->n_lru++;
}

static void bucket_remove(struct kv_pool *p, int32_t b)
{
    int32_t *pp = &p->buckets[p->hash[b] & p->bucket_mask];
    while (*pp >= 0 && *pp != b)
        pp = &p->bucket_next[*pp];
    if (*pp == b)
        *pp = p->bucket_next[b];
    p->cached[b] = 0;
}

/* The cached block with this parent, hash and tokens, or -1. */
static int32_t lookup(const struct kv_pool *p, uint64_t parent, uint64_t h, const int32_t *tokens)
{
    for (int32_t b = p->buckets[h & p->bucket_mask]; b >= 0; b = p->bucket_next[b])
        if (p->hash[b] == h && p->parent[b] == parent &&
            !memcmp(p->tokens + (size_t)b * p->block_size, tokens,
                    sizeof(*tokens) * (size_t)p->block_size))
            return b;
    return -1;
}

/* A block for new K/V: from the stack, else the least recently used cached one. */
static int32_t take_block(struct kv_pool *p)
{
    if (p->n_free > 0)
        return p->free_ids[--p->n_free];
    int32_t b = p->lru_head;
    lru_unlink(p, b);
    bucket_remove(p, b);
    return b;
}

static void drop_ref(struct kv_pool *p, int32_t b)
{
    if (b <= 0 || b >= p->n_blocks || p->refs[b] <= 0 || --p->refs[b] > 0)
        return;
    if (p->cached && p->cached[b])
        lru_push(p, b);
    else
        p->free_ids[p->n_free++] = b;
}

int32_t kv_match_prefix(struct kv_pool *p, struct kv_seq *s, const int32_t *tokens, int32_t n)
{
    if (!p->hash || s->n_blocks || n < 0)
        return 0;
    int32_t bs = p->block_size, full = n / bs;
    if (seq_reserve(s, full ? full : 1))
        return 0;
    uint64_t parent = 0;
    int32_t k = 0;
    for (; k < full; k++) {
        uint64_t h = kv_block_hash(parent, tokens + (size_t)k * bs, bs);
        int32_t b = lookup(p, parent, h, tokens + (size_t)k * bs);
        if (b < 0)
            break;
        if (p->refs[b] == 0)
            lru_unlink(p, b);
        p->refs[b]++;
        s->blocks[s->n_blocks++] = b;
        parent = h;
    }
    s->n_tokens = s->n_hashed = k * bs;
    s->last_hash = parent;
    return k * bs;
}

void kv_commit_blocks(struct kv_pool *p, struct kv_seq *s, const int32_t *tokens, int32_t n)
{
    if (!p->hash)
        return;
    int32_t bs = p->block_size;
    if (n > s->n_tokens)
        n = s->n_tokens;
    while (s->n_hashed + bs <= n) {
        int32_t i = s->n_hashed / bs, b = s->blocks[i];
        const int32_t *t = tokens + s->n_hashed;
        uint64_t h = kv_block_hash(s->last_hash, t, bs);
        if (!p->cached[b] && lookup(p, s->last_hash, h, t) < 0) {
            p->cached[b] = 1;
            p->hash[b] = h;
            p->parent[b] = s->last_hash;
            memcpy(p->tokens + (size_t)b * bs, t, sizeof(*t) * (size_t)bs);
            uint32_t k = (uint32_t)(h & p->bucket_mask);
            p->bucket_next[b] = p->buckets[k];
            p->buckets[k] = b;
        }
        s->last_hash = h;
        s->n_hashed += bs;
    }
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
    return p->n_free + p->n_lru;
}

int32_t kv_pool_n_cached(const struct kv_pool *p)
{
    return p->n_lru;
}

int32_t kv_block_refs(const struct kv_pool *p, int32_t block)
{
    return block >= 0 && block < p->n_blocks ? p->refs[block] : 0;
}

void kv_seq_init(struct kv_seq *s)
{
    memset(s, 0, sizeof(*s));
}

int kv_alloc_slots(struct kv_pool *p, struct kv_seq *s, int32_t n_new)
{
    if (n_new < 0 || s->n_tokens > INT32_MAX - n_new)
        return -EINVAL;
    int64_t need_tokens = (int64_t)s->n_tokens + n_new;
    int32_t need = (int32_t)((need_tokens + p->block_size - 1) / p->block_size);
    int32_t extra = need - s->n_blocks;
    if (extra > kv_pool_n_free(p))
        return -ENOSPC;
    if (seq_reserve(s, need))
        return -ENOMEM;
    for (int32_t i = 0; i < extra; i++) {
        int32_t b = take_block(p);
        p->refs[b] = 1;
        s->blocks[s->n_blocks++] = b;
    }
    s->n_tokens = (int32_t)need_tokens;
    return 0;
}

void kv_free_seq(struct kv_pool *p, struct kv_seq *s)
{
    /* last block first: a prefix's first blocks stay cached longest */
    for (int32_t i = s->n_blocks - 1; i >= 0; i--)
        drop_ref(p, s->blocks[i]);
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

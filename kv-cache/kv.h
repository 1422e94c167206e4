/*
 * kv-cache/kv.h - the paged KV cache's bookkeeping: a pool of fixed-size
 * blocks with reference counts and a free list, and per-sequence block
 * tables.  It deals in block ids only; it holds no K/V data and does no
 * model math (the engine sizes the storage, the device reads it through the
 * block tables).  Block 0 is a reserved null block and is never handed out.
 * Allocation is all-or-nothing: when the pool is short it says -ENOSPC and
 * changes nothing, so a live block is never overwritten.
 */
#ifndef CINFER_KV_H
#define CINFER_KV_H

#include <stdint.h>

struct kv_pool;

/* A sequence's block table; the caller owns the struct. */
struct kv_seq {
    int32_t *blocks; /* block ids, one per block_size tokens */
    int32_t n_blocks;
    int32_t cap;
    int32_t n_tokens; /* tokens that have a slot */
};

/*
 * Creates a pool of n_blocks blocks (block 0 included, so n_blocks - 1 are
 * usable) of block_size tokens.  Returns 0, -EINVAL or -ENOMEM.
 */
int kv_pool_create(int32_t n_blocks, int32_t block_size, struct kv_pool **out);
void kv_pool_destroy(struct kv_pool *p);

int32_t kv_pool_block_size(const struct kv_pool *p);
int32_t kv_pool_n_blocks(const struct kv_pool *p);
int32_t kv_pool_n_free(const struct kv_pool *p);
/* References to a block (0 when free). */
int32_t kv_block_refs(const struct kv_pool *p, int32_t block);

void kv_seq_init(struct kv_seq *s);

/*
 * Makes room for n_new more tokens in s (allocating blocks as needed).
 * Returns 0, -ENOSPC when the pool is short (s unchanged), -ENOMEM.
 */
int kv_alloc_slots(struct kv_pool *p, struct kv_seq *s, int32_t n_new);

/* Drops s's references to its blocks and empties it; accepts an empty s. */
void kv_free_seq(struct kv_pool *p, struct kv_seq *s);

/*
 * Makes dst (empty) share src's full blocks (reference counted), e.g. for
 * several choices of one prompt.  Returns 0 or -ENOMEM.
 */
int kv_seq_share(struct kv_pool *p, const struct kv_seq *src, struct kv_seq *dst);

#endif

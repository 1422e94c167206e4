/*
 * kv-cache/kv.h - the paged KV cache's bookkeeping: a pool of fixed-size
 * blocks with reference counts and a free list, per-sequence block tables,
 * and a prefix cache of full blocks keyed by chained hashes.  It deals in block ids only; it holds no K/V data and does no
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
    int32_t n_hashed;   /* tokens in blocks entered in the prefix cache */
    uint64_t last_hash; /* the hash of the last such block */
};

/*
 * Creates a pool of n_blocks blocks (block 0 included, so n_blocks - 1 are
 * usable) of block_size tokens.  Returns 0, -EINVAL or -ENOMEM.
 */
int kv_pool_create(int32_t n_blocks, int32_t block_size, struct kv_pool **out);
void kv_pool_destroy(struct kv_pool *p);

int32_t kv_pool_block_size(const struct kv_pool *p);
int32_t kv_pool_n_blocks(const struct kv_pool *p);
/* Blocks that can be handed out: free ones plus cached ones nobody uses. */
int32_t kv_pool_n_free(const struct kv_pool *p);
/* Cached blocks nobody uses (kept for the prefix cache, evicted when needed). */
int32_t kv_pool_n_cached(const struct kv_pool *p);
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

/* ---- the prefix cache -------------------------------------------------------
 * Full blocks are keyed by a hash chained from their parent block's hash and
 * their token ids.  A block freed by its last sequence stays cached (LRU)
 * until its space is needed.
 */

/* Turns the prefix cache on for p.  0 or -ENOMEM. */
int kv_prefix_cache_enable(struct kv_pool *p);
/* The key of a block of n tokens after a block keyed parent (0 for the first). */
uint64_t kv_block_hash(uint64_t parent, const int32_t *tokens, int32_t n);
/*
 * Fills the empty s with the cached blocks that hold the longest run of
 * whole blocks at the start of tokens[0, n) (taking a reference to each);
 * returns how many tokens they hold (0 when the cache is off).
 */
int32_t kv_match_prefix(struct kv_pool *p, struct kv_seq *s, const int32_t *tokens, int32_t n);
/*
 * Enters s's full blocks whose K/V are computed (the first n of its tokens,
 * tokens[]) in the cache; blocks already entered are skipped.
 */
void kv_commit_blocks(struct kv_pool *p, struct kv_seq *s, const int32_t *tokens, int32_t n);

#endif

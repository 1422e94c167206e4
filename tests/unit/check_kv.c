/*
 * tests/unit/check_kv.c - the paged KV cache: block accounting (allocation,
 * reference counts, exhaustion without overwriting) and attention over a
 * 2,000-token sequence scattered over blocks, which must equal the same
 * computation over contiguous blocks bit for bit; and the prefix cache:
 * matching whole blocks only, surviving free until evicted oldest first,
 * and never matching on a hash alone.
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "device/dev.h"
#include "kv-cache/kv.h"
#include "tests/unit/suites.h"
#include "tests/unit/tbatch.h"
#include "util/quant.h"

START_TEST(pool_hands_out_blocks_once)
{
    struct kv_pool *p = NULL;
    ck_assert_int_eq(kv_pool_create(1, 16, &p), -EINVAL);
    ck_assert_int_eq(kv_pool_create(8, 0, &p), -EINVAL);
    ck_assert_int_eq(kv_pool_create(9, 16, &p), 0);
    ck_assert_int_eq(kv_pool_n_free(p), 8); /* block 0 is reserved */
    struct kv_seq a, b;
    kv_seq_init(&a);
    kv_seq_init(&b);
    ck_assert_int_eq(kv_alloc_slots(p, &a, 0), 0);
    ck_assert_int_eq(a.n_blocks, 0);
    ck_assert_int_eq(kv_alloc_slots(p, &a, 16), 0);
    ck_assert_int_eq(a.n_blocks, 1);
    ck_assert_int_eq(kv_alloc_slots(p, &a, 1), 0); /* the 17th token needs a second block */
    ck_assert_int_eq(a.n_blocks, 2);
    ck_assert_int_eq(a.n_tokens, 17);
    ck_assert_int_eq(kv_alloc_slots(p, &b, 15 * 16 / 16 * 5), 0); /* 75 tokens: 5 blocks */
    ck_assert_int_eq(b.n_blocks, 5);
    ck_assert_int_eq(kv_pool_n_free(p), 1);
    int seen[9] = {0};
    for (int i = 0; i < a.n_blocks; i++)
        seen[a.blocks[i]]++;
    for (int i = 0; i < b.n_blocks; i++)
        seen[b.blocks[i]]++;
    ck_assert_int_eq(seen[0], 0);
    for (int i = 1; i < 9; i++)
        ck_assert_int_le(seen[i], 1);
    for (int i = 0; i < a.n_blocks; i++)
        ck_assert_int_eq(kv_block_refs(p, a.blocks[i]), 1);
    kv_free_seq(p, &a);
    kv_free_seq(p, &b);
    ck_assert_int_eq(kv_pool_n_free(p), 8);
    ck_assert_int_eq(a.n_blocks, 0);
    kv_pool_destroy(p);
}
END_TEST

START_TEST(exhaustion_changes_nothing)
{
    struct kv_pool *p = NULL;
    ck_assert_int_eq(kv_pool_create(5, 16, &p), 0); /* 4 usable blocks */
    struct kv_seq a, b;
    kv_seq_init(&a);
    kv_seq_init(&b);
    ck_assert_int_eq(kv_alloc_slots(p, &a, 40), 0); /* 3 blocks */
    int32_t before[3];
    memcpy(before, a.blocks, sizeof(before));
    ck_assert_int_eq(kv_alloc_slots(p, &b, 17), -ENOSPC); /* needs 2, 1 free */
    ck_assert_int_eq(b.n_blocks, 0);
    ck_assert_int_eq(b.n_tokens, 0);
    ck_assert_int_eq(kv_pool_n_free(p), 1);
    ck_assert_int_eq(kv_alloc_slots(p, &a, 100), -ENOSPC);
    ck_assert_int_eq(a.n_tokens, 40);
    ck_assert_mem_eq(a.blocks, before, sizeof(before));
    ck_assert_int_eq(kv_alloc_slots(p, &a, 8), 0); /* fits in the third block */
    ck_assert_int_eq(kv_pool_n_free(p), 1);
    ck_assert_int_eq(kv_alloc_slots(p, &b, 16), 0); /* the last block */
    ck_assert_int_eq(kv_pool_n_free(p), 0);
    ck_assert_int_eq(kv_alloc_slots(p, &b, 1), -ENOSPC);
    kv_free_seq(p, &a);
    ck_assert_int_eq(kv_alloc_slots(p, &b, 1), 0);
    kv_free_seq(p, &b);
    ck_assert_int_eq(kv_pool_n_free(p), 4);
    kv_pool_destroy(p);
}
END_TEST

START_TEST(shared_blocks_are_reference_counted)
{
    struct kv_pool *p = NULL;
    ck_assert_int_eq(kv_pool_create(10, 16, &p), 0);
    struct kv_seq a, b;
    kv_seq_init(&a);
    kv_seq_init(&b);
    ck_assert_int_eq(kv_alloc_slots(p, &a, 40), 0); /* 2 full blocks + 8 tokens */
    ck_assert_int_eq(kv_seq_share(p, &a, &b), 0);
    ck_assert_int_eq(b.n_blocks, 2); /* only full blocks are shared */
    ck_assert_int_eq(b.n_tokens, 32);
    ck_assert_int_eq(kv_block_refs(p, a.blocks[0]), 2);
    ck_assert_int_eq(kv_block_refs(p, a.blocks[2]), 1);
    ck_assert_int_eq(kv_alloc_slots(p, &b, 8), 0); /* b's own third block */
    ck_assert_int_ne(b.blocks[2], a.blocks[2]);
    int32_t shared = a.blocks[0];
    int32_t free_before = kv_pool_n_free(p);
    kv_free_seq(p, &a);
    ck_assert_int_eq(kv_block_refs(p, shared), 1); /* still b's */
    ck_assert_int_eq(kv_pool_n_free(p), free_before + 1);
    kv_free_seq(p, &b);
    ck_assert_int_eq(kv_block_refs(p, shared), 0);
    ck_assert_int_eq(kv_pool_n_free(p), 9);
    kv_pool_destroy(p);
}
END_TEST

static uint64_t g_rng = 88172645463325252ull;

static float frand(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

START_TEST(scattered_2000_tokens_attend_like_contiguous)
{
    enum { N = 2000, BS = 16, KVH = 2, HD = 64, NH = 6, NB = N / BS + 1 };
    struct dev d;
    struct dev_config cfg = {.threads = 2};
    ck_assert_int_eq(dev_create("cpu", &cfg, &d, NULL, 0), 0);
    /* the pool is fragmented: two sequences grow in turns, so blocks interleave */
    struct kv_pool *p = NULL;
    ck_assert_int_eq(kv_pool_create(320, BS, &p), 0);
    struct kv_seq s, other;
    kv_seq_init(&s);
    kv_seq_init(&other);
    for (int i = 0; i < N / 8; i++) {
        ck_assert_int_eq(kv_alloc_slots(p, &s, 8), 0);
        ck_assert_int_eq(kv_alloc_slots(p, &other, 9), 0);
    }
    int scattered = 0;
    for (int i = 1; i < s.n_blocks; i++)
        scattered += s.blocks[i] != s.blocks[i - 1] + 1;
    ck_assert_int_gt(scattered, 50);
    int32_t contiguous[NB];
    for (int i = 0; i < NB; i++)
        contiguous[i] = i + 1;

    size_t row = KVH * HD, cells = (size_t)320 * BS;
    uint16_t *k1 = calloc(cells * row, 2), *v1 = calloc(cells * row, 2);
    uint16_t *k2 = calloc(cells * row, 2), *v2 = calloc(cells * row, 2);
    float *k = malloc(sizeof(float) * N * row), *v = malloc(sizeof(float) * N * row);
    struct tpos *tp1 = calloc(N, sizeof(*tp1)), *tp2 = calloc(N, sizeof(*tp2));
    for (size_t i = 0; i < N * row; i++) {
        k[i] = frand();
        v[i] = frand();
    }
    struct dev_kv paged = {k1, v1, QT_F16, 320, BS, KVH, HD},
                  flat = {k2, v2, QT_F16, 320, BS, KVH, HD};
    for (int t = 0; t < N; t++) {
        tp1[t] = (struct tpos){s.blocks, t, 1};
        tp2[t] = (struct tpos){contiguous, t, 1};
    }
    ck_assert_int_eq(tb_kv_store(&d, &paged, tp1, N, k, v), 0);
    ck_assert_int_eq(tb_kv_store(&d, &flat, tp2, N, k, v), 0);
    /* queries: the last 4 positions as a chunk, and the last one alone */
    float q[4 * NH * HD], o1[4 * NH * HD], o2[4 * NH * HD];
    for (int i = 0; i < 4 * NH * HD; i++)
        q[i] = frand() * 3.0f;
    ck_assert_int_eq(tb_attention(&d, &paged, tp1 + N - 4, 4, q, NH, 0.125f, o1), 0);
    ck_assert_int_eq(tb_attention(&d, &flat, tp2 + N - 4, 4, q, NH, 0.125f, o2), 0);
    ck_assert_mem_eq(o1, o2, sizeof(o1));
    tp1[N - 1].chunk = tp2[N - 1].chunk = 0;
    ck_assert_int_eq(tb_attention(&d, &paged, tp1 + N - 1, 1, q, NH, 0.125f, o1), 0);
    ck_assert_int_eq(tb_attention(&d, &flat, tp2 + N - 1, 1, q, NH, 0.125f, o2), 0);
    ck_assert_mem_eq(o1, o2, sizeof(float) * NH * HD);
    /* and both are right: a double-precision softmax over the f16-rounded K/V */
    for (int h = 0; h < NH; h++) {
        int kh = h / (NH / KVH);
        double *sc = malloc(sizeof(double) * N), mx = -1e300, sum = 0.0;
        for (int pos = 0; pos < N; pos++) {
            double dot = 0.0;
            for (int i = 0; i < HD; i++)
                dot += (double)q[h * HD + i] *
                       qt_f16_to_f32(qt_f32_to_f16(k[(size_t)pos * row + kh * HD + i]));
            sc[pos] = dot * 0.125;
            mx = sc[pos] > mx ? sc[pos] : mx;
        }
        for (int pos = 0; pos < N; pos++)
            sum += sc[pos] = exp(sc[pos] - mx);
        for (int i = 0; i < HD; i++) {
            double ref = 0.0;
            for (int pos = 0; pos < N; pos++)
                ref += sc[pos] / sum *
                       qt_f16_to_f32(qt_f32_to_f16(v[(size_t)pos * row + kh * HD + i]));
            /* f16 query and probabilities: a few parts in 1e3 of max|v| = 1 */
            ck_assert_msg(fabs(o1[h * HD + i] - ref) < 3e-3, "head %d dim %d: %g vs %g", h, i,
                          o1[h * HD + i], ref);
        }
        free(sc);
    }
    free(k1), free(v1), free(k2), free(v2), free(k), free(v), free(tp1), free(tp2);
    kv_free_seq(p, &s);
    kv_free_seq(p, &other);
    kv_pool_destroy(p);
    dev_destroy(&d);
}
END_TEST

/* A sequence holding tokens[0, n) with its full blocks entered in the cache. */
static void fill(struct kv_pool *p, struct kv_seq *s, const int32_t *tokens, int32_t n)
{
    kv_seq_init(s);
    ck_assert_int_eq(kv_alloc_slots(p, s, n), 0);
    kv_commit_blocks(p, s, tokens, n);
}

START_TEST(prefix_cache_matches_whole_blocks)
{
    struct kv_pool *p = NULL;
    ck_assert_int_eq(kv_pool_create(11, 4, &p), 0); /* 10 usable blocks of 4 tokens */
    ck_assert_int_eq(kv_prefix_cache_enable(p), 0);
    int32_t t[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    struct kv_seq a, b, c;
    fill(p, &a, t, 10); /* blocks {1-4} {5-8} cached, {9,10} partial */
    kv_seq_init(&b);
    /* same first 9 tokens: two whole blocks are found, shared with a */
    ck_assert_int_eq(kv_match_prefix(p, &b, t, 9), 8);
    ck_assert_int_eq(b.n_blocks, 2);
    ck_assert_int_eq(b.blocks[0], a.blocks[0]);
    ck_assert_int_eq(b.blocks[1], a.blocks[1]);
    ck_assert_int_eq(kv_block_refs(p, a.blocks[0]), 2);
    /* a different second block: only the first matches */
    int32_t u[8] = {1, 2, 3, 4, 5, 6, 7, 99};
    kv_seq_init(&c);
    ck_assert_int_eq(kv_match_prefix(p, &c, u, 8), 4);
    /* the same tokens in a block whose parent differs do not match */
    struct kv_seq d;
    kv_seq_init(&d);
    ck_assert_int_eq(kv_match_prefix(p, &d, t + 4, 4), 0);
    kv_free_seq(p, &d);
    kv_free_seq(p, &c);
    kv_free_seq(p, &b);
    kv_free_seq(p, &a);
    ck_assert_int_eq(kv_pool_n_free(p), 10); /* cached blocks count as free */
    ck_assert_int_eq(kv_pool_n_cached(p), 2);
    kv_pool_destroy(p);
}
END_TEST

START_TEST(prefix_cache_survives_free_and_evicts_oldest)
{
    struct kv_pool *p = NULL;
    ck_assert_int_eq(kv_pool_create(5, 4, &p), 0); /* 4 usable blocks */
    ck_assert_int_eq(kv_prefix_cache_enable(p), 0);
    int32_t x[8] = {1, 1, 1, 1, 2, 2, 2, 2}, y[8] = {3, 3, 3, 3, 4, 4, 4, 4};
    struct kv_seq a, b, c;
    fill(p, &a, x, 8);
    kv_free_seq(p, &a); /* both blocks stay cached */
    fill(p, &b, y, 8);  /* takes the two never-used blocks */
    kv_free_seq(p, &b);
    ck_assert_int_eq(kv_pool_n_cached(p), 4);
    kv_seq_init(&c);
    ck_assert_int_eq(kv_match_prefix(p, &c, x, 8), 8); /* x is still there after free */
    kv_free_seq(p, &c);
    /* y's blocks were freed last... but x was just used, so y is now the oldest */
    struct kv_seq n;
    kv_seq_init(&n);
    ck_assert_int_eq(kv_alloc_slots(p, &n, 8), 0); /* needs 2 blocks: evicts y's */
    kv_seq_init(&c);
    ck_assert_int_eq(kv_match_prefix(p, &c, y, 8), 0);
    kv_free_seq(p, &c);
    kv_seq_init(&c);
    ck_assert_int_eq(kv_match_prefix(p, &c, x, 8), 8);
    /* everything in use: the pool is short, and says so */
    struct kv_seq m;
    kv_seq_init(&m);
    ck_assert_int_eq(kv_alloc_slots(p, &m, 1), -ENOSPC);
    kv_free_seq(p, &m);
    kv_free_seq(p, &c);
    kv_free_seq(p, &n);
    kv_pool_destroy(p);
}
END_TEST

START_TEST(prefix_cache_off_matches_nothing)
{
    struct kv_pool *p = NULL;
    ck_assert_int_eq(kv_pool_create(5, 4, &p), 0);
    int32_t x[8] = {1, 1, 1, 1, 2, 2, 2, 2};
    struct kv_seq a, b;
    fill(p, &a, x, 8);
    kv_free_seq(p, &a);
    kv_seq_init(&b);
    ck_assert_int_eq(kv_match_prefix(p, &b, x, 8), 0);
    ck_assert_int_eq(kv_pool_n_cached(p), 0);
    kv_pool_destroy(p);
}
END_TEST

Suite *kv_suite(void)
{
    Suite *s = suite_create("kv-cache");
    TCase *tc = tcase_create("kv");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, pool_hands_out_blocks_once);
    tcase_add_test(tc, exhaustion_changes_nothing);
    tcase_add_test(tc, shared_blocks_are_reference_counted);
    tcase_add_test(tc, scattered_2000_tokens_attend_like_contiguous);
    tcase_add_test(tc, prefix_cache_matches_whole_blocks);
    tcase_add_test(tc, prefix_cache_survives_free_and_evicts_oldest);
    tcase_add_test(tc, prefix_cache_off_matches_nothing);
    suite_add_tcase(s, tc);
    return s;
}

/*
 * tests/unit/check_sched.c - the scheduler (engine/sched.c) on the default
 * SmolLM2, driven step by step on the test's own thread (eng_config.manual:
 * no engine thread).  Each test builds passes with sched_step, looks at the
 * batch it made, runs the model and the samplers as eng_step does (or forces
 * the tokens) and hands the pass back with sched_update.
 *
 * Covered: chunked prefill (order, positions, the logits row on the last
 * chunk only); decode tokens first and prefill in what the budget leaves;
 * the token budget and the sequence cap; preemption with bit-exact
 * recompute, under a JSON schema too (the matcher rebuilt from the
 * tokens), and a schema on one sequence leaving its neighbours' tokens
 * alone; prefix-cache hits; n > 1 choices sharing their prompt's
 * blocks; stop strings across token boundaries; cancelling queued and
 * running requests; a failed forward pass; prompt log-probabilities and
 * embeddings the same through chunks, the prefix cache and preemption;
 * min_tokens and stop token ids.  max_step_ms is -1 throughout,
 * so chunk sizes follow the token budget alone and are deterministic.
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sched.h"
#include "grammar/gram.h"
#include "tests/unit/suites.h"
#include "util/clock.h"

#define P_SHORT "The capital of France is"
#define P_LONG                                                                                     \
    "Once upon a time, in a small village at the edge of a great forest, there lived an old "      \
    "woman who kept bees and told stories to the children who came to buy her honey."
#define MAX_STEPS 2000

/* What a request's client has read so far. */
struct out {
    char text[4096];
    size_t n;
    int n_tokens;           /* TOKEN events */
    enum eng_finish finish; /* NONE until END */
    int cached, completion;
};

/* The tests' engine: 2 threads, a small context and pool, no time bound. */
static struct eng_config cfg_base(void)
{
    return (struct eng_config){
        .threads = 2, .ctx = 256, .kv_memory_mib = 8, .max_step_ms = -1, .manual = 1};
}

static struct engine *engine_open(const struct eng_config *cfg)
{
    char err[512];
    struct engine *e = NULL;
    ck_assert_msg(eng_create(test_model_path(), cfg, &e, err, sizeof(err)) == 0, "%s", err);
    return e;
}

/* text as the model's prompt (with BOS when it wants one); returns the count */
static int encode(struct engine *e, const char *text, int32_t *ids, int cap)
{
    const struct tok *t = eng_tok(e);
    int64_t n =
        tok_encode(t, text, strlen(text), tok_add_bos(t) ? TOK_ADD_BOS : 0, ids, (size_t)cap);
    ck_assert(n > 0 && n <= cap);
    return (int)n;
}

/* text without BOS, which must be one token */
static int32_t one_token(struct engine *e, const char *text)
{
    int32_t id[4];
    ck_assert_int_eq(tok_encode(eng_tok(e), text, strlen(text), 0, id, 4), 1);
    return id[0];
}

/* greedy, max_tokens tokens whatever they are */
static struct eng_params params_greedy(int max_tokens)
{
    struct eng_params p = {.max_tokens = max_tokens, .ignore_eos = 1};
    smp_params_default(&p.sp);
    p.sp.temperature = 0;
    return p;
}

static struct eng_req *submit(struct engine *e, const int32_t *ids, int n,
                              const struct eng_params *p)
{
    char err[256];
    struct eng_req *r = NULL;
    ck_assert_msg(eng_submit(e, ids, n, p, &r, err, sizeof(err)) == 0, "%s", err);
    return r;
}

/* Takes every event r has queued into o. */
static void out_read(struct eng_req *r, struct out *o)
{
    struct eng_event ev;
    while (eng_req_next(r, &ev, 0) == 0) {
        ck_assert_int_eq(o->finish, ENG_FINISH_NONE); /* nothing after END */
        ck_assert_uint_lt(o->n + ev.n_text, sizeof(o->text));
        memcpy(o->text + o->n, ev.text, ev.n_text);
        o->n += ev.n_text;
        o->text[o->n] = '\0';
        if (ev.kind == ENG_EV_TOKEN) {
            o->n_tokens++;
        } else {
            o->finish = ev.finish;
            o->cached = ev.cached_tokens;
            o->completion = ev.completion_tokens;
        }
        eng_event_clear(&ev);
    }
}

/* Reads each of r[0..n) to its end, which must be `f` (after n_tokens tokens unless < 0),
 * and releases it. */
static void expect_ends(struct eng_req **r, int n, enum eng_finish f, int n_tokens)
{
    for (int i = 0; i < n; i++) {
        struct out o = {0};
        out_read(r[i], &o);
        ck_assert_int_eq(o.finish, f);
        if (n_tokens >= 0)
            ck_assert_int_eq(o.n_tokens, n_tokens);
        eng_req_release(r[i]);
    }
}

/* Runs the pass b through the model and the samplers, as eng_step does. */
static int pass_run(struct engine *e, const struct sched_batch *b)
{
    ck_assert_int_eq(model_forward(e->m, &e->kv, &b->mb, e->logits), 0);
    for (int j = 0; j < b->n_rows; j++)
        ck_assert_int_eq(
            smp_sample(&b->rows[j]->smp, e->logits + (size_t)j * e->info.n_vocab, &e->b_res[j]), 0);
    return sched_update(e, b, 0, 0.01, e->b_res);
}

/* One step without the model: every logits row gets token t. */
static int pass_forced(struct engine *e, int32_t t)
{
    struct sched_batch b;
    int more = sched_step(e, &b);
    if (b.mb.n == 0)
        return more;
    struct smp_result res[8];
    memset(res, 0, sizeof(res));
    ck_assert_int_le(b.n_rows, 8);
    for (int j = 0; j < b.n_rows; j++)
        res[j].token = t;
    return sched_update(e, &b, 0, 0.001, res);
}

/* Steps until nothing is left; returns the passes run. */
static int run_all(struct engine *e)
{
    int steps = 0;
    eng_take_incoming(e);
    while (eng_step(e))
        ck_assert_int_lt(++steps, MAX_STEPS);
    ck_assert(eng_idle(e));
    return steps;
}

/* schema (JSON text) compiled for e's vocabulary */
static struct gram *schema_for(struct engine *e, const char *schema)
{
    char err[512];
    struct gram *g = NULL;
    ck_assert_msg(
        eng_grammar_compile(e, "json_schema", schema, strlen(schema), &g, err, sizeof(err)) == 0,
        "%s", err);
    return g;
}

/*
 * The greedy text of prompt alone on a fresh engine without a prefix
 * cache, under schema when not NULL; it must run to max_tokens.
 */
static void solo_schema(const int32_t *ids, int n, int max_tokens, const char *schema,
                        struct out *o)
{
    struct eng_config cfg = cfg_base();
    cfg.no_prefix_cache = 1;
    struct engine *e = engine_open(&cfg);
    struct eng_params p = params_greedy(max_tokens);
    p.grammar = schema ? schema_for(e, schema) : NULL;
    struct eng_req *r = submit(e, ids, n, &p);
    eng_grammar_release(p.grammar);
    run_all(e);
    memset(o, 0, sizeof(*o));
    out_read(r, o);
    ck_assert_int_eq(o->finish, ENG_FINISH_LENGTH);
    ck_assert_int_eq(o->n_tokens, max_tokens);
    eng_req_release(r);
    eng_destroy(e);
}

static void solo(const int32_t *ids, int n, int max_tokens, struct out *o)
{
    solo_schema(ids, n, max_tokens, NULL, o);
}

/* Which sequence of b the request r is, or -1. */
static int batch_seq_of(const struct sched_batch *b, const struct eng_req *r)
{
    for (int s = 0; s < b->mb.n_seq; s++)
        if (b->mb.tables[s] == r->seq.blocks)
            return s;
    return -1;
}

START_TEST(chunked_prefill_in_budget_sized_chunks)
{
    struct eng_config cfg = cfg_base();
    cfg.max_batch_tokens = 16;
    struct engine *e = engine_open(&cfg);
    int32_t ids[128];
    int n = encode(e, P_LONG, ids, 128);
    ck_assert_int_gt(n, 2 * 16); /* at least three chunks */
    struct eng_params p = params_greedy(4);
    struct eng_req *r = submit(e, ids, n, &p);
    eng_take_incoming(e);
    struct out o = {0};
    int passes = 0, next = 0;
    while (r->n_computed < n) {
        struct sched_batch b;
        ck_assert_int_eq(sched_step(e, &b), 1);
        int want = n - next < 16 ? n - next : 16; /* the budget, or what is left */
        ck_assert_int_eq(b.mb.n, want);
        ck_assert_int_eq(b.mb.n_seq, 1);
        for (int i = 0; i < b.mb.n; i++) {
            ck_assert_int_eq(b.mb.pos[i], next + i); /* positions continue the last chunk */
            ck_assert_int_eq(b.mb.tokens[i], ids[next + i]);
            ck_assert_int_eq(b.mb.seq[i], 0);
            ck_assert_int_eq(b.mb.gemm_order[i], 1); /* prompt tokens: one order however split */
            ck_assert_int_eq(b.mb.want_logits[i], next + i == n - 1);
        }
        ck_assert_int_eq(b.n_rows, next + want == n); /* a row on the last chunk only */
        ck_assert_int_eq(b.mb.n_blocks[0], sched_blocks_for(e, next + want)); /* as it goes */
        pass_run(e, &b);
        out_read(r, &o);
        ck_assert_int_eq(o.n_tokens, next + want == n); /* the first token after the last chunk */
        next += want;
        passes++;
    }
    ck_assert_int_eq(passes, (n + 15) / 16);
    /* then one decode token a pass, in the lone-token order */
    while (r->n_gen < 4) {
        struct sched_batch b;
        ck_assert_int_eq(sched_step(e, &b), 1);
        ck_assert_int_eq(b.mb.n, 1);
        ck_assert_int_eq(b.mb.pos[0], r->n_tokens - 1);
        ck_assert_int_eq(b.mb.gemm_order[0], 0);
        ck_assert_int_eq(b.n_rows, 1);
        pass_run(e, &b);
    }
    out_read(r, &o);
    ck_assert_int_eq(o.finish, ENG_FINISH_LENGTH);
    /* chunking changes nothing the client sees */
    struct out ref;
    solo(ids, n, 4, &ref);
    ck_assert_str_eq(o.text, ref.text);
    eng_req_release(r);
    eng_destroy(e);
}
END_TEST

START_TEST(decode_tokens_go_first)
{
    struct eng_config cfg = cfg_base();
    cfg.max_batch_tokens = 16;
    struct engine *e = engine_open(&cfg);
    int32_t a_ids[32], b_ids[128];
    int na = encode(e, P_SHORT, a_ids, 32), nb = encode(e, P_LONG, b_ids, 128);
    ck_assert_int_lt(na, 16);
    struct eng_params pa = params_greedy(12), pb = params_greedy(2);
    struct eng_req *a = submit(e, a_ids, na, &pa);
    eng_take_incoming(e);
    struct sched_batch b;
    ck_assert_int_eq(sched_step(e, &b), 1);
    ck_assert_int_eq(b.mb.n, na); /* a short prompt in one pass */
    pass_run(e, &b);
    ck_assert_int_eq(a->n_gen, 1);
    /* b arrives while a decodes: a's token leads every pass, b gets what is left */
    struct eng_req *bq = submit(e, b_ids, nb, &pb);
    eng_take_incoming(e);
    int passes = 0;
    while (bq->n_computed < nb) {
        int from = bq->n_computed, a_gen = a->n_gen;
        ck_assert_int_eq(sched_step(e, &b), 1);
        ck_assert_int_eq(b.mb.n_seq, 2);
        ck_assert_int_eq(b.mb.tokens[0], a->tokens[a->n_tokens - 1]);
        ck_assert_int_eq(b.mb.pos[0], a->n_tokens - 1);
        ck_assert_int_eq(b.mb.want_logits[0], 1);
        ck_assert_ptr_eq(b.rows[0], a);
        ck_assert_int_eq(batch_seq_of(&b, a), b.mb.seq[0]);
        int left = nb - from, chunk = left < 15 ? left : 15;
        ck_assert_int_eq(b.mb.n, 1 + chunk);
        for (int i = 1; i < b.mb.n; i++) {
            ck_assert_int_eq(b.mb.seq[i], batch_seq_of(&b, bq));
            ck_assert_int_eq(b.mb.pos[i], from + i - 1);
        }
        ck_assert_int_eq(b.n_rows, chunk == left ? 2 : 1);
        pass_run(e, &b);
        ck_assert_int_eq(a->n_gen, a_gen + 1); /* a's stream never stalls */
        passes++;
    }
    ck_assert_int_eq(passes, (nb + 14) / 15);
    /* both decode: one token each, in admission order */
    ck_assert_int_eq(sched_step(e, &b), 1);
    ck_assert_int_eq(b.mb.n, 2);
    ck_assert_ptr_eq(b.rows[0], a);
    ck_assert_ptr_eq(b.rows[1], bq);
    pass_run(e, &b);
    run_all(e);
    struct out oa = {0}, ref;
    out_read(a, &oa);
    ck_assert_int_eq(oa.finish, ENG_FINISH_LENGTH);
    solo(a_ids, na, 12, &ref); /* sharing passes with b changed none of a's tokens */
    ck_assert_str_eq(oa.text, ref.text);
    eng_req_release(a);
    eng_req_release(bq);
    eng_destroy(e);
}
END_TEST

START_TEST(budget_and_sequence_cap_hold)
{
    struct eng_config cfg = cfg_base();
    cfg.max_batch_tokens = 8;
    cfg.max_seqs = 2;
    struct engine *e = engine_open(&cfg);
    static const char *const texts[] = {P_SHORT, "Hello, how are you today? I am", "1, 2, 3, 4, 5,",
                                        "The best way to learn C is to"};
    struct eng_req *r[4];
    int expect = 0; /* tokens to compute: each prompt and its tokens but the last once */
    struct eng_params p = params_greedy(4);
    for (int i = 0; i < 4; i++) {
        int32_t ids[64];
        int n = encode(e, texts[i], ids, 64);
        r[i] = submit(e, ids, n, &p);
        expect += n + 4 - 1;
    }
    eng_take_incoming(e);
    int computed = 0, full = 0, steps = 0;
    for (;;) {
        struct sched_batch b;
        int more = sched_step(e, &b);
        ck_assert_int_le(e->n_active, 2);
        if (b.mb.n == 0) {
            ck_assert_int_eq(more, 0);
            break;
        }
        ck_assert_int_le(b.mb.n, 8);
        ck_assert_int_le(b.mb.n_seq, 2);
        for (int i = 0; i < b.mb.n; i++)
            ck_assert(b.mb.seq[i] >= 0 && b.mb.seq[i] < b.mb.n_seq);
        full |= e->n_active == 2 && e->wait_head != NULL; /* the cap made someone wait */
        computed += b.mb.n;
        pass_run(e, &b);
        ck_assert_int_lt(++steps, MAX_STEPS);
    }
    ck_assert(full);
    ck_assert_int_eq(computed, expect); /* no token computed twice */
    ck_assert_uint_eq(atomic_load(&e->st_preemptions), 0);
    expect_ends(r, 4, ENG_FINISH_LENGTH, 4);
    eng_destroy(e);
}
END_TEST

START_TEST(admission_fits_the_pool)
{
    /* 4-token blocks, 1 MiB: 11 blocks; four prompts of 9 tokens take 3 blocks each */
    struct eng_config cfg = cfg_base();
    cfg.kv_block = 4;
    cfg.kv_memory_mib = 1;
    struct engine *e = engine_open(&cfg);
    ck_assert_int_eq(e->info.kv_blocks, 11);
    int32_t ids[64];
    int n = encode(e, P_LONG, ids, 64);
    ck_assert_int_ge(n, 36);
    struct eng_params p = params_greedy(1);
    struct eng_req *r[4];
    for (int i = 0; i < 4; i++)
        r[i] = submit(e, ids + 9 * i, 9, &p);
    eng_take_incoming(e);
    struct sched_batch b;
    ck_assert_int_eq(sched_step(e, &b), 1);
    /* only what the pool can hold is admitted, and each admitted prompt got its blocks */
    ck_assert_int_eq(e->n_active, 3);
    ck_assert_ptr_eq(e->wait_head, r[3]);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(r[i]->seq.n_blocks, 3);
    ck_assert_int_eq(b.mb.n, 27);
    pass_run(e, &b);
    run_all(e);
    expect_ends(r, 4, ENG_FINISH_LENGTH, 1);
    eng_destroy(e);
}
END_TEST

/* No document of 24 tokens completes it, so constrained requests run to max_tokens. */
#define LONG_SCHEMA                                                                                \
    "{\"type\":\"object\",\"properties\":{\"notes\":{\"type\":\"array\",\"items\":"                \
    "{\"type\":\"string\"},\"minItems\":40}},\"required\":[\"notes\"]}"

/* 1 when text is a prefix of a document g accepts */
static int grammar_takes(struct gram *g, const char *text)
{
    struct gram_matcher *m = NULL;
    ck_assert_int_eq(gram_matcher_create(g, &m), 0);
    int ok = gram_feed(m, text, strlen(text)) == 0;
    gram_matcher_destroy(m);
    return ok;
}

/*
 * Two sequences that fit the pool alone but not together, under schema
 * when not NULL: the newer gives way (keeping its tokens), is recomputed
 * (its matcher rebuilt from them) and its client sees what it would have
 * alone.
 */
static void preemption_is_bit_exact(const char *schema)
{
    struct eng_config cfg = cfg_base();
    cfg.kv_block = 4;
    cfg.kv_memory_mib = 1;
    struct engine *e = engine_open(&cfg);
    int32_t a_ids[32], b_ids[32];
    int na = encode(e, P_SHORT, a_ids, 32);
    int nb = encode(e, "Hello, how are you today? I am", b_ids, 32);
    const int gen = 24;
    int32_t blocks = e->info.kv_blocks;
    /* each fits alone, the two together do not */
    ck_assert_int_le(sched_blocks_for(e, nb + gen), blocks);
    ck_assert_int_le(sched_blocks_for(e, na + gen), blocks);
    ck_assert_int_gt(sched_blocks_for(e, na + gen) + sched_blocks_for(e, nb + gen), blocks);
    struct eng_params p = params_greedy(gen);
    struct gram *g = schema ? schema_for(e, schema) : NULL;
    p.grammar = g;
    struct eng_req *a = submit(e, a_ids, na, &p), *b = submit(e, b_ids, nb, &p);
    eng_take_incoming(e);
    struct out oa = {0}, ob = {0};
    int b_waited = 0, b_gen_at_preempt = -1, steps = 0;
    while (eng_step(e)) {
        out_read(a, &oa);
        out_read(b, &ob);
        ck_assert_int_eq(oa.n_tokens, a->n_gen); /* every token reported once, none again */
        ck_assert_int_eq(ob.n_tokens, b->n_gen);
        if (e->wait_head == b && b->n_gen > 0 && b_gen_at_preempt < 0) {
            b_gen_at_preempt = b->n_gen; /* the newest gave way, keeping its tokens */
            ck_assert_int_eq(b->n_computed, 0);
            ck_assert_int_eq(b->seq.n_blocks, 0);
        }
        b_waited |= e->wait_head == b;
        ck_assert_int_lt(++steps, MAX_STEPS);
    }
    out_read(a, &oa);
    out_read(b, &ob);
    ck_assert(b_waited);
    ck_assert_int_gt(b_gen_at_preempt, 0);
    ck_assert_int_lt(b_gen_at_preempt, gen);
    ck_assert_uint_gt(atomic_load(&e->st_preemptions), 0);
    ck_assert_int_eq(oa.finish, ENG_FINISH_LENGTH);
    ck_assert_int_eq(ob.finish, ENG_FINISH_LENGTH);
    ck_assert_int_eq(oa.n_tokens, gen);
    ck_assert_int_eq(ob.n_tokens, gen);
    ck_assert_int_eq(ob.completion, gen);
    ck_assert_int_eq(kv_pool_n_free(e->pool), blocks);
    if (g) { /* both are the start of a document the schema accepts */
        ck_assert_msg(grammar_takes(g, oa.text), "not the schema's: %s", oa.text);
        ck_assert_msg(grammar_takes(g, ob.text), "not the schema's: %s", ob.text);
        ck_assert_int_eq(ob.text[0], '{');
        eng_grammar_release(g);
    }
    /* the client of the preempted sequence sees what it would have alone */
    struct out ref;
    solo_schema(b_ids, nb, gen, schema, &ref);
    ck_assert_str_eq(ob.text, ref.text);
    solo_schema(a_ids, na, gen, schema, &ref);
    ck_assert_str_eq(oa.text, ref.text);
    eng_req_release(a);
    eng_req_release(b);
    eng_destroy(e);
}

START_TEST(preempted_sequence_resumes_bit_exact)
{
    preemption_is_bit_exact(NULL);
}
END_TEST

START_TEST(preempted_constrained_sequence_resumes_bit_exact)
{
    preemption_is_bit_exact(LONG_SCHEMA);
}
END_TEST

START_TEST(constrained_and_plain_requests_share_passes_unchanged)
{
    /* batch invariance: a schema on one sequence changes none of its
     * neighbour's tokens, and the neighbour none of its */
    struct eng_config cfg = cfg_base();
    struct engine *e = engine_open(&cfg);
    int32_t a_ids[32], b_ids[32];
    int na = encode(e, P_SHORT, a_ids, 32);
    int nb = encode(e, "Hello, how are you today? I am", b_ids, 32);
    const int gen = 16;
    struct eng_params pa = params_greedy(gen), pb = params_greedy(gen);
    pa.grammar = schema_for(e, LONG_SCHEMA);
    struct eng_req *a = submit(e, a_ids, na, &pa), *b = submit(e, b_ids, nb, &pb);
    eng_grammar_release(pa.grammar);
    eng_take_incoming(e);
    int shared = 0, steps = 0;
    while (eng_step(e)) {
        shared |= e->n_active == 2;
        ck_assert_int_lt(++steps, MAX_STEPS);
    }
    ck_assert(shared);
    struct out oa = {0}, ob = {0}, ref;
    out_read(a, &oa);
    out_read(b, &ob);
    solo_schema(a_ids, na, gen, LONG_SCHEMA, &ref);
    ck_assert_str_eq(oa.text, ref.text);
    solo(b_ids, nb, gen, &ref);
    ck_assert_str_eq(ob.text, ref.text);
    ck_assert_int_ne(ob.text[0], '{'); /* b was not constrained */
    eng_req_release(a);
    eng_req_release(b);
    eng_destroy(e);
}
END_TEST

START_TEST(prefix_cache_serves_a_repeated_prompt)
{
    struct eng_config cfg = cfg_base();
    struct engine *e = engine_open(&cfg);
    int32_t ids[128];
    int n = encode(e, P_LONG, ids, 128);
    int bs = e->info.kv_block, cached = (n - 1) / bs * bs; /* whole blocks, the last token not */
    ck_assert_int_ge(cached, 2 * bs);
    struct eng_params p = params_greedy(6);
    struct eng_req *first = submit(e, ids, n, &p);
    run_all(e);
    struct out o1 = {0}, o2 = {0};
    out_read(first, &o1);
    ck_assert_int_eq(o1.cached, 0);
    ck_assert_uint_eq(atomic_load(&e->st_prefix_hits), 0);

    int32_t idle_cached = kv_pool_n_cached(e->pool);
    ck_assert_int_ge(idle_cached, cached / bs);
    struct eng_req *second = submit(e, ids, n, &p);
    eng_take_incoming(e);
    struct sched_batch b;
    ck_assert_int_eq(sched_step(e, &b), 1);
    ck_assert_int_eq(second->n_cached, cached);
    ck_assert_int_eq(b.mb.n, n - cached); /* only the uncached tail is computed */
    ck_assert_int_eq(b.mb.pos[0], cached);
    ck_assert_int_eq(b.mb.n_blocks[0], sched_blocks_for(e, n));
    /* the first request's blocks, taken out of the idle cache, not copies */
    ck_assert_int_eq(kv_pool_n_cached(e->pool), idle_cached - cached / bs);
    pass_run(e, &b);
    run_all(e);
    out_read(second, &o2);
    ck_assert_uint_eq(atomic_load(&e->st_prefix_hits), (uint64_t)cached);
    ck_assert_uint_eq(atomic_load(&e->st_prefix_queries), (uint64_t)(2 * n));
    ck_assert_int_eq(o2.cached, cached);
    ck_assert_int_eq(o2.finish, ENG_FINISH_LENGTH);
    ck_assert_str_eq(o2.text, o1.text);

    /* a prompt sharing only its first block reuses that block alone */
    int32_t other[128];
    memcpy(other, ids, sizeof(int32_t) * (size_t)n);
    other[bs + 1] = ids[bs + 1] == 11 ? 12 : 11;
    struct eng_req *third = submit(e, other, n, &p);
    eng_take_incoming(e);
    ck_assert_int_eq(sched_step(e, &b), 1);
    ck_assert_int_eq(third->n_cached, bs);
    ck_assert_int_eq(b.mb.n, n - bs);
    pass_run(e, &b);
    run_all(e);
    eng_req_release(first);
    eng_req_release(second);
    eng_req_release(third);
    eng_destroy(e);
}
END_TEST

START_TEST(choices_share_their_prompt_blocks)
{
    struct eng_config cfg = cfg_base();
    cfg.max_batch_tokens = 16;
    struct engine *e = engine_open(&cfg);
    int32_t ids[128];
    int n = encode(e, P_LONG, ids, 128), bs = e->info.kv_block;
    int cached = (n - 1) / bs * bs;
    struct eng_notify nt;
    eng_notify_init(&nt);
    struct eng_params p = params_greedy(6);
    p.notify = &nt;
    struct eng_sub subs[2] = {{ids, n, &p}, {ids, n, &p}};
    struct eng_req *r[2];
    char err[256];
    ck_assert_msg(eng_submit_n(e, 2, subs, r, err, sizeof(err)) == 0, "%s", err);
    eng_take_incoming(e);
    struct sched_batch b;
    int passes = 0;
    /* the second choice waits while the first prefills */
    while (r[0]->n_computed < n) {
        ck_assert_int_eq(sched_step(e, &b), 1);
        ck_assert_int_eq(e->n_active, 1);
        ck_assert_ptr_eq(e->active[0], r[0]);
        ck_assert_ptr_eq(e->wait_head, r[1]);
        ck_assert_int_eq(b.mb.n_seq, 1);
        pass_run(e, &b);
        passes++;
    }
    ck_assert_int_eq(passes, (n + 15) / 16);
    /* then it takes the first's full blocks and computes only the tail */
    ck_assert_int_eq(sched_step(e, &b), 1);
    ck_assert_int_eq(e->n_active, 2);
    ck_assert_int_eq(r[1]->n_cached, cached);
    int tail = n - cached < 15 ? n - cached : 15;
    ck_assert_int_eq(b.mb.n, 1 + tail); /* the first's decode token and (part of) the tail */
    for (int i = 0; i < cached / bs; i++) {
        ck_assert_int_eq(r[1]->seq.blocks[i], r[0]->seq.blocks[i]);
        ck_assert_int_eq(kv_block_refs(e->pool, r[0]->seq.blocks[i]), 2);
    }
    pass_run(e, &b);
    run_all(e);
    struct out o[2];
    memset(o, 0, sizeof(o));
    for (int i = 0; i < 2; i++) {
        out_read(r[i], &o[i]);
        ck_assert_int_eq(o[i].finish, ENG_FINISH_LENGTH);
        ck_assert_int_eq(o[i].n_tokens, 6);
        ck_assert_uint_gt(o[i].n, 0);
    }
    ck_assert_int_eq(o[0].cached, 0);
    ck_assert_int_eq(o[1].cached, cached);
    ck_assert_str_eq(o[0].text, o[1].text); /* greedy: the same text */
    ck_assert_uint_gt(nt.count, 0);         /* both report on the shared notify */
    ck_assert_int_eq(kv_pool_n_free(e->pool), e->info.kv_blocks);
    eng_req_release(r[0]);
    eng_req_release(r[1]);
    eng_destroy(e);
    eng_notify_destroy(&nt);
}
END_TEST

/* A request on P_SHORT with one stop string, in the waiting queue; the test forces its tokens. */
static struct eng_req *stop_request(struct engine *e, const char *stop, int max_tokens,
                                    int ignore_eos)
{
    int32_t ids[32];
    int n = encode(e, P_SHORT, ids, 32);
    struct eng_params p = params_greedy(max_tokens);
    const char *const stops[] = {stop};
    p.stop = stops;
    p.n_stop = 1;
    p.ignore_eos = ignore_eos;
    struct eng_req *r = submit(e, ids, n, &p);
    eng_take_incoming(e);
    return r;
}

/* Forces token t into r's stream (r alone in the engine) and reads its event. */
static void force_token(struct engine *e, struct eng_req *r, int32_t t, struct out *o)
{
    int n_before = o->n_tokens;
    pass_forced(e, t);
    out_read(r, o);
    ck_assert_int_eq(o->n_tokens, n_before + 1);
}

START_TEST(stop_strings_across_token_boundaries)
{
    struct eng_config cfg = cfg_base();
    cfg.no_prefix_cache = 1; /* forced tokens: no K/V worth caching */
    struct engine *e = engine_open(&cfg);
    int32_t hello = one_token(e, " hello"), world = one_token(e, " world"),
            there = one_token(e, " there");
    int32_t initial = kv_pool_n_free(e->pool);

    /* "lo wor" spans " hello" and " world": it ends the request and is never released */
    struct eng_req *r = stop_request(e, "lo wor", 8, 1);
    struct out o = {0};
    force_token(e, r, hello, &o);
    ck_assert_str_eq(o.text, " hel"); /* "lo" held: it may begin the stop string */
    ck_assert_int_eq(o.finish, ENG_FINISH_NONE);
    force_token(e, r, world, &o);
    ck_assert_int_eq(o.finish, ENG_FINISH_STOP);
    ck_assert_str_eq(o.text, " hel");
    ck_assert_int_eq(o.completion, 2);
    ck_assert_int_eq(e->n_active, 0);
    eng_req_release(r);

    /* the held "lo" comes out when the next token rules the stop string out */
    r = stop_request(e, "lo wor", 8, 1);
    memset(&o, 0, sizeof(o));
    force_token(e, r, hello, &o);
    force_token(e, r, there, &o);
    ck_assert_str_eq(o.text, " hello there");
    ck_assert_int_eq(o.finish, ENG_FINISH_NONE);
    eng_cancel(r);
    pass_forced(e, there);
    out_read(r, &o);
    ck_assert_int_eq(o.finish, ENG_FINISH_CANCELLED);
    eng_req_release(r);

    /* ... or at the end: max_tokens reached, or an end-of-generation token */
    r = stop_request(e, "lo wor", 1, 1);
    memset(&o, 0, sizeof(o));
    force_token(e, r, hello, &o);
    ck_assert_str_eq(o.text, " hello");
    ck_assert_int_eq(o.finish, ENG_FINISH_LENGTH);
    eng_req_release(r);
    r = stop_request(e, "lo wor", 8, 0);
    memset(&o, 0, sizeof(o));
    force_token(e, r, hello, &o);
    ck_assert_str_eq(o.text, " hel");
    pass_forced(e, tok_eos(eng_tok(e)));
    out_read(r, &o);
    ck_assert_int_eq(o.finish, ENG_FINISH_STOP);
    ck_assert_str_eq(o.text, " hello"); /* END released the held "lo" */
    ck_assert_int_eq(o.completion, 1);  /* the EOS token is not counted */
    eng_req_release(r);
    ck_assert_int_eq(kv_pool_n_free(e->pool), initial);
    eng_destroy(e);
}
END_TEST

START_TEST(stop_string_in_greedy_text)
{
    struct eng_config cfg = cfg_base();
    struct engine *e = engine_open(&cfg);
    int32_t ids[32];
    int n = encode(e, P_SHORT, ids, 32);
    /* the greedy text, token by token */
    struct eng_params p = params_greedy(10);
    struct eng_req *r = submit(e, ids, n, &p);
    eng_take_incoming(e);
    char piece[16][256];
    size_t len[16];
    int k = 0;
    while (eng_step(e)) {
        struct eng_event ev;
        while (eng_req_next(r, &ev, 0) == 0) {
            if (ev.kind == ENG_EV_TOKEN) {
                ck_assert_uint_lt(ev.n_text, sizeof(piece[0]));
                memcpy(piece[k], ev.text, ev.n_text);
                len[k++] = ev.n_text;
            }
            eng_event_clear(&ev);
        }
    }
    eng_req_release(r);
    /* a stop string of two pieces' adjoining ends, whose first occurrence is that boundary */
    char text[4096] = "", stop[8] = "";
    for (int j = 0; j < k; j++)
        strncat(text, piece[j], len[j]);
    size_t at = 0;
    int found = 0;
    for (int i = 0; i + 1 < k && !found; i++) {
        at += len[i];
        if (len[i] < 2 || len[i + 1] < 2)
            continue;
        snprintf(stop, sizeof(stop), "%.2s%.2s", piece[i] + len[i] - 2, piece[i + 1]);
        found = strstr(text, stop) == text + at - 2;
    }
    ck_assert_msg(found, "no two-piece boundary in \"%s\"", text);
    const char *const stops[] = {stop};
    p.stop = stops;
    p.n_stop = 1;
    r = submit(e, ids, n, &p);
    run_all(e);
    struct out o = {0};
    out_read(r, &o);
    ck_assert_int_eq(o.finish, ENG_FINISH_STOP);
    ck_assert_uint_eq(o.n, at - 2);
    ck_assert(memcmp(o.text, text, at - 2) == 0);
    ck_assert_ptr_null(strstr(o.text, stop));
    eng_req_release(r);
    eng_destroy(e);
}
END_TEST

START_TEST(cancel_queued_and_running)
{
    struct eng_config cfg = cfg_base();
    cfg.max_seqs = 2;
    struct engine *e = engine_open(&cfg);
    int32_t initial = kv_pool_n_free(e->pool);
    ck_assert_int_eq(initial, e->info.kv_blocks);
    static const char *const texts[] = {P_SHORT, "Hello, how are you today? I am", "1, 2, 3, 4, 5,",
                                        "The best way to learn C is to"};
    int32_t ids[4][64];
    int n[4];
    struct eng_req *r[4];
    struct eng_params p = params_greedy(8);
    for (int i = 0; i < 4; i++) {
        n[i] = encode(e, texts[i], ids[i], 64);
        r[i] = submit(e, ids[i], n[i], &p);
    }
    eng_cancel(r[3]); /* cancelled before the engine even took it */
    eng_take_incoming(e);
    struct sched_batch b;
    ck_assert_int_eq(sched_step(e, &b), 1);
    struct out o[4];
    memset(o, 0, sizeof(o));
    out_read(r[3], &o[3]);
    ck_assert_int_eq(o[3].finish, ENG_FINISH_CANCELLED);
    ck_assert_int_eq(o[3].n_tokens, 0);
    pass_run(e, &b);
    ck_assert_int_eq(e->n_active, 2); /* r0 and r1 run, r2 waits */
    ck_assert_ptr_eq(e->wait_head, r[2]);
    ck_assert_int_eq(atomic_load(&e->n_queued), 1);
    int32_t held = r[1]->seq.n_blocks, free_before = kv_pool_n_free(e->pool);
    ck_assert_int_gt(held, 0);
    /* one running, one waiting: both end within the next step */
    eng_cancel(r[1]);
    eng_cancel(r[2]);
    ck_assert_int_eq(sched_step(e, &b), 1);
    out_read(r[1], &o[1]);
    out_read(r[2], &o[2]);
    ck_assert_int_eq(o[1].finish, ENG_FINISH_CANCELLED);
    ck_assert_int_eq(o[2].finish, ENG_FINISH_CANCELLED);
    ck_assert_int_eq(o[1].n_tokens, 1);
    ck_assert_int_eq(o[1].completion, 1);
    ck_assert_int_eq(o[2].n_tokens, 0);
    ck_assert_int_eq(kv_pool_n_free(e->pool), free_before + held);
    ck_assert_int_eq(e->n_active, 1);
    ck_assert_ptr_null(e->wait_head);
    ck_assert_int_eq(atomic_load(&e->n_queued), 0);
    ck_assert_int_eq(b.mb.n, 1); /* only r0's token is left in the pass */
    ck_assert_ptr_eq(b.rows[0], r[0]);
    pass_run(e, &b);
    run_all(e);
    out_read(r[0], &o[0]);
    ck_assert_int_eq(o[0].finish, ENG_FINISH_LENGTH);
    ck_assert_int_eq(kv_pool_n_free(e->pool), initial);
    struct out ref;
    solo(ids[0], n[0], 8, &ref); /* r0 went on unaffected */
    ck_assert_str_eq(o[0].text, ref.text);
    for (int i = 0; i < 4; i++) {
        out_read(r[i], &o[i]); /* nothing comes after END */
        eng_req_release(r[i]);
    }
    eng_destroy(e);
}
END_TEST

START_TEST(failed_pass_ends_its_requests)
{
    struct eng_config cfg = cfg_base();
    cfg.max_seqs = 1;
    struct engine *e = engine_open(&cfg);
    int32_t ids[32];
    int n = encode(e, P_SHORT, ids, 32);
    struct eng_params p = params_greedy(4);
    struct eng_req *a = submit(e, ids, n, &p), *w = submit(e, ids, n, &p);
    eng_take_incoming(e);
    struct sched_batch b;
    ck_assert_int_eq(sched_step(e, &b), 1);
    ck_assert_int_eq(sched_update(e, &b, -EIO, 0.01, e->b_res), 1); /* w is still waiting */
    struct out oa = {0}, ow = {0};
    out_read(a, &oa);
    ck_assert_int_eq(oa.finish, ENG_FINISH_ERROR);
    ck_assert_ptr_nonnull(strstr(oa.text, "forward pass failed"));
    ck_assert_int_eq(oa.n_tokens, 0);
    ck_assert_int_eq(e->n_active, 0);
    ck_assert_int_eq(kv_pool_n_free(e->pool), e->info.kv_blocks); /* its blocks are back */
    /* the request that was not in the pass runs as usual */
    run_all(e);
    out_read(w, &ow);
    ck_assert_int_eq(ow.finish, ENG_FINISH_LENGTH);
    ck_assert_int_eq(ow.n_tokens, 4);
    ck_assert_int_eq(kv_pool_n_free(e->pool), e->info.kv_blocks);
    eng_req_release(a);
    eng_req_release(w);
    eng_destroy(e);
}
END_TEST

/*
 * /health's liveness: an engine thread silent for over ENG_STALL_MIN_S, and
 * over ENG_STALL_STEPS of its longest step, is stalled; a slow step is not.
 */
/* The prompt log-probability events of r (read to its end), and its generated tokens. */
struct plp_out {
    int n;
    int32_t token[128];
    float logprob[128];
    int rank[128];
    struct smp_result top[128];
    int n_gen_events, prompt_after_gen;
    enum eng_finish finish;
    float *embd;
    int n_embd;
};

static void plp_read(struct eng_req *r, struct plp_out *o)
{
    struct eng_event ev;
    while (eng_req_next(r, &ev, 0) == 0) {
        if (ev.kind == ENG_EV_PROMPT) {
            ck_assert_int_lt(o->n, 128);
            o->prompt_after_gen |= o->n_gen_events > 0;
            o->token[o->n] = ev.token;
            o->logprob[o->n] = ev.logprob;
            o->rank[o->n] = ev.rank;
            ck_assert_ptr_nonnull(ev.top);
            o->top[o->n++] = *ev.top;
        } else if (ev.kind == ENG_EV_TOKEN) {
            o->n_gen_events++;
        } else {
            o->finish = ev.finish;
            if (ev.embd) {
                o->embd = ev.embd;
                o->n_embd = ev.n_embd;
                ev.embd = NULL;
            }
        }
        eng_event_clear(&ev);
    }
}

/* The prompt's log-probabilities alone on a fresh engine: one pass, no cache. */
static void plp_solo(const int32_t *ids, int n, struct plp_out *o, int pooling)
{
    struct eng_config cfg = cfg_base();
    cfg.no_prefix_cache = 1;
    struct engine *e = engine_open(&cfg);
    struct eng_params p = params_greedy(0);
    p.prompt_logprobs = !pooling;
    p.prompt_top = 3;
    p.pooling = pooling;
    struct eng_req *r = submit(e, ids, n, &p);
    run_all(e);
    memset(o, 0, sizeof(*o));
    plp_read(r, o);
    eng_req_release(r);
    eng_destroy(e);
}

START_TEST(prompt_logprobs_survive_chunks_the_cache_and_preemption)
{
    struct eng_config cfg = cfg_base();
    cfg.kv_block = 4;
    cfg.kv_memory_mib = 2;     /* one of the two below fits at a time */
    cfg.max_batch_tokens = 12; /* small chunks, and few prompt rows a pass */
    cfg.max_seqs = 4;
    struct engine *e = engine_open(&cfg);
    int32_t ids[128];
    int n = encode(e, P_LONG, ids, 128);
    const int gen = 24;
    ck_assert_int_gt(sched_blocks_for(e, 2 * (n + gen)), e->info.kv_blocks); /* two do not fit */
    struct plp_out ref;
    plp_solo(ids, n, &ref, 0);
    ck_assert_int_eq(ref.n, n - 1);
    for (int i = 0; i < ref.n; i++) {
        ck_assert_int_eq(ref.token[i], ids[i + 1]);
        ck_assert(ref.logprob[i] <= 0 && ref.rank[i] >= 1);
        ck_assert_int_eq(ref.top[i].n_top, 3);
        ck_assert(ref.top[i].top[0].logprob >= ref.top[i].top[1].logprob);
        ck_assert(ref.rank[i] > 1 || ref.top[i].top[0].logprob == ref.logprob[i]);
    }
    /* a plain request caches the prompt; then two with prompt log-probs that cannot both fit */
    struct eng_params plain = params_greedy(2);
    struct eng_req *c = submit(e, ids, n, &plain);
    run_all(e);
    expect_ends(&c, 1, ENG_FINISH_LENGTH, 2);
    struct eng_params p = params_greedy(gen);
    p.prompt_logprobs = 1;
    p.prompt_top = 3;
    struct eng_req *a = submit(e, ids, n, &p), *b = submit(e, ids, n, &p);
    run_all(e);
    ck_assert_uint_gt(atomic_load(&e->st_preemptions), 0);
    struct eng_req *rs[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        struct plp_out o = {0};
        plp_read(rs[k], &o);
        ck_assert_int_eq(o.finish, ENG_FINISH_LENGTH);
        ck_assert_int_eq(o.n_gen_events, gen);
        ck_assert(!o.prompt_after_gen);
        ck_assert_int_eq(o.n, ref.n); /* each once: none again after the preemption */
        for (int i = 0; i < o.n; i++) {
            ck_assert_int_eq(o.token[i], ref.token[i]);
            ck_assert_float_eq(o.logprob[i], ref.logprob[i]); /* the same bits */
            ck_assert_int_eq(o.rank[i], ref.rank[i]);
            ck_assert_int_eq(o.top[i].top[2].token, ref.top[i].top[2].token);
        }
        eng_req_release(rs[k]);
    }
    /* max_tokens 0 without log-probs: nothing to compute, it ends at once */
    struct eng_params none = params_greedy(0);
    struct eng_req *z = submit(e, ids, n, &none);
    run_all(e);
    expect_ends(&z, 1, ENG_FINISH_LENGTH, 0);
    ck_assert_int_eq(kv_pool_n_free(e->pool), e->info.kv_blocks);
    eng_destroy(e);
}
END_TEST

START_TEST(embeddings_pool_the_same_however_the_work_is_split)
{
    struct eng_config cfg = cfg_base();
    cfg.kv_block = 4;
    cfg.kv_memory_mib = 2;
    cfg.max_batch_tokens = 8;
    struct engine *e = engine_open(&cfg);
    int32_t ids[128];
    int n = encode(e, P_LONG, ids, 128);
    for (int pooling = ENG_POOL_MEAN; pooling <= ENG_POOL_LAST; pooling++) {
        struct plp_out ref;
        plp_solo(ids, n, &ref, pooling);
        ck_assert_int_eq(ref.finish, ENG_FINISH_STOP);
        ck_assert_int_eq(ref.n_embd, e->info.n_embd);
        double ss = 0;
        for (int k = 0; k < ref.n_embd; k++)
            ss += (double)ref.embd[k] * ref.embd[k];
        ck_assert(fabs(ss - 1) < 1e-5);
        /* beside a generating request, in 8-token chunks, the prompt cached by the first */
        struct eng_params p = params_greedy(0);
        p.pooling = pooling;
        struct eng_params g = params_greedy(16);
        struct eng_req *x = submit(e, ids, n, &g), *y = submit(e, ids, n, &p),
                       *w = submit(e, ids, n, &p);
        run_all(e);
        expect_ends(&x, 1, ENG_FINISH_LENGTH, 16);
        struct eng_req *rs[2] = {y, w};
        for (int k = 0; k < 2; k++) {
            struct plp_out o = {0};
            plp_read(rs[k], &o);
            ck_assert_int_eq(o.finish, ENG_FINISH_STOP);
            ck_assert_int_eq(o.n_gen_events, 0);
            ck_assert_int_eq(o.n_embd, ref.n_embd);
            ck_assert(!memcmp(o.embd, ref.embd, sizeof(float) * (size_t)o.n_embd));
            free(o.embd);
            eng_req_release(rs[k]);
        }
        free(ref.embd);
    }
    /* a one-token input: mean, cls and last are the same vector */
    struct plp_out m, c, l;
    plp_solo(ids, 1, &m, ENG_POOL_MEAN);
    plp_solo(ids, 1, &c, ENG_POOL_CLS);
    plp_solo(ids, 1, &l, ENG_POOL_LAST);
    ck_assert(!memcmp(m.embd, c.embd, sizeof(float) * (size_t)m.n_embd));
    ck_assert(!memcmp(m.embd, l.embd, sizeof(float) * (size_t)m.n_embd));
    free(m.embd), free(c.embd), free(l.embd);
    eng_destroy(e);
}
END_TEST

START_TEST(min_tokens_and_stop_token_ids)
{
    struct eng_config cfg = cfg_base();
    struct engine *e = engine_open(&cfg);
    int32_t ids[64];
    int n = encode(e, P_SHORT, ids, 64);
    struct out ref = {0};
    struct eng_params p = params_greedy(12);
    struct eng_req *r = submit(e, ids, n, &p);
    run_all(e);
    out_read(r, &ref);
    eng_req_release(r);
    ck_assert_int_eq(ref.n_tokens, 12);
    /* the 3rd generated token as a stop token: the output ends on it, its text kept */
    int32_t stop = -1;
    {
        struct eng_params q = params_greedy(12);
        q.logprobs = 1;
        struct eng_req *t = submit(e, ids, n, &q);
        run_all(e);
        struct eng_event ev;
        int k = 0;
        while (eng_req_next(t, &ev, 0) == 0) {
            if (ev.kind == ENG_EV_TOKEN && k++ == 2)
                stop = ev.token;
            eng_event_clear(&ev);
        }
        eng_req_release(t);
    }
    ck_assert_int_ge(stop, 0);
    struct eng_params s = params_greedy(12);
    s.stop_ids = &stop;
    s.n_stop_ids = 1;
    struct eng_req *t = submit(e, ids, n, &s);
    run_all(e);
    struct out o = {0};
    out_read(t, &o);
    eng_req_release(t);
    ck_assert_int_eq(o.finish, ENG_FINISH_STOP);
    ck_assert_int_le(o.n_tokens, 3);
    ck_assert(!strncmp(o.text, ref.text, o.n));
    /* with min_tokens past it, the stop token cannot end it: the output runs to max_tokens */
    s.min_tokens = 12;
    s.ignore_eos = 0;
    t = submit(e, ids, n, &s);
    run_all(e);
    memset(&o, 0, sizeof(o));
    out_read(t, &o);
    eng_req_release(t);
    ck_assert_int_eq(o.finish, ENG_FINISH_LENGTH);
    ck_assert_int_eq(o.n_tokens, 12);
    eng_destroy(e);
}
END_TEST

START_TEST(a_silent_engine_is_stalled)
{
    struct engine *e = calloc(1, sizeof(*e));
    ck_assert_ptr_nonnull(e);
    ck_assert(eng_stalled_s(e) == 0); /* not started */
    double now = util_now_s();
    atomic_store(&e->beat_s, now - 1.0);
    atomic_store(&e->max_step_s, 0.05);
    ck_assert(eng_stalled_s(e) == 0);
    atomic_store(&e->beat_s, now - ENG_STALL_MIN_S - 5.0);
    ck_assert(eng_stalled_s(e) > ENG_STALL_MIN_S);
    /* a model whose steps take 4 s: 35 s of silence is under 10 of them */
    atomic_store(&e->max_step_s, 4.0);
    ck_assert(eng_stalled_s(e) == 0);
    free(e);
}
END_TEST

Suite *sched_suite(void)
{
    Suite *s = suite_create("sched");
    TCase *tc = tcase_create("smollm2");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, chunked_prefill_in_budget_sized_chunks);
    tcase_add_test(tc, decode_tokens_go_first);
    tcase_add_test(tc, budget_and_sequence_cap_hold);
    tcase_add_test(tc, admission_fits_the_pool);
    tcase_add_test(tc, preempted_sequence_resumes_bit_exact);
    tcase_add_test(tc, preempted_constrained_sequence_resumes_bit_exact);
    tcase_add_test(tc, constrained_and_plain_requests_share_passes_unchanged);
    tcase_add_test(tc, prefix_cache_serves_a_repeated_prompt);
    tcase_add_test(tc, choices_share_their_prompt_blocks);
    tcase_add_test(tc, stop_strings_across_token_boundaries);
    tcase_add_test(tc, stop_string_in_greedy_text);
    tcase_add_test(tc, cancel_queued_and_running);
    tcase_add_test(tc, failed_pass_ends_its_requests);
    tcase_add_test(tc, a_silent_engine_is_stalled);
    tcase_add_test(tc, prompt_logprobs_survive_chunks_the_cache_and_preemption);
    tcase_add_test(tc, embeddings_pool_the_same_however_the_work_is_split);
    tcase_add_test(tc, min_tokens_and_stop_token_ids);
    suite_add_tcase(s, tc);
    return s;
}

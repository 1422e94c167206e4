/*
 * engine/sched.c - the scheduler: sched_step() builds one forward pass over
 * the active requests (it never calls the model); the engine loop runs the
 * model and samples; sched_update() takes the sampled tokens back.
 *
 * Each step: drop cancelled requests; admit waiting ones in arrival order
 * while the sequence cap and the KV pool allow; put every decoding
 * sequence's next token in the batch, then prefill chunks of the others
 * (shortest remaining first, aged by waiting time) while the token and time
 * budgets last (chunked prefill, so a long prompt never stalls running
 * streams).  After the pass, each sequence whose last row was computed gets
 * its token appended and reported (engine/output.c).
 *
 * Admission takes a waiting request when the pool can hold the part of its
 * prompt not found in the prefix cache (kv_match_prefix).  Blocks are then
 * allocated as tokens are scheduled; when a decoding sequence finds the pool
 * short, the most recently admitted sequence is preempted: its blocks are
 * freed (they stay in the prefix cache) and it goes back to the front of
 * the queue with every token it has, to be recomputed.  Each token is
 * computed in a fixed attention order - prompt tokens in the multi-token
 * order, generated ones in the lone-token order - so recomputation gives
 * the same bits and the client sees the same text, with no gap.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/sched.h"
#include "util/clock.h"

int32_t sched_blocks_for(const struct engine *e, int64_t n)
{
    int64_t bs = e->info.kv_block;
    return (int32_t)((n + bs - 1) / bs);
}

/* Counts r in or out of the waiting queue's limits (--max-queue, --max-queue-tokens). */
static void queue_count(struct engine *e, struct eng_req *r, int in)
{
    if (r->in_queue == in)
        return;
    r->in_queue = in;
    atomic_fetch_add(&e->n_queued, in ? 1 : -1);
    atomic_fetch_add(&e->queued_tokens, in ? r->n_prompt : -r->n_prompt);
}

/* Gauges from the engine thread's state, leaving `gone` out (NULL: none). */
static void stats_refresh(struct engine *e, const struct eng_req *gone)
{
    int waiting = 0, running = 0;
    for (struct eng_req *r = e->wait_head; r; r = r->next)
        waiting += r != gone;
    for (int i = 0; i < e->n_active; i++)
        running += e->active[i] && e->active[i] != gone;
    atomic_store(&e->st_running, running);
    atomic_store(&e->st_waiting, waiting);
    atomic_store(&e->st_kv_used, e->info.kv_blocks - kv_pool_n_free(e->pool));
}

/* Ends r: queues END, frees its engine state and drops the engine's reference. */
static void finish(struct engine *e, struct eng_req *r, enum eng_finish f, const char *text,
                   size_t n)
{
    queue_count(e, r, 0);
    atomic_fetch_sub(&e->n_live, 1);
    struct eng_event ev = {.kind = ENG_EV_END, .finish = f, .t = util_now_s()};
    ev.text = out_copy(text ? text : "", text ? n : 0);
    ev.n_text = ev.text ? n : 0;
    ev.prompt_tokens = r->n_prompt;
    ev.cached_tokens = r->n_cached;
    ev.completion_tokens = r->n_gen;
    ev.t_submit = r->t_submit;
    ev.t_scheduled = r->t_scheduled;
    ev.t_first_token = r->t_first;
    if (f == ENG_FINISH_STOP && r->embd_out) {
        ev.embd = r->embd_out;
        ev.n_embd = e->info.n_embd;
        r->embd_out = NULL;
    }
    req_release_engine_state(e, r);
    stats_refresh(e, r); /* the gauges leave r out before its client can see its end */
    req_push(r, &ev);
    req_unref(r);
}

static void compact_active(struct engine *e)
{
    int k = 0;
    for (int i = 0; i < e->n_active; i++)
        if (e->active[i])
            e->active[k++] = e->active[i];
    e->n_active = k;
}

/* Ends every request, queued or active, that `which` picks (given `arg`). */
static void end_where(struct engine *e, int (*which)(const struct eng_req *, double), double arg,
                      enum eng_finish f, const char *msg)
{
    size_t n = msg ? strlen(msg) : 0;
    for (int i = 0; i < e->n_active; i++) {
        struct eng_req *r = e->active[i];
        if (r && which(r, arg)) {
            finish(e, r, f, msg, n);
            e->active[i] = NULL;
        }
    }
    compact_active(e);
    struct eng_req **pp = &e->wait_head, *prev = NULL;
    while (*pp) {
        struct eng_req *r = *pp;
        if (which(r, arg)) {
            *pp = r->next;
            finish(e, r, f, msg, n);
        } else {
            prev = r;
            pp = &r->next;
        }
    }
    e->wait_tail = prev;
}

static int any_request(const struct eng_req *r, double unused)
{
    (void)r;
    (void)unused;
    return 1;
}

static int is_cancelled(const struct eng_req *r, double unused)
{
    (void)unused;
    return atomic_load(&r->cancel);
}

static int submitted_before(const struct eng_req *r, double when)
{
    return r->t_submit < when;
}

void sched_abort_all(struct engine *e, enum eng_finish f, const char *msg)
{
    end_where(e, any_request, 0, f, msg);
}

/* Gives up a running sequence's blocks; it waits at the front of the queue. */
static void preempt(struct engine *e, int i)
{
    struct eng_req *r = e->active[i];
    e->active[i] = NULL;
    kv_free_seq(e->pool, &r->seq); /* its full blocks stay in the prefix cache */
    r->n_computed = 0;
    r->step_n = 0;
    r->next = e->wait_head;
    e->wait_head = r;
    if (!e->wait_tail)
        e->wait_tail = r;
    queue_count(e, r, 1);
    atomic_fetch_add(&e->st_preemptions, 1);
}

/* The most recently admitted active sequence, or -1. */
static int newest_active(const struct engine *e)
{
    for (int i = e->n_active - 1; i >= 0; i--)
        if (e->active[i])
            return i;
    return -1;
}

/* Moves waiting requests in while the sequence cap and the pool allow. */
static void admit(struct engine *e, double now)
{
    /* blocks the requests admitted in this call will take for their prompts */
    int32_t promised = 0;
    while (e->wait_head && e->n_active < e->cfg.max_seqs) {
        struct eng_req *r = e->wait_head;
        /*
         * Choices of one request (same notify, same prompt) share its blocks:
         * the next one waits until the first has prefilled and cached them.
         */
        int sibling_prefilling = 0;
        for (int i = 0; r->notify && !e->cfg.no_prefix_cache && i < e->n_active; i++) {
            const struct eng_req *a = e->active[i];
            sibling_prefilling |=
                a && a->notify == r->notify && a->n_prompt == r->n_prompt &&
                a->n_computed < a->n_prompt &&
                !memcmp(a->tokens, r->tokens, sizeof(int32_t) * (size_t)r->n_prompt);
        }
        if (sibling_prefilling)
            break;
        /*
         * reuse cached blocks; at least the last token is computed for its
         * logits, and every token whose logits or hidden state is still owed
         */
        int32_t upto = r->n_tokens - 1;
        if (r->plp >= 0 && r->plp_next - 1 < upto)
            upto = r->plp_next - 1;
        if ((r->pooling == ENG_POOL_MEAN || (r->pooling == ENG_POOL_CLS && !r->n_pooled)) &&
            r->n_pooled < upto)
            upto = r->n_pooled;
        int32_t matched = e->cfg.no_prefix_cache || upto <= 0
                              ? 0
                              : kv_match_prefix(e->pool, &r->seq, r->tokens, upto);
        int32_t need = sched_blocks_for(e, r->n_tokens) - r->seq.n_blocks;
        if (need > kv_pool_n_free(e->pool) - promised) {
            kv_free_seq(e->pool, &r->seq);
            break;
        }
        e->wait_head = r->next;
        if (!e->wait_head)
            e->wait_tail = NULL;
        r->next = NULL;
        if (r->max_tokens == 0 && r->plp < 0 && !r->pooling) { /* nothing to compute */
            kv_free_seq(e->pool, &r->seq);
            if (!r->admitted)
                r->t_scheduled = now;
            finish(e, r, ENG_FINISH_LENGTH, NULL, 0);
            continue;
        }
        if (req_constrain_start(e, r)) {
            const char *m = "the grammar's matcher could not be made (out of memory or a limit)";
            finish(e, r, ENG_FINISH_ERROR, m, strlen(m));
            continue;
        }
        if (!r->admitted) {
            if (smp_init(&r->smp, &r->sp, e->info.n_vocab, r->tokens, r->n_prompt)) {
                finish(e, r, ENG_FINISH_ERROR, "out of memory for the sampler", 29);
                continue;
            }
            r->smp_ready = 1;
            r->admitted = 1;
            tok_detok_init(&r->detok, e->tok, r->keep_special ? TOK_DETOK_SPECIAL : 0);
            r->t_scheduled = now;
            r->n_cached = matched;
            atomic_fetch_add(&e->st_prefix_queries, (unsigned long long)r->n_prompt);
            atomic_fetch_add(&e->st_prefix_hits, (unsigned long long)matched);
        }
        queue_count(e, r, 0);
        r->n_computed = matched;
        promised += need;
        e->active[e->n_active++] = r;
    }
}

/* Adds n tokens of r, from r->n_computed on, to the batch as its sequence *n_seq; -ENOSPC
 * when the pool is short.  *rows and *erows count logits and hidden-state rows. */
static int add_tokens(struct engine *e, struct eng_req *r, int n, int *T, int *rows, int *erows,
                      int *n_seq)
{
    if (kv_alloc_slots(e->pool, &r->seq, r->n_computed + n - r->seq.n_tokens))
        return -ENOSPC;
    int s = (*n_seq)++;
    e->b_tables[s] = r->seq.blocks;
    e->b_nblocks[s] = r->seq.n_blocks;
    for (int i = 0; i < n; i++) {
        int pos = r->n_computed + i;
        e->b_tokens[*T] = r->tokens[pos];
        e->b_pos[*T] = pos;
        e->b_seq[*T] = s;
        e->b_order[*T] = pos < r->n_prompt && r->n_prompt > 1;
        /* logits: the next token's row (none when nothing is generated), prompt rows owed */
        e->b_want[*T] = (pos == r->n_tokens - 1 && r->max_tokens > 0) ||
                        (r->plp >= 0 && pos >= r->plp_next - 1 && pos < r->n_prompt - 1);
        if (e->b_want[*T]) {
            e->b_rpos[*rows] = pos;
            e->b_rows[(*rows)++] = r;
        }
        e->b_ewant[*T] = r->pooling == ENG_POOL_MEAN   ? pos >= r->n_pooled
                         : r->pooling == ENG_POOL_CLS  ? pos == 0 && !r->n_pooled
                         : r->pooling == ENG_POOL_LAST ? pos == r->n_prompt - 1
                                                       : 0;
        if (e->b_ewant[*T]) {
            e->b_epos[*erows] = pos;
            e->b_erows[(*erows)++] = r;
        }
        (*T)++;
    }
    r->step_n = n;
    return 0;
}

void sched_update_stats(struct engine *e)
{
    stats_refresh(e, NULL);
}

void sched_tick(struct engine *e)
{
    double now = util_now_s(), limit = e->cfg.request_timeout;
    if (limit > 0) {
        char msg[96];
        snprintf(msg, sizeof(msg), "the request timed out after %g s (--request-timeout)", limit);
        end_where(e, submitted_before, now - limit, ENG_FINISH_TIMEOUT, msg);
    }
    sched_update_stats(e);
}

/* ---- the cost of a forward pass ---------------------------------------------- */

void sched_cost_init(struct engine *e)
{
    const struct model_hparams *hp = &e->m->hp;
    double d = hp->n_embd, q = (double)hp->n_head * hp->head_dim,
           kv = (double)hp->n_head_kv * hp->head_dim;
    /* multiply-adds of one token: q, k, v, o, gate, up, down in every layer */
    double dense = hp->n_layer * (d * q + 2 * d * kv + q * d + 3 * d * hp->n_ff);
    e->cost_attn = hp->n_layer * 2.0 * q / dense; /* q.k and p.v over one position */
    e->cost_row = d * hp->n_vocab / dense;        /* the output layer, for a logits row */
}

/* Units of n tokens of one sequence at positions from..from+n-1, with `rows` logits rows. */
static double chunk_units(const struct engine *e, int from, int n, int rows)
{
    return n + e->cost_attn * ((double)n * from + (double)n * (n - 1) / 2) + rows * e->cost_row;
}

/* Takes in one timed pass: the fit forgets old passes at 5% a pass. */
static void cost_observe(struct engine *e, double units, double seconds)
{
    const double keep = 0.95;
    e->fit_w = keep * e->fit_w + 1;
    e->fit_x = keep * e->fit_x + units;
    e->fit_y = keep * e->fit_y + seconds;
    e->fit_xx = keep * e->fit_xx + units * units;
    e->fit_xy = keep * e->fit_xy + units * seconds;
    double den = e->fit_w * e->fit_xx - e->fit_x * e->fit_x;
    double b =
        den > 1e-9 * e->fit_xx * e->fit_w ? (e->fit_w * e->fit_xy - e->fit_x * e->fit_y) / den : 0;
    double a = b > 0 ? (e->fit_y - b * e->fit_x) / e->fit_w : 0;
    if (b <= 0 || a < 0) { /* too few kinds of pass for a line: through the origin */
        a = 0;
        b = e->fit_y / e->fit_x;
    }
    e->fit_a = a;
    e->fit_b = b;
}

/* The units a pass may have to stay within --max-step-ms; < 0: no bound. */
static double unit_budget(const struct engine *e)
{
    if (e->cfg.max_step_ms < 0 || e->fit_b <= 0)
        return -1;
    double left = e->cfg.max_step_ms / 1000.0 - e->fit_a;
    return left > 0 ? left / e->fit_b : 0;
}

/*
 * The prefilling sequences in the order they get this step's prefill
 * budget: shortest remaining prompt first, aged by the time waited (a
 * sequence gains as many tokens of priority as the engine prefills in the
 * time it has waited), so short prompts overtake a long one but never
 * starve it.
 */
static double prefill_key(const struct engine *e, const struct eng_req *r, double now)
{
    double per_s = e->fit_b > 0 ? 1.0 / e->fit_b : 1000.0;
    return (double)(r->n_tokens - r->n_computed) - per_s * (now - r->t_submit);
}

int sched_step(struct engine *e, struct sched_batch *out)
{
    memset(out, 0, sizeof(*out));
    double now = util_now_s();
    end_where(e, is_cancelled, 0, ENG_FINISH_CANCELLED, NULL);
    admit(e, now);
    int T = 0, rows = 0, erows = 0, n_seq = 0, budget = e->cfg.max_batch_tokens;
    double units = 0, ubudget = unit_budget(e);
    for (int i = 0; i < e->n_active; i++)
        e->active[i]->step_n = 0;
    /* every decoding sequence's next token first; preempt the newest when short */
    for (int i = 0; i < e->n_active && T < budget; i++) {
        struct eng_req *r = e->active[i];
        if (!r || r->n_tokens - r->n_computed != 1)
            continue;
        /* the newest is never before i, so it has nothing in the batch yet */
        while (e->active[i] && add_tokens(e, r, 1, &T, &rows, &erows, &n_seq))
            preempt(e, newest_active(e));
        if (e->active[i])
            units += chunk_units(e, r->n_computed, 1, 1);
    }
    /* then prefill chunks, by prefill_key, while the token and time budgets last */
    int n_pre = 0;
    for (int i = 0; i < e->n_active; i++) {
        struct eng_req *r = e->active[i];
        if (r && r->n_tokens - r->n_computed > 1)
            e->b_pre[n_pre++] = r;
    }
    struct eng_req **pre = e->b_pre;
    for (int i = 1; i < n_pre; i++) { /* insertion sort: a handful of prefills */
        struct eng_req *r = pre[i];
        double k = prefill_key(e, r, now);
        int j = i;
        for (; j > 0 && prefill_key(e, pre[j - 1], now) > k; j--)
            pre[j] = pre[j - 1];
        pre[j] = r;
    }
    /*
     * With a time bound, a pass's units stay within what the fit says the
     * bound leaves, and never past twice the largest pass timed within it
     * so far (a fresh engine: 4 blocks' worth), so that an estimate gone
     * wrong, or none yet, cannot make one pass take many times the bound.
     */
    double limit = -1;
    if (e->cfg.max_step_ms >= 0) {
        limit = 2 * (e->ok_units > 0 ? e->ok_units : 4.0 * e->info.kv_block);
        if (ubudget >= 0 && ubudget < limit)
            limit = ubudget;
    }
    int first = 1;
    for (int i = 0; i < n_pre && T < budget; i++) {
        struct eng_req *r = pre[i];
        int left = r->n_tokens - r->n_computed, n = left < budget - T ? left : budget - T;
        if (limit >= 0) {
            /* the most tokens that fit; the first chunk at least a block */
            int lo = 0, hi = n;
            while (lo < hi) {
                int mid = (lo + hi + 1) / 2;
                if (units + chunk_units(e, r->n_computed, mid, mid == left) <= limit)
                    lo = mid;
                else
                    hi = mid - 1;
            }
            int least = first ? (e->info.kv_block < n ? e->info.kv_block : n) : 0;
            n = lo > least ? lo : least;
        }
        if (r->plp >= 0 && r->n_computed + n > r->plp_next - 1) {
            /* prompt rows: as many as the logits buffer has room for, a row kept per sequence */
            int room = e->cap_rows - rows - (e->n_active - n_seq);
            int owed_from = r->plp_next - 1 > r->n_computed ? r->plp_next - 1 : r->n_computed;
            if (owed_from - r->n_computed + room < n)
                n = owed_from - r->n_computed + (room > 0 ? room : 0);
            if (n <= 0)
                continue;
        }
        if (n <= 0)
            break;
        first = 0;
        if (add_tokens(e, r, n, &T, &rows, &erows, &n_seq) ==
            0) /* short: it waits for blocks to free up */
            units += chunk_units(e, r->n_computed, n, n == left);
    }
    if (T == 0 && e->n_active > 0) {
        /* prefills hold the pool and none can go on: the newest gives way */
        int newest = newest_active(e);
        if (newest >= 0)
            preempt(e, newest);
        compact_active(e);
        sched_update_stats(e);
        return 1;
    }
    if (T == 0) {
        sched_update_stats(e);
        return 0;
    }
    out->mb.n = T;
    out->mb.tokens = e->b_tokens;
    out->mb.pos = e->b_pos;
    out->mb.seq = e->b_seq;
    out->mb.want_logits = e->b_want;
    out->mb.gemm_order = e->b_order;
    out->mb.n_seq = n_seq;
    out->mb.tables = (const int32_t *const *)e->b_tables;
    out->mb.n_blocks = e->b_nblocks;
    out->mb.want_embd = erows ? e->b_ewant : NULL;
    out->mb.embd = e->embd;
    out->n_rows = rows;
    out->n_erows = erows;
    out->rows = e->b_rows;
    out->units = units;
    return 1;
}

/* Adds the step's hidden-state rows to their requests' pools. */
static void pool_rows(struct engine *e, const struct sched_batch *b)
{
    int d = e->info.n_embd;
    for (int j = 0; j < b->n_erows; j++) {
        struct eng_req *r = e->b_erows[j];
        const float *h = e->embd + (size_t)j * d;
        if (r->pooling == ENG_POOL_MEAN)
            for (int k = 0; k < d; k++)
                r->pool_sum[k] += h[k];
        else
            memcpy(r->pool_sum, h, sizeof(float) * (size_t)d);
        r->n_pooled = r->pooling == ENG_POOL_MEAN ? e->b_epos[j] + 1 : 1;
    }
}

/* The pooled vector, L2-normalised, into r->embd_out; 0 or -ENOMEM. */
static int pool_finish(struct engine *e, struct eng_req *r)
{
    int d = e->info.n_embd;
    if (!(r->embd_out = malloc(sizeof(float) * (size_t)d)))
        return -ENOMEM;
    double ss = 0, scale = r->pooling == ENG_POOL_MEAN ? 1.0 / r->n_prompt : 1.0;
    for (int k = 0; k < d; k++) {
        double v = r->pool_sum[k] * scale;
        ss += v * v;
    }
    double inv = ss > 0 ? 1.0 / sqrt(ss) : 0;
    for (int k = 0; k < d; k++)
        r->embd_out[k] = (float)(r->pool_sum[k] * scale * inv);
    return 0;
}

int sched_update(struct engine *e, const struct sched_batch *b, int rc, double took,
                 const struct smp_result *res)
{
    if (!rc)
        cost_observe(e, b->units, took);
    if (!rc && e->cfg.max_step_ms >= 0 && took <= e->cfg.max_step_ms / 1000.0 &&
        b->units > e->ok_units)
        e->ok_units = b->units;
    if (rc) {
        char msg[96];
        snprintf(msg, sizeof(msg), "the forward pass failed: %s", strerror(-rc));
        compact_active(e);
        for (int i = 0; i < e->n_active; i++)
            finish(e, e->active[i], ENG_FINISH_ERROR, msg, strlen(msg));
        e->n_active = 0;
    } else {
        pool_rows(e, b);
        for (int i = 0; i < e->n_active; i++) {
            struct eng_req *r = e->active[i];
            if (r && r->step_n) {
                r->n_computed += r->step_n;
                if (!e->cfg.no_prefix_cache)
                    kv_commit_blocks(e->pool, &r->seq, r->tokens, r->n_computed);
            }
        }
        double now = util_now_s();
        /* embeddings and prompt-only requests end once the prompt is computed */
        for (int i = 0; i < e->n_active; i++) {
            struct eng_req *r = e->active[i];
            if (!r || r->n_computed < r->n_prompt || (r->max_tokens > 0 && !r->pooling))
                continue;
            enum eng_finish f = ENG_FINISH_LENGTH;
            if (r->pooling)
                f = pool_finish(e, r) ? ENG_FINISH_ERROR : ENG_FINISH_STOP;
            const char *m = f == ENG_FINISH_ERROR ? "out of memory for the embedding" : NULL;
            finish(e, r, f, m, m ? strlen(m) : 0);
            e->active[i] = NULL;
        }
        for (int j = 0; j < b->n_rows; j++) {
            struct eng_req *r = b->rows[j];
            int32_t t = res[j].token;
            enum eng_finish f;
            struct out_end end = {0};
            if (t == -3) /* a prompt row, reported */
                continue;
            if (t < 0) {
                f = ENG_FINISH_ERROR;
                end.text = t == -2 ? "the grammar allows no token here (the vocabulary cannot "
                                     "spell what must come next)"
                                   : "sampling failed";
                end.n = strlen(end.text);
            } else {
                int eog = !r->ignore_eos && tok_is_eog(e->tok, t), stop_id = 0;
                for (int k = 0; !eog && k < r->n_stop_ids; k++)
                    stop_id = stop_id || r->stop_ids[k] == t;
                /* a stop token ends the output: a control token's text is left out */
                if (stop_id && tok_type(e->tok, t) == TOK_TYPE_CONTROL && !r->keep_special)
                    eog = 1;
                r->force_last = stop_id;
                if (!eog && req_constrain_accept(r, t)) {
                    f = ENG_FINISH_ERROR;
                    end.text = "the grammar refused a token it had allowed";
                    end.n = strlen(end.text);
                } else {
                    if (!eog) {
                        smp_accept(&r->smp, t);
                        r->n_gen++;
                        r->tokens[r->n_tokens++] = t;
                    }
                    f = out_token(r, &res[j], eog, now, &end);
                }
            }
            if (f == ENG_FINISH_NONE)
                continue;
            finish(e, r, f, end.text, end.n);
            for (int i = 0; i < e->n_active; i++)
                if (e->active[i] == r)
                    e->active[i] = NULL;
        }
    }
    compact_active(e);
    sched_update_stats(e);
    return e->n_active > 0 || e->wait_head;
}

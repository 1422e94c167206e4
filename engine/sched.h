/*
 * engine/sched.h - private to engine/: the engine's state, a request's
 * state, and the scheduler that turns them into forward passes.
 *
 * Threads: eng_submit/eng_cancel/eng_req_next run on callers' threads and
 * touch only the incoming list (under engine.mu) and a request's channel
 * (under req.mu).  Everything else - the queues, block tables, samplers,
 * the model - belongs to the engine thread alone.
 */
#ifndef CINFER_ENGINE_SCHED_H
#define CINFER_ENGINE_SCHED_H

#include <pthread.h>
#include <stdatomic.h>
#include <uv.h>

#include "device/dev.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/vocab.h"
#include "kv-cache/kv.h"

struct gram_matcher;
struct eng_constrain;

struct eng_req {
    struct engine *e;
    atomic_int refs;   /* the caller's handle and the engine's */
    atomic_int cancel; /* set by eng_cancel */

    /* the output channel, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct eng_event *ev; /* queue: ev[head .. n) */
    int head, n, cap;
    int ended;    /* END was queued */
    int released; /* the caller dropped its handle: notify is gone */
    struct eng_notify *notify;
    int taken; /* END was taken */

    /* engine thread only */
    struct eng_req *next; /* in the incoming list or the waiting queue */
    int32_t *tokens;      /* prompt then generated: n_tokens of cap */
    int n_prompt, n_tokens, cap_tokens;
    int n_computed; /* tokens whose K/V is stored */
    int n_gen;      /* generated tokens reported */
    struct kv_seq seq;
    int n_cached;         /* prompt tokens found in the prefix cache at first admission */
    int admitted;         /* has been admitted once (sampler ready) */
    int in_queue;         /* counted in engine.n_queued (waiting, not running) */
    struct smp_params sp; /* sp.bias points into bias */
    struct smp_bias *bias;
    struct smp smp;
    int smp_ready;
    int step_n; /* tokens it has in the forward pass being built */
    int max_tokens, ignore_eos, logprobs;
    char **stop;
    int n_stop;
    struct tok_detok detok;
    struct buf pending;      /* text not yet released */
    struct gram *grammar;    /* the constraint, or NULL (a reference) */
    struct gram_matcher *gm; /* its matcher, made at admission (engine thread) */
    uint32_t *mask;          /* the tokens it allows next, one bit each */
    int gram_done;           /* the grammar is complete: the sequence stops */
    double t_submit, t_scheduled, t_first;
    /* vLLM's extras (eng_params) */
    int min_tokens, include_stop;
    int32_t *stop_ids;
    int n_stop_ids;
    uint32_t *ban;    /* while n_gen < min_tokens: the tokens that may be drawn (no end tokens) */
    int force_last;   /* out_token: this token is the last (a stop token) */
    int keep_special; /* control tokens' text is output */
    /* prompt log-probabilities: -1 none, else alternatives; the next prompt token to report */
    int plp, plp_next;
    /* an embedding request (enum eng_pool); positions pooled so far and their sum */
    int pooling, n_pooled;
    float *pool_sum; /* n_embd */
    float *embd_out; /* the finished vector, handed to the END event */
};

struct engine {
    struct eng_config cfg;
    /* the engine thread's heartbeat (eng_stalled_s): util_now_s() at its last
     * tick or step end, and the longest step so far, in seconds */
    _Atomic double beat_s, max_step_s;
    struct gguf_file *g;
    struct tok *tok;
    struct eng_constrain *constrain; /* grammar vocabulary and compile cache */
    struct dev dev;
    struct model *m;
    struct model_kv kv;
    struct kv_pool *pool;
    struct eng_info info;

    pthread_t thread;
    int thread_started, thread_joined;
    uv_loop_t loop;
    uv_async_t wake;
    uv_idle_t idle;
    uv_timer_t timer;
    int loop_ready;

    pthread_mutex_t mu; /* guards incoming, stopping and draining */
    struct eng_req *in_head, *in_tail;
    int stopping, draining;
    atomic_int n_queued;        /* submitted, not running */
    atomic_llong queued_tokens; /* their prompt tokens */
    atomic_int n_live;          /* submitted, not ended */

    /* engine thread only */
    struct eng_req *wait_head, *wait_tail;
    struct eng_req **active; /* admitted, in admission order */
    int n_active;
    int32_t *b_tokens, *b_pos, *b_seq; /* max_batch_tokens */
    uint8_t *b_order, *b_want;
    int32_t **b_tables, *b_nblocks; /* max_seqs: the step's block tables */
    struct eng_req **b_rows;        /* the request of each logits row */
    int32_t *b_rpos;                /* the position of each logits row */
    int cap_rows;                   /* logits rows a pass may have */
    struct eng_req **b_erows;       /* the request of each hidden-state row (embeddings) */
    int32_t *b_epos;                /* its position */
    uint8_t *b_ewant;               /* per batch token: its hidden state is wanted */
    float *embd;                    /* (max_batch_tokens, n_embd): the step's hidden-state rows */
    int32_t *eog_ids;               /* the vocabulary's end-of-generation tokens */
    int n_eog;
    struct smp_result *b_res; /* the token sampled for each */
    struct eng_req **b_pre;   /* the prefilling sequences, in the order they are served */
    float *logits;

    /*
     * A forward pass's cost: 1 unit per token, plus attn units per position
     * it attends over and row units per logits row (from the model's
     * shapes); seconds = fit_a + fit_b * units, fitted over recent passes.
     */
    double cost_attn, cost_row;
    double fit_w, fit_x, fit_y, fit_xx, fit_xy; /* decayed sums of (units, seconds) */
    double fit_a, fit_b;                        /* fit_b 0: nothing timed yet */
    double ok_units; /* the most units of a pass that took at most max_step_ms */

    atomic_int st_running, st_waiting, st_kv_used;
    atomic_ullong st_preemptions, st_prefix_queries, st_prefix_hits;
    atomic_ullong st_step_n[ENG_STEP_BUCKETS + 1], st_step_tokens; /* eng_stats.step_* */
};

/* One forward pass as the scheduler built it. */
struct sched_batch {
    struct model_batch mb;
    int n_rows;            /* logits rows, in batch order */
    struct eng_req **rows; /* the request of each */
    int n_erows;           /* hidden-state rows (embeddings), in batch order */
    double units;          /* its estimated cost (see engine.cost_*) */
};
/*
 * Admits, preempts and builds the next forward pass into *b; never calls the
 * model.  Returns 1 when there is more work (b->mb.n may still be 0: a
 * preemption step), 0 when idle.  *b stays valid until sched_update.
 */
int sched_step(struct engine *e, struct sched_batch *b);
/*
 * Takes a pass back: rc is model_forward's result, took its seconds, and
 * res[b->n_rows] the sampled tokens (token < 0: sampling failed).  Appends
 * the tokens, reports them (output.c), ends finished requests and frees
 * their blocks.  Returns 1 when there is more work.
 */
int sched_update(struct engine *e, const struct sched_batch *b, int rc, double took,
                 const struct smp_result *res);
/* The loop's step: sched_step, model_forward, sampling, sched_update.  1: more work. */
int eng_step(struct engine *e);
/* Moves submitted requests into the waiting queue; 1 when stopping was asked. */
int eng_take_incoming(struct engine *e);
/* Ends every request (queued or active) with `finish`; for shutdown. */
void sched_abort_all(struct engine *e, enum eng_finish finish, const char *msg);
/* Ends requests past their deadline and refreshes the gauges (the timer). */
void sched_tick(struct engine *e);
/* Gauges from the engine thread's state. */
void sched_update_stats(struct engine *e);
/* Sets the cost model's per-token coefficients from the model's shapes. */
void sched_cost_init(struct engine *e);
/* Blocks a request of n tokens needs. */
int32_t sched_blocks_for(const struct engine *e, int64_t n);

/* engine/output.c */
/* How a request ended: the text to release with END (or the error message). */
struct out_end {
    const char *text;
    size_t n;
};
/*
 * Reports r's sampled token (already appended unless eog): detokenizes,
 * scans the stop strings and queues its event.  Returns ENG_FINISH_NONE
 * while r goes on, else how it ended, with the END event's text in *end.
 */
enum eng_finish out_token(struct eng_req *r, const struct smp_result *res, int eog, double now,
                          struct out_end *end);
/* A NUL-terminated malloc'd copy of n bytes; NULL when out of memory. */
char *out_copy(const char *p, size_t n);

/* engine/request.c */
struct eng_req *req_create(void);
/* Drops one reference; frees the request at zero. */
void req_unref(struct eng_req *r);
/* Queues an event (taking ownership of its text); 0 or -ENOMEM. */
int req_push(struct eng_req *r, struct eng_event *ev);
/* Frees the engine-side state (block table, sampler, text); e->pool gets the blocks. */
void req_release_engine_state(struct engine *e, struct eng_req *r);

/* ---- constrained decoding (engine/constrain.c) ---- */
int eng_constrain_init(struct engine *e, char *err, size_t errlen);
void eng_constrain_free(struct engine *e);
/* At admission: the matcher made, or rebuilt from the tokens so far.  0, -ENOMEM, -EINVAL. */
int req_constrain_start(struct engine *e, struct eng_req *r);
/* r->mask for the next token (end tokens where the grammar may end): 0, -ENOENT (none), < 0. */
int req_constrain_mask(struct engine *e, struct eng_req *r);
/* After a sampled token: the matcher advanced (sets gram_done); 0 or -EINVAL. */
int req_constrain_accept(struct eng_req *r, int32_t token);
void req_constrain_free(struct eng_req *r);

#endif

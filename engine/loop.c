/*
 * engine/loop.c - the serving engine: loading, the engine thread and its
 * libuv loop, and the calls other threads make (submit, cancel, stats).
 *
 * The loop has two handles: an async handle that submit, cancel and
 * shutdown wake, and an idle handle that is started while there is work so
 * that the loop runs one scheduler step per turn and sleeps otherwise.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/sched.h"
#include "grammar/gram.h"
#include "util/clock.h"
#include "util/errmsg.h"
#include "util/quant.h"

#define DEFAULT_MAX_SEQS 64
#define DEFAULT_BATCH_TOKENS 512
#define DEFAULT_STEP_MS 100
#define DEFAULT_CONTEXTS 4 /* the default pool holds this many full contexts */
#define DEFAULT_MAX_QUEUE 256
#define DEFAULT_QUEUE_CONTEXTS 64 /* default --max-queue-tokens: this many full contexts */
#define TICK_MS 100
/* logits rows a pass may add for prompt log-probabilities, past one row a sequence */
#define PROMPT_LP_ROWS 64

/* Closes the loop's handles; the loop then ends once it runs again. */
static void close_handles(struct engine *e)
{
    uv_close((uv_handle_t *)&e->idle, NULL);
    uv_close((uv_handle_t *)&e->wake, NULL);
    uv_close((uv_handle_t *)&e->timer, NULL);
}

/*
 * A prompt row's report: the log-probability of the prompt token after
 * position pos under the raw logits, its rank and r->plp alternatives.
 */
static void prompt_logprob(struct engine *e, struct eng_req *r, int pos, const float *logits)
{
    int V = e->info.n_vocab;
    int32_t tok = r->tokens[pos + 1];
    float lse = smp_log_sum_exp(logits, V);
    int rank = 1;
    for (int i = 0; i < V; i++)
        rank += logits[i] > logits[tok];
    struct eng_event ev = {.kind = ENG_EV_PROMPT, .t = util_now_s(), .token = tok, .rank = rank};
    ev.logprob = logits[tok] - lse;
    ev.top = calloc(1, sizeof(*ev.top));
    ev.text = out_copy("", 0);
    if (ev.top && ev.text) {
        ev.top->token = tok;
        ev.top->logprob = ev.logprob;
        int32_t best[SMP_MAX_LOGPROBS];
        int k = r->plp > 0 ? smp_top_n(logits, V, r->plp, best) : 0; /* ties to the lower id */
        for (int q = 0; q < k; q++) {
            ev.top->top[q].token = best[q];
            ev.top->top[q].logprob = logits[best[q]] - lse;
        }
        ev.top->n_top = ev.n_top = k;
    }
    if (!ev.top || !ev.text || req_push(r, &ev))
        eng_event_clear(&ev); /* out of memory: the report has a gap the reader sees */
    r->plp_next = pos + 2;
}

/* While n_gen < min_tokens: the tokens r may draw (its grammar's, less the end tokens). */
static const uint32_t *min_tokens_mask(struct engine *e, struct eng_req *r)
{
    int words = (e->info.n_vocab + 31) / 32;
    if (!r->ban && !(r->ban = malloc(sizeof(uint32_t) * (size_t)words)))
        return r->smp.allow;
    if (r->smp.allow)
        memcpy(r->ban, r->smp.allow, sizeof(uint32_t) * (size_t)words);
    else
        memset(r->ban, 0xff, sizeof(uint32_t) * (size_t)words);
    for (int i = 0; !r->ignore_eos && i < e->n_eog; i++)
        r->ban[e->eog_ids[i] / 32] &= ~(1u << (e->eog_ids[i] % 32));
    for (int i = 0; i < r->n_stop_ids; i++)
        r->ban[r->stop_ids[i] / 32] &= ~(1u << (r->stop_ids[i] % 32));
    for (int w = 0; w < words; w++)
        if (r->ban[w])
            return r->ban;
    return r->smp.allow; /* the grammar allows only an end: it wins */
}

int eng_step(struct engine *e)
{
    struct sched_batch b;
    int more = sched_step(e, &b);
    if (b.mb.n == 0)
        return more;
    double t0 = util_now_s();
    int rc = model_forward(e->m, &e->kv, &b.mb, e->logits);
    double took = util_now_s() - t0;
    for (int j = 0; !rc && j < b.n_rows; j++) {
        struct eng_req *r = b.rows[j];
        const float *logits = e->logits + (size_t)j * e->info.n_vocab;
        if (e->b_rpos[j] < r->n_tokens - 1) { /* a prompt row: its log-probability */
            prompt_logprob(e, r, e->b_rpos[j], logits);
            e->b_res[j].token = -3;
            continue;
        }
        r->smp.allow = NULL;
        if (r->gm) { /* the grammar's mask, then sampling among what it allows */
            int mrc = req_constrain_mask(e, r);
            if (mrc) {
                e->b_res[j].token = mrc == -ENOENT ? -2 : -1;
                continue;
            }
            r->smp.allow = r->mask;
        }
        if (r->n_gen < r->min_tokens)
            r->smp.allow = min_tokens_mask(e, r);
        if (smp_sample(&r->smp, logits, &e->b_res[j]))
            e->b_res[j].token = -1;
    }
    if (!rc) { /* iteration_tokens_total: tokens sampled, and whole prompts at their first */
        int n = 0, k = 0;
        for (int j = 0; j < b.n_rows; j++)
            if (e->b_res[j].token >= 0)
                n += 1 + (b.rows[j]->t_first == 0 ? b.rows[j]->n_prompt : 0);
        while (k < ENG_STEP_BUCKETS && n > ENG_STEP_LE(k))
            k++;
        atomic_fetch_add(&e->st_step_n[k], 1);
        atomic_fetch_add(&e->st_step_tokens, (unsigned long long)n);
    }
    return sched_update(e, &b, rc, took, e->b_res);
}

/* the heartbeat /health reads (eng_stalled_s) */
static void beat(struct engine *e, double t0)
{
    double now = util_now_s();
    if (t0 > 0 && now - t0 > atomic_load(&e->max_step_s))
        atomic_store(&e->max_step_s, now - t0);
    atomic_store(&e->beat_s, now);
}

static void idle_cb(uv_idle_t *h)
{
    struct engine *e = h->data;
    double t0 = util_now_s();
    int more = eng_step(e);
    beat(e, t0);
    if (!more)
        uv_idle_stop(h);
}

int eng_take_incoming(struct engine *e)
{
    pthread_mutex_lock(&e->mu);
    struct eng_req *in = e->in_head;
    int stopping = e->stopping;
    e->in_head = e->in_tail = NULL;
    pthread_mutex_unlock(&e->mu);
    if (in) {
        if (e->wait_tail)
            e->wait_tail->next = in;
        else
            e->wait_head = in;
        while (in->next)
            in = in->next;
        e->wait_tail = in;
    }
    return stopping;
}

static void wake_cb(uv_async_t *h)
{
    struct engine *e = h->data;
    if (eng_take_incoming(e)) {
        sched_abort_all(e, ENG_FINISH_ERROR, "the server is shutting down");
        uv_idle_stop(&e->idle);
        close_handles(e);
        return;
    }
    uv_idle_start(&e->idle, idle_cb);
}

static void timer_cb(uv_timer_t *h)
{
    beat(h->data, 0);
    sched_tick(h->data);
}

double eng_stalled_s(struct engine *e)
{
    double beat_s = atomic_load(&e->beat_s);
    if (beat_s == 0)
        return 0; /* not started yet */
    double age = util_now_s() - beat_s, longest = atomic_load(&e->max_step_s);
    return age > ENG_STALL_MIN_S && age > ENG_STALL_STEPS * longest ? age : 0;
}

void eng_drain(struct engine *e)
{
    pthread_mutex_lock(&e->mu);
    e->draining = 1;
    pthread_mutex_unlock(&e->mu);
}

int eng_idle(struct engine *e)
{
    return atomic_load(&e->n_live) == 0;
}

int eng_queue_full(struct engine *e)
{
    return atomic_load(&e->n_queued) >= e->cfg.max_queue;
}

static void *engine_main(void *arg)
{
    struct engine *e = arg;
    uv_run(&e->loop, UV_RUN_DEFAULT);
    return NULL;
}

const struct tok *eng_tok(const struct engine *e)
{
    return e->tok;
}

int eng_device_check(const char *name, const char *kernels, char *err, size_t errlen)
{
    return dev_check(name, err, errlen) || dev_kernels_check(kernels, err, errlen) ? -EINVAL : 0;
}

const char *eng_kernels_here(void)
{
    return dev_kernels_here();
}

const char *eng_devices_built(void)
{
    return dev_built();
}

void eng_get_info(const struct engine *e, struct eng_info *out)
{
    *out = e->info;
}

void eng_get_stats(struct engine *e, struct eng_stats *out)
{
    out->running = atomic_load(&e->st_running);
    out->waiting = atomic_load(&e->st_waiting);
    out->kv_used = atomic_load(&e->st_kv_used);
    out->kv_total = e->info.kv_blocks;
    out->preemptions = atomic_load(&e->st_preemptions);
    out->prefix_queries = atomic_load(&e->st_prefix_queries);
    out->prefix_hits = atomic_load(&e->st_prefix_hits);
    for (int i = 0; i <= ENG_STEP_BUCKETS; i++) {
        if (i < ENG_STEP_BUCKETS)
            out->step_le[i] = ENG_STEP_LE(i);
        out->step_n[i] = atomic_load(&e->st_step_n[i]);
    }
    out->step_tokens = atomic_load(&e->st_step_tokens);
    pthread_mutex_lock(&e->mu);
    out->draining = e->draining;
    pthread_mutex_unlock(&e->mu);
}

void eng_stop(struct engine *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    e->stopping = 1; /* later submits fail, with or without a thread */
    if (e->thread_started)
        uv_async_send(&e->wake);
    pthread_mutex_unlock(&e->mu);
    if (!e->thread_started)
        return;
    pthread_join(e->thread, NULL);
    e->thread_started = 0;
    e->thread_joined = 1;
}

void eng_destroy(struct engine *e)
{
    if (!e)
        return;
    eng_stop(e);
    if (e->loop_ready) {
        if (!e->thread_joined) { /* handles made but never run */
            eng_take_incoming(e);
            sched_abort_all(e, ENG_FINISH_ERROR, "the server is shutting down");
            close_handles(e);
            uv_run(&e->loop, UV_RUN_DEFAULT);
        }
        uv_loop_close(&e->loop);
    }
    pthread_mutex_destroy(&e->mu);
    eng_constrain_free(e);
    free(e->active);
    free(e->b_tokens);
    free(e->b_pos);
    free(e->b_seq);
    free(e->b_order);
    free(e->b_want);
    free(e->b_tables);
    free(e->b_nblocks);
    free(e->b_res);
    free(e->b_rows);
    free(e->b_rpos);
    free(e->b_erows);
    free(e->b_epos);
    free(e->b_ewant);
    free(e->embd);
    free(e->eog_ids);
    free(e->b_pre);
    free(e->logits);
    kv_pool_destroy(e->pool);
    if (e->kv.layers)
        model_kv_free(e->m, &e->kv);
    model_free(e->m);
    if (e->dev.ops)
        dev_destroy(&e->dev);
    tok_destroy(e->tok);
    gguf_close(e->g);
    free(e);
}

/* The tensor type of the K/V cache. */
static uint32_t kv_qt(const struct engine *e)
{
    return e->cfg.kv_type == ENG_KV_F32 ? QT_F32 : QT_F16;
}

/* Sizes the KV pool; returns usable blocks or a negative code. */
static int64_t pool_blocks(struct engine *e, char *err, size_t errlen)
{
    size_t block_bytes = model_kv_block_bytes(e->m, e->info.kv_block, kv_qt(e));
    int64_t per_ctx = sched_blocks_for(e, e->info.n_ctx);
    int64_t n;
    size_t usable, total;
    if (e->cfg.kv_memory_mib > 0) {
        n = (int64_t)((double)e->cfg.kv_memory_mib * 1048576.0 / (double)block_bytes);
    } else if (dev_mem_info(&e->dev, &usable, &total) == 0) {
        n = (int64_t)((double)usable / (double)block_bytes); /* an accelerator: what it has */
    } else {
        n = per_ctx * DEFAULT_CONTEXTS;
        long pages = sysconf(_SC_AVPHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
        if (pages > 0 && psize > 0) { /* at most half of the free memory */
            int64_t cap = (int64_t)((double)pages * (double)psize / 2.0 / (double)block_bytes);
            if (n > cap)
                n = cap;
        }
    }
    if (n < 2)
        return errmsg(err, errlen, -EINVAL, "%s%lld MiB holds fewer than 2 KV blocks of %zu bytes",
                      e->cfg.kv_memory_mib ? "--kv-memory " : "the device's free memory, ",
                      e->cfg.kv_memory_mib ? (long long)e->cfg.kv_memory_mib
                                           : (long long)(n * block_bytes >> 20),
                      block_bytes);
    if (n > INT32_MAX - 1)
        n = INT32_MAX - 1;
    return n;
}

/* The GGUF's <arch>.pooling_type as enum eng_pool, or -1 (none given, or one we lack). */
static int pooling_type(const struct gguf_file *g)
{
    struct gguf_str arch;
    char key[96];
    int64_t v;
    if (gguf_get_str(g, "general.architecture", &arch) || arch.n > 64)
        return -1;
    snprintf(key, sizeof(key), "%.*s.pooling_type", (int)arch.n, arch.p);
    if (gguf_get_int(g, key, &v))
        return -1;
    /* llama.cpp's LLAMA_POOLING_TYPE_*: 1 mean, 2 cls, 3 last */
    return v == 1 ? ENG_POOL_MEAN : v == 2 ? ENG_POOL_CLS : v == 3 ? ENG_POOL_LAST : -1;
}

int eng_create(const char *path, const struct eng_config *cfg, struct engine **out, char *err,
               size_t errlen)
{
    *out = NULL;
    struct engine *e = calloc(1, sizeof(*e));
    if (!e)
        return errmsg(err, errlen, -ENOMEM, "out of memory");
    pthread_mutex_init(&e->mu, NULL);
    e->cfg = *cfg;
    if (!e->cfg.kv_block)
        e->cfg.kv_block = ENG_DEFAULT_KV_BLOCK;
    if (!e->cfg.max_seqs)
        e->cfg.max_seqs = DEFAULT_MAX_SEQS;
    if (!e->cfg.max_batch_tokens)
        e->cfg.max_batch_tokens = DEFAULT_BATCH_TOKENS;
    if (!e->cfg.max_step_ms)
        e->cfg.max_step_ms = DEFAULT_STEP_MS;
    if (!e->cfg.max_queue)
        e->cfg.max_queue = DEFAULT_MAX_QUEUE;
    int rc = 0;
    if (e->cfg.kv_block < 1 || e->cfg.kv_block > 4096 || e->cfg.max_seqs < 1 ||
        e->cfg.max_batch_tokens < 1 || e->cfg.ctx < 0 || e->cfg.threads < 0 ||
        e->cfg.kv_memory_mib < 0 || e->cfg.max_queue < 0 || e->cfg.max_queue_tokens < 0 ||
        !(e->cfg.request_timeout >= 0) ||
        (e->cfg.kv_type != ENG_KV_F16 && e->cfg.kv_type != ENG_KV_F32))
        rc = errmsg(err, errlen, -EINVAL, "a KV or batch setting is out of range");
    if (!rc && e->cfg.max_seqs > e->cfg.max_batch_tokens)
        e->cfg.max_seqs = e->cfg.max_batch_tokens; /* every sequence needs a token slot */
    if (!rc) { /* the backend first: a device the build lacks is said before any loading */
        struct dev_config dc = {.threads = e->cfg.threads,
                                .kernels = e->cfg.kernels,
                                .exact_llamacpp = e->cfg.exact_llamacpp};
        rc = dev_create(e->cfg.device, &dc, &e->dev, e->info.device_note,
                        sizeof(e->info.device_note));
        if (rc)
            errmsg(err, errlen, rc, "%s", e->info.device_note);
        if (rc == -ENODEV)
            rc = -EINVAL; /* a setting this build or machine cannot honour */
    }
    rc = rc ? rc : gguf_open(path, &e->g, err, errlen);
    rc = rc ? rc : eng_tokenizer_load(e->g, NULL, &e->tok, err, errlen);
    rc = rc ? rc : eng_constrain_init(e, err, errlen);
    rc = rc ? rc : model_load(e->g, &e->dev, &e->m, err, errlen);
    if (!rc)
        sched_cost_init(e);
    if (!rc) {
        const struct model_hparams *hp = &e->m->hp;
        e->info.n_vocab = hp->n_vocab;
        e->info.n_ctx = e->cfg.ctx ? e->cfg.ctx : hp->n_ctx_train;
        e->info.kv_block = e->cfg.kv_block;
        e->info.arch = hp->arch == MODEL_QWEN2   ? "qwen2"
                       : hp->arch == MODEL_QWEN3 ? "qwen3"
                                                 : "llama";
        e->info.n_embd = hp->n_embd;
        e->info.pooling = pooling_type(e->g);
        e->info.kernels = dev_kernels_name(&e->dev);
        e->info.backend = dev_backend_name(&e->dev);
        if (e->info.n_ctx < 2 || e->info.n_ctx > hp->n_ctx_train)
            rc = errmsg(err, errlen, -EINVAL,
                        "--ctx %d is out of range (2 to %d, the model's context)", e->info.n_ctx,
                        hp->n_ctx_train);
        if (!e->cfg.max_queue_tokens)
            e->cfg.max_queue_tokens = (int64_t)DEFAULT_QUEUE_CONTEXTS * e->info.n_ctx;
        if ((size_t)hp->n_vocab != tok_n_vocab(e->tok))
            rc = errmsg(err, errlen, -EINVAL, "the tokenizer has %zu tokens but the model %d",
                        tok_n_vocab(e->tok), hp->n_vocab);
        struct gguf_str t;
        e->info.chat = TOK_CHAT_CHATML;
        if (gguf_get_str(e->g, "tokenizer.chat_template", &t) == 0) {
            e->info.chat_template = t.p;
            e->info.chat_template_len = (size_t)t.n;
            e->info.chat_known = tok_chat_detect(t.p, t.n, &e->info.chat) == 0;
        }
    }
    int64_t nb = rc ? 0 : pool_blocks(e, err, errlen);
    if (nb < 0)
        rc = (int)nb;
    if (!rc) {
        e->info.kv_blocks = (int32_t)nb;
        rc = kv_pool_create((int32_t)nb + 1, e->info.kv_block, &e->pool);
        rc = rc ? rc : model_kv_init(e->m, &e->kv, (int32_t)nb + 1, e->info.kv_block, kv_qt(e));
        if (!rc && !e->cfg.no_prefix_cache)
            rc = kv_prefix_cache_enable(e->pool);
        if (rc)
            errmsg(err, errlen, rc, "cannot allocate the KV cache (%lld blocks)", (long long)nb);
    }
    if (!rc) {
        size_t bt = (size_t)e->cfg.max_batch_tokens, ms = (size_t)e->cfg.max_seqs;
        e->active = calloc(ms, sizeof(*e->active));
        e->b_tokens = calloc(bt, sizeof(*e->b_tokens));
        e->b_pos = calloc(bt, sizeof(*e->b_pos));
        e->b_seq = calloc(bt, sizeof(*e->b_seq));
        e->b_order = calloc(bt, 1);
        e->b_want = calloc(bt, 1);
        e->b_tables = calloc(ms, sizeof(*e->b_tables));
        e->b_nblocks = calloc(ms, sizeof(*e->b_nblocks));
        /* a row per sequence, and PROMPT_LP_ROWS more for prompt log-probabilities (so a
         * prefill owing them always has room, however many sequences run) */
        size_t rows = ms + PROMPT_LP_ROWS;
        e->cap_rows = (int)rows;
        e->b_res = calloc(rows, sizeof(*e->b_res));
        e->b_rows = calloc(rows, sizeof(*e->b_rows));
        e->b_rpos = calloc(rows, sizeof(*e->b_rpos));
        e->b_erows = calloc(bt, sizeof(*e->b_erows));
        e->b_epos = calloc(bt, sizeof(*e->b_epos));
        e->b_ewant = calloc(bt, 1);
        e->embd = calloc(bt * (size_t)e->info.n_embd, sizeof(float));
        e->b_pre = calloc(ms, sizeof(*e->b_pre));
        e->logits = calloc(rows * (size_t)e->info.n_vocab, sizeof(float));
        e->eog_ids = calloc((size_t)e->info.n_vocab, sizeof(*e->eog_ids));
        for (int32_t t = 0; e->eog_ids && t < e->info.n_vocab; t++)
            if (tok_is_eog(e->tok, t))
                e->eog_ids[e->n_eog++] = t;
        if (!e->active || !e->b_tokens || !e->b_pos || !e->b_seq || !e->b_order || !e->b_want ||
            !e->b_tables || !e->b_nblocks || !e->b_res || !e->b_rows || !e->b_rpos || !e->b_erows ||
            !e->b_epos || !e->b_ewant || !e->embd || !e->b_pre || !e->logits || !e->eog_ids)
            rc = errmsg(err, errlen, -ENOMEM, "out of memory for the batch buffers");
    }
    if (!rc) {
        int u = uv_loop_init(&e->loop);
        if (!u) {
            uv_async_init(&e->loop, &e->wake, wake_cb);
            uv_idle_init(&e->loop, &e->idle);
            uv_timer_init(&e->loop, &e->timer);
            e->wake.data = e->idle.data = e->timer.data = e;
            uv_timer_start(&e->timer, timer_cb, TICK_MS, TICK_MS);
            e->loop_ready = 1;
        }
        if (!u && e->cfg.manual)
            ; /* the caller runs the steps */
        else if (u || (u = pthread_create(&e->thread, NULL, engine_main, e)) != 0)
            rc = errmsg(err, errlen, -EAGAIN, "cannot start the engine thread");
        else
            e->thread_started = 1;
    }
    if (rc) {
        eng_destroy(e);
        return rc;
    }
    *out = e;
    return 0;
}

/* Checks one sequence and builds its request (not yet queued); 0 or an error with err set. */
static int req_build(struct engine *e, const struct eng_sub *sub, struct eng_req **out, char *err,
                     size_t errlen)
{
    const int32_t *prompt = sub->prompt;
    int n_prompt = sub->n_prompt;
    const struct eng_params *p = sub->p;
    *out = NULL;
    if (n_prompt < 1)
        return errmsg(err, errlen, -EINVAL, "the prompt is empty");
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= e->info.n_vocab)
            return errmsg(err, errlen, -EINVAL, "token id %d is not in the vocabulary (0 to %d)",
                          prompt[i], e->info.n_vocab - 1);
    if (p->max_tokens < 0)
        return errmsg(err, errlen, -EINVAL, "max_tokens must not be negative");
    if (p->prompt_top < 0 || p->prompt_top > SMP_MAX_LOGPROBS)
        return errmsg(err, errlen, -EINVAL, "prompt_logprobs must be 0 to %d", SMP_MAX_LOGPROBS);
    if (p->pooling < ENG_POOL_NONE || p->pooling > ENG_POOL_LAST || p->min_tokens < 0 ||
        p->n_stop_ids < 0)
        return errmsg(err, errlen, -EINVAL, "pooling, min_tokens or stop_ids is out of range");
    for (int i = 0; i < p->n_stop_ids; i++)
        if (p->stop_ids[i] < 0 || p->stop_ids[i] >= e->info.n_vocab)
            return errmsg(err, errlen, -EINVAL,
                          "stop token id %d is not in the vocabulary (0 to %d)", p->stop_ids[i],
                          e->info.n_vocab - 1);
    if (n_prompt >= e->info.n_ctx)
        return errmsg(err, errlen, -E2BIG,
                      "this model's maximum context length is %d tokens, but the prompt has %d",
                      e->info.n_ctx, n_prompt);
    int max_tokens = p->pooling ? 0 : p->max_tokens;
    if (max_tokens > e->info.n_ctx - n_prompt)
        max_tokens = e->info.n_ctx - n_prompt;
    int32_t need = sched_blocks_for(e, (int64_t)n_prompt + max_tokens);
    if (need > e->info.kv_blocks)
        return errmsg(err, errlen, -E2BIG,
                      "the request needs %lld tokens of KV cache (%d prompt + %d to generate) "
                      "but the pool holds %lld",
                      (long long)n_prompt + max_tokens, n_prompt, max_tokens,
                      (long long)e->info.kv_blocks * e->info.kv_block);
    int rc = smp_params_check(&p->sp, e->info.n_vocab);
    if (rc)
        return errmsg(err, errlen, rc, "a sampling parameter is out of range");

    struct eng_req *r = req_create();
    if (!r)
        return errmsg(err, errlen, -ENOMEM, "out of memory");
    r->e = e;
    r->cap_tokens = n_prompt + max_tokens;
    r->tokens = malloc(sizeof(int32_t) * (size_t)r->cap_tokens);
    r->stop = p->n_stop ? calloc((size_t)p->n_stop, sizeof(char *)) : NULL;
    r->bias = p->sp.n_bias ? malloc(sizeof(*r->bias) * (size_t)p->sp.n_bias) : NULL;
    r->stop_ids = p->n_stop_ids ? malloc(sizeof(int32_t) * (size_t)p->n_stop_ids) : NULL;
    r->pool_sum = p->pooling ? calloc((size_t)e->info.n_embd, sizeof(float)) : NULL;
    rc = !r->tokens || (p->n_stop && !r->stop) || (p->sp.n_bias && !r->bias) ||
                 (p->n_stop_ids && !r->stop_ids) || (p->pooling && !r->pool_sum)
             ? -ENOMEM
             : 0;
    for (int i = 0; !rc && i < p->n_stop; i++) {
        if (!(r->stop[i] = strdup(p->stop[i])))
            rc = -ENOMEM;
        else
            r->n_stop = i + 1;
    }
    if (rc) {
        atomic_store(&r->refs, 1);
        req_unref(r);
        return errmsg(err, errlen, -ENOMEM, "out of memory");
    }
    memcpy(r->tokens, prompt, sizeof(int32_t) * (size_t)n_prompt);
    r->n_prompt = r->n_tokens = n_prompt;
    r->sp = p->sp;
    r->sp.logprobs = p->logprobs; /* the only reader of a token's logprob is the report */
    if (p->sp.n_bias)
        memcpy(r->bias, p->sp.bias, sizeof(*r->bias) * (size_t)p->sp.n_bias);
    r->sp.bias = r->bias;
    r->max_tokens = max_tokens;
    r->ignore_eos = p->ignore_eos;
    r->logprobs = p->logprobs;
    r->min_tokens = p->min_tokens;
    r->include_stop = p->include_stop;
    if (p->n_stop_ids)
        memcpy(r->stop_ids, p->stop_ids, sizeof(int32_t) * (size_t)p->n_stop_ids);
    r->n_stop_ids = p->n_stop_ids;
    r->plp = p->pooling || !p->prompt_logprobs ? -1 : p->prompt_top;
    r->plp_next = 1;
    r->pooling = p->pooling;
    r->keep_special = p->keep_special;
    r->notify = p->notify;
    r->grammar = gram_ref(p->grammar);
    r->t_submit = util_now_s();
    *out = r;
    return 0;
}

/* Frees requests that were built but never queued. */
static void req_drop_built(struct eng_req **r, int n)
{
    for (int i = 0; i < n; i++) {
        atomic_store(&r[i]->refs, 1);
        req_unref(r[i]);
        r[i] = NULL;
    }
}

int eng_submit_n(struct engine *e, int n, const struct eng_sub *subs, struct eng_req **out,
                 char *err, size_t errlen)
{
    for (int i = 0; i < n; i++)
        out[i] = NULL;
    if (n < 1)
        return errmsg(err, errlen, -EINVAL, "nothing to submit");
    int64_t tokens = 0;
    for (int i = 0; i < n; i++) {
        int rc = req_build(e, &subs[i], &out[i], err, errlen);
        if (rc) {
            req_drop_built(out, i);
            return rc;
        }
        tokens += subs[i].n_prompt;
    }
    /* a request larger than the queue itself could never be admitted: not worth a retry */
    if (n > e->cfg.max_queue || tokens > e->cfg.max_queue_tokens) {
        req_drop_built(out, n);
        return errmsg(err, errlen, -ERANGE,
                      "the request asks for %d sequences with %lld prompt tokens in all; at most "
                      "%d sequences (--max-queue) and %lld prompt tokens (--max-queue-tokens) "
                      "can ever wait",
                      n, (long long)tokens, e->cfg.max_queue, (long long)e->cfg.max_queue_tokens);
    }

    pthread_mutex_lock(&e->mu);
    int stopping = e->stopping || e->draining;
    int busy = !stopping && (atomic_load(&e->n_queued) + n > e->cfg.max_queue ||
                             atomic_load(&e->queued_tokens) + tokens > e->cfg.max_queue_tokens);
    if (!stopping && !busy) {
        for (int i = 0; i < n; i++) {
            struct eng_req *r = out[i];
            r->in_queue = 1;
            if (e->in_tail)
                e->in_tail->next = r;
            else
                e->in_head = r;
            e->in_tail = r;
        }
        atomic_fetch_add(&e->n_queued, n);
        atomic_fetch_add(&e->queued_tokens, tokens);
        atomic_fetch_add(&e->n_live, n);
        uv_async_send(&e->wake); /* under mu: the handle closes once stopping is seen */
    }
    pthread_mutex_unlock(&e->mu);
    if (stopping || busy) {
        req_drop_built(out, n);
        if (busy)
            return errmsg(err, errlen, -EBUSY,
                          "the server is busy: %d requests (%lld prompt tokens) are waiting; "
                          "the limits are %d (--max-queue) and %lld (--max-queue-tokens)",
                          atomic_load(&e->n_queued), (long long)atomic_load(&e->queued_tokens),
                          e->cfg.max_queue, (long long)e->cfg.max_queue_tokens);
        return errmsg(err, errlen, -ESHUTDOWN, "the server is shutting down");
    }
    return 0;
}

int eng_submit(struct engine *e, const int32_t *prompt, int n_prompt, const struct eng_params *p,
               struct eng_req **out, char *err, size_t errlen)
{
    struct eng_sub sub = {.prompt = prompt, .n_prompt = n_prompt, .p = p};
    return eng_submit_n(e, 1, &sub, out, err, errlen);
}

/*
 * device/cpu/cpu.c - the CPU backend: a worker pool and the dev_ops table.
 *
 * Every op splits its independent outputs (weight rows, heads, tokens)
 * across the pool; each output element is computed by one thread with one
 * fixed reduction order, so results do not depend on the batch or the number
 * of threads.  Workers sleep on a condition variable between ops.  The inner
 * loops are in scalar.c and avx2.c, chosen once at creation.
 */
#include <errno.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#endif
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "device/cpu/cpu.h"
#include "device/cpu/kernels.h"
#include "device/dev.h"
#include "util/cpus.h"
#include "util/quant.h"

/* ---- worker pool ------------------------------------------------------------ */

typedef void (*pool_fn)(void *arg, int64_t begin, int64_t end, int worker);

/*
 * A job: fn over [0, n_items) in chunks.  The threads claim chunks from
 * `next`, which holds the job's tag (its generation, low 24 bits) above the
 * next item (low 40 bits), by compare-and-swap: a thread that went to sleep
 * during an old job and wakes in a newer one fails its swap and claims
 * nothing.  So the caller waits only for the chunks that were claimed
 * (`done` counts their items), never for a peer that has not started: a
 * descheduled worker delays a job by at most the chunk it holds.  The
 * fields are atomics, so a late reader sees old or new values, never a
 * torn one, and its swap then fails.
 */
#define POOL_IDX_BITS 40
#define POOL_IDX_MASK ((UINT64_C(1) << POOL_IDX_BITS) - 1)
#define POOL_TAG_MASK ((UINT64_C(1) << (64 - POOL_IDX_BITS)) - 1)

struct pool {
    int n; /* threads including the caller */
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t cv_work;
    atomic_uint_fast64_t generation; /* bumped once per job, after it is set up */
    atomic_int sleepers;             /* workers waiting on cv_work */
    atomic_int stop;
    _Atomic(pool_fn) fn;
    _Atomic(void *) arg;
    atomic_int_fast64_t n_items, chunk;
    atomic_uint_fast64_t next; /* tag << POOL_IDX_BITS | next item */
    atomic_int_fast64_t done;  /* items of claimed chunks finished */
    /* a shared CPU (pool_run); ns, CLOCK_MONOTONIC */
    int64_t solo_until; /* jobs before it run on the caller alone */
    int64_t solo_ns;    /* how long the next bad window sends it alone */
    int64_t win_start;  /* the window of jobs being watched */
    int64_t win_wait;   /* the caller's waits for the others in it */
};

/* Spins this many rounds for the next job before sleeping: a decode step runs
 * hundreds of short ops back to back, and a futex wake per op costs more than
 * the op.  Idle workers still end up asleep within a fraction of a millisecond. */
#define POOL_SPIN 20000

/* Rounds the caller spins for a job's last chunks before it yields its CPU: on a machine
 * shared with other work, the peer it waits for may be waiting for this very CPU. */
#define POOL_WAIT_SPIN 2000

struct worker_arg {
    struct pool *p;
    int id;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/*
 * A shared CPU.  When another process takes a core, a worker is
 * descheduled for a time slice (milliseconds) now and then, mostly in the
 * middle of a chunk, and the caller waits for that chunk; spinning workers
 * also take CPU the other process and the caller need.  So the caller adds
 * up its waits for the others (after its own chunks ran out) over windows of
 * POOL_WINDOW_NS.  In a window where it waited a share W, two threads did
 * about s (1 - W) of what the caller does alone, s being what two threads
 * gain when both run: about 1.3 in a memory-bound decode step, up to 2 in a
 * prefill.  So when W passes POOL_WAIT_SHARE (0.15: below the decode's
 * break-even of 0.23, so that two threads never do worse than one) the
 * jobs of the next solo_ns run on the caller alone (the workers go to
 * sleep).  Measured on 2 cores with a busy loop on one: W 0.14-0.58 in
 * two-thread windows; on the quiet machine 0.01-0.04.  solo_ns starts at
 * POOL_SOLO_MIN_NS and doubles with each bad window that follows one, up to
 * POOL_SOLO_MAX_NS; a good window halves it (one good window among bad
 * ones, W being that spread, does not bring back probes every 100 ms).
 * Results do not change: they do not depend on the number of threads.
 */
#define POOL_WINDOW_NS 20000000
#define POOL_WAIT_SHARE 0.15
#define POOL_SOLO_MIN_NS 100000000
#define POOL_SOLO_MAX_NS 4000000000

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* claims chunks of the job of generation g and runs them until none is left */
static void pool_drain(struct pool *p, uint64_t g, int id)
{
    uint64_t tag = g & POOL_TAG_MASK;
    for (;;) {
        uint64_t v = atomic_load(&p->next);
        if (v >> POOL_IDX_BITS != tag)
            break; /* another job's */
        int64_t b = (int64_t)(v & POOL_IDX_MASK), n = atomic_load(&p->n_items),
                chunk = atomic_load(&p->chunk);
        pool_fn fn = atomic_load(&p->fn);
        void *arg = atomic_load(&p->arg);
        if (b >= n)
            break;
        int64_t e = b + chunk < n ? b + chunk : n;
        if (!atomic_compare_exchange_weak(&p->next, &v, (tag << POOL_IDX_BITS) | (uint64_t)e))
            continue;
        fn(arg, b, e, id);
        atomic_fetch_add(&p->done, e - b);
    }
}

static void *worker_main(void *a)
{
    struct worker_arg *wa = a;
    struct pool *p = wa->p;
    int id = wa->id;
    free(wa);
    uint64_t seen = 0;
    for (;;) {
        uint64_t g = atomic_load(&p->generation);
        for (int i = 0; g == seen && i < POOL_SPIN && !atomic_load(&p->stop); i++) {
            cpu_relax();
            g = atomic_load(&p->generation);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (!atomic_load(&p->stop) && (g = atomic_load(&p->generation)) == seen)
                pthread_cond_wait(&p->cv_work, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            break;
        seen = g;
        pool_drain(p, g, id);
    }
    return NULL;
}

/* Runs fn over [0, n_items) in chunks on all threads; returns when done. */
static void pool_run(struct pool *p, int64_t n_items, int64_t chunk, pool_fn fn, void *arg)
{
    if (n_items <= 0)
        return;
    if (chunk < 1)
        chunk = 1;
    if (p->n == 1 || n_items <= chunk || (uint64_t)n_items > POOL_IDX_MASK - (uint64_t)chunk) {
        fn(arg, 0, n_items, 0);
        return;
    }
    int64_t t0 = now_ns();
    if (t0 < p->solo_until) {
        fn(arg, 0, n_items, 0);
        return;
    }
    if (t0 - p->win_start >= POOL_WINDOW_NS) { /* a window ends: judge it */
        int bad = p->win_start && p->win_wait > POOL_WAIT_SHARE * (double)(t0 - p->win_start);
        p->win_start = t0;
        p->win_wait = 0;
        if (!bad) {
            p->solo_ns = p->solo_ns / 2 > POOL_SOLO_MIN_NS ? p->solo_ns / 2 : POOL_SOLO_MIN_NS;
        } else {
            p->solo_until = p->win_start = t0 + p->solo_ns;
            p->solo_ns = p->solo_ns * 2 < POOL_SOLO_MAX_NS ? p->solo_ns * 2 : POOL_SOLO_MAX_NS;
            fn(arg, 0, n_items, 0);
            return;
        }
    }
    /*
     * The new job's tag goes into `next` first, with no items to claim, so
     * that a thread still looking at the last job stops; then the job.
     */
    uint64_t g = atomic_load(&p->generation) + 1, tag = g & POOL_TAG_MASK;
    atomic_store(&p->next, (tag << POOL_IDX_BITS) | POOL_IDX_MASK);
    atomic_store(&p->fn, fn);
    atomic_store(&p->arg, arg);
    atomic_store(&p->n_items, n_items);
    atomic_store(&p->chunk, chunk);
    atomic_store(&p->done, 0);
    atomic_store(&p->next, tag << POOL_IDX_BITS);
    atomic_store(&p->generation, g); /* wakes the spinning workers */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv_work);
        pthread_mutex_unlock(&p->mu);
    }
    pool_drain(p, g, 0);
    if (atomic_load(&p->done) == n_items)
        return;
    /* a peer still in its chunk: spin a little, then yield, in case it waits for this CPU */
    int64_t t1 = now_ns();
    for (int spins = 0; atomic_load(&p->done) < n_items; spins++) {
        if (spins < POOL_WAIT_SPIN)
            cpu_relax();
        else
            sched_yield();
    }
    p->win_wait += now_ns() - t1;
}

static void pool_destroy(struct pool *p)
{
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        if (p->th[i])
            pthread_join(p->th[i], NULL);
    free(p->th);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_work);
}

static int pool_init(struct pool *p, int n)
{
    memset(p, 0, sizeof(*p));
    p->n = n;
    p->solo_ns = POOL_SOLO_MIN_NS;
    p->th = calloc((size_t)n, sizeof(*p->th));
    if (!p->th)
        return -ENOMEM;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    for (int i = 1; i < n; i++) {
        struct worker_arg *wa = malloc(sizeof(*wa));
        int rc = wa ? 0 : ENOMEM;
        if (wa) {
            *wa = (struct worker_arg){p, i};
            rc = pthread_create(&p->th[i], NULL, worker_main, wa);
            if (rc)
                free(wa);
        }
        if (rc) {
            p->n = i; /* join the ones that started */
            pool_destroy(p);
            return -rc;
        }
    }
    return 0;
}

/* ---- the backend ------------------------------------------------------------ */

struct scratch {
    void *p;
    size_t n;
};

/* A token of the current batch as the kv ops read it. */
struct cpu_tok {
    const int32_t *blocks; /* its sequence's block table, in the batch copy */
    int32_t pos;
    int32_t seq;
    uint8_t chunk;
};

/* The current batch (set_batch), copied into the backend's own memory. */
struct cpu_batch {
    int n, n_seq, n_out;
    int has_tokens, has_seq;
    int32_t *tokens, *pos, *rows;
    struct cpu_tok *tp;
    int32_t *tab;                  /* the block tables, back to back */
    struct dev_seq_bounds *bounds; /* n_seq: what the kv ops check (dev_batch_fits) */
    size_t *tab_off;               /* n_seq: where each starts in tab */
    size_t cap[7];                 /* of each array above, in the order grown */
};

/*
 * Fenced mode's device memory: one reserved mapping, handed out in blocks
 * (a table of them, reused first-fit) and PROT_NONE except while an op runs.
 */
struct fence_blk {
    size_t off, n;
    int used;
};
struct fence {
    char *base;
    size_t cap, top; /* reserved bytes; the high-water mark of what was handed out */
    int open;        /* inside an op: [base, top) is readable and writable */
    struct fence_blk *blk;
    int n_blk, cap_blk;
};

struct cpu {
    struct pool pool;
    const struct cpu_kernels *k;
    int exact; /* dev_config.exact_llamacpp */
    int fenced;
    struct fence fence;
    struct cpu_batch b;
    /* dev_prefetch's weight, fetched by threads the next attention leaves idle */
    const void *pf_data;
    size_t pf_bytes;
    struct scratch act;         /* quantized activations of a matmul */
    struct scratch *per_worker; /* one per thread: dequantized rows, attention scores */
};

static void *scratch_get(struct scratch *s, size_t n)
{
    if (s->n < n) {
        void *p = realloc(s->p, n);
        if (!p)
            return NULL;
        s->p = p;
        s->n = n;
    }
    return s->p;
}

/* grows every worker's scratch to n bytes */
static int worker_scratch(struct cpu *c, size_t n)
{
    for (int i = 0; i < c->pool.n; i++)
        if (!scratch_get(&c->per_worker[i], n))
            return -ENOMEM;
    return 0;
}

static void batch_free(struct cpu_batch *b)
{
    free(b->tokens);
    free(b->pos);
    free(b->rows);
    free(b->tp);
    free(b->tab);
    free(b->bounds);
    free(b->tab_off);
}

static void cpu_destroy(void *ctx)
{
    struct cpu *c = ctx;
    if (!c)
        return;
    pool_destroy(&c->pool);
    batch_free(&c->b);
    if (c->fence.base)
        munmap(c->fence.base, c->fence.cap);
    free(c->fence.blk);
    free(c->act.p);
    if (c->per_worker)
        for (int i = 0; i < c->pool.n; i++)
            free(c->per_worker[i].p);
    free(c->per_worker);
    free(c);
}

/* ---- device memory ------------------------------------------------------------ */

static size_t page_up(size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return (n + pg - 1) / pg * pg;
}

/* Fenced mode: opens (1) or closes (0) the arena to the host. */
static void fence_set(struct cpu *c, int open)
{
    c->fence.open = open;
    if (c->fenced && c->fence.top)
        mprotect(c->fence.base, page_up(c->fence.top), open ? PROT_READ | PROT_WRITE : PROT_NONE);
}

static void *fence_alloc(struct fence *f, size_t n)
{
    n = (n + 63) / 64 * 64;
    if (!n)
        n = 64;
    for (int i = 0; i < f->n_blk; i++)
        if (!f->blk[i].used && f->blk[i].n >= n) {
            f->blk[i].used = 1;
            return f->base + f->blk[i].off;
        }
    if (n > f->cap - f->top)
        return NULL;
    if (f->n_blk == f->cap_blk) {
        int cap = f->cap_blk ? 2 * f->cap_blk : 256;
        struct fence_blk *b = realloc(f->blk, sizeof(*b) * (size_t)cap);
        if (!b)
            return NULL;
        f->blk = b;
        f->cap_blk = cap;
    }
    f->blk[f->n_blk++] = (struct fence_blk){f->top, n, 1};
    f->top += n;
    if (f->open) /* allocated by an op (pack_weight): usable at once */
        mprotect(f->base, page_up(f->top), PROT_READ | PROT_WRITE);
    return f->base + f->top - n;
}

static void fence_free(struct fence *f, const void *p)
{
    for (int i = 0; i < f->n_blk; i++)
        if (f->base + f->blk[i].off == (const char *)p)
            f->blk[i].used = 0;
}

/* 1 when p is device memory (always, unfenced: the host's memory is the device's). */
static int is_dev(const struct cpu *c, const void *p)
{
    if (!c->fenced)
        return 1;
    return (const char *)p >= c->fence.base && (const char *)p < c->fence.base + c->fence.top;
}

static void *cpu_alloc(void *ctx, size_t n)
{
    struct cpu *c = ctx;
    return c->fenced ? fence_alloc(&c->fence, n) : malloc(n ? n : 1);
}

static void cpu_free(void *ctx, void *p)
{
    struct cpu *c = ctx;
    if (c->fenced)
        fence_free(&c->fence, p);
    else
        free(p);
}

static int cpu_copy(void *ctx, void *dst, const void *src, size_t n)
{
    (void)ctx;
    memcpy(dst, src, n);
    return 0;
}

/* Unfenced, a weight stays where the GGUF's mmap has it; fenced, it is copied in. */
static const void *cpu_weight_load(void *ctx, const void *host, size_t n)
{
    struct cpu *c = ctx;
    if (!c->fenced)
        return host;
    void *p = fence_alloc(&c->fence, n);
    if (p) {
        fence_set(c, 1);
        memcpy(p, host, n);
        fence_set(c, 0);
    }
    return p;
}

static void cpu_weight_free(void *ctx, const void *p)
{
    struct cpu *c = ctx;
    if (c->fenced)
        fence_free(&c->fence, p);
}

/* ---- the batch ------------------------------------------------------------------ */

static int grow(void **p, size_t *cap, size_t n, size_t el)
{
    if (n <= *cap)
        return 0;
    void *q = realloc(*p, n * el);
    if (!q)
        return -ENOMEM;
    *p = q;
    *cap = n;
    return 0;
}

static int cpu_set_batch(void *ctx, const struct dev_batch *in)
{
    struct cpu *c = ctx;
    struct cpu_batch *b = &c->b;
    int n = in->n, ns = in->n_seq;
    size_t tab;
    if (dev_batch_check(in, &tab))
        return -EINVAL;
    size_t nn = (size_t)n, nsq = (size_t)ns, no = (size_t)in->n_out;
    int rc = grow((void **)&b->tokens, &b->cap[0], nn, sizeof(int32_t));
    rc = rc ? rc : grow((void **)&b->pos, &b->cap[1], nn, sizeof(int32_t));
    rc = rc ? rc : grow((void **)&b->tp, &b->cap[2], nn, sizeof(struct cpu_tok));
    rc = rc ? rc : grow((void **)&b->rows, &b->cap[3], no, sizeof(int32_t));
    rc = rc ? rc : grow((void **)&b->tab, &b->cap[4], tab, sizeof(int32_t));
    rc = rc ? rc : grow((void **)&b->bounds, &b->cap[5], nsq, sizeof(struct dev_seq_bounds));
    rc = rc ? rc : grow((void **)&b->tab_off, &b->cap[6], nsq, sizeof(size_t));
    if (rc)
        return rc;
    size_t off = 0;
    for (int s = 0; s < ns; s++) {
        memcpy(b->tab + off, in->tables[s], sizeof(int32_t) * (size_t)in->n_blocks[s]);
        b->tab_off[s] = off;
        off += (size_t)in->n_blocks[s];
    }
    dev_batch_bounds(in, b->bounds);
    for (int t = 0; t < n; t++) {
        int32_t sq = in->seq ? in->seq[t] : -1;
        b->pos[t] = in->pos[t];
        b->tokens[t] = in->tokens ? in->tokens[t] : -1;
        b->tp[t] = (struct cpu_tok){sq >= 0 ? b->tab + b->tab_off[sq] : NULL, in->pos[t], sq,
                                    (uint8_t)(in->chunk ? in->chunk[t] != 0 : 0)};
    }
    for (int i = 0; i < in->n_out; i++)
        b->rows[i] = in->out_rows[i];
    b->n = n;
    b->n_seq = ns;
    b->n_out = in->n_out;
    b->has_tokens = in->tokens != NULL;
    b->has_seq = in->seq != NULL;
    return 0;
}

/* 0 when every batch token's slot lies in its table and the tables in kv's blocks */
static int batch_fits(const struct cpu *c, const struct dev_kv *kv)
{
    return c->b.has_seq ? dev_batch_fits(c->b.bounds, c->b.n_seq, kv) : -EINVAL;
}

/* ---- matmul ----------------------------------------------------------------- */

static enum act_fmt act_fmt_of(uint32_t type)
{
    switch (type) {
    case QT_Q4_0:
    case QT_Q5_0:
    case QT_Q8_0:
        return ACT_Q8_0;
    case QT_Q4_1:
    case QT_Q5_1:
        return ACT_Q8_1;
    case QT_Q4_K:
    case QT_Q5_K:
    case QT_Q6_K:
        return ACT_Q8_K;
    default:
        return ACT_F32; /* float weights (and Q2_K, Q3_K): dequantize rows, dot in f32 */
    }
}

/* the weight types cpu_pack_weight packs: those with 8-row kernels */
static int packs(uint32_t type)
{
    return type == QT_Q4_0 || type == QT_Q4_1 || type == QT_Q5_0 || type == QT_Q8_0 ||
           type == QT_Q4_K || type == QT_Q6_K;
}

struct mm_job {
    struct cpu *c;
    const struct dev_weight *w; /* w[0]: the type and columns of all */
    const float *x;
    int T;
    int n_w; /* weights, each with its output */
    const struct dev_weight *ws[DEV_MATMUL_MAX];
    float *ys[DEV_MATMUL_MAX];
    int64_t off[DEV_MATMUL_MAX + 1]; /* where each weight's work items start */
    enum act_fmt fmt;
    size_t act_row;    /* bytes of one quantized activation row */
    int64_t row_block; /* packed weights: rows per work item, a multiple of 8 */
};

/* activation row t, quantized in the job's format, into the blocks at dst */
static void quant_row(const struct mm_job *j, int64_t t, void *dst)
{
    const float *x = j->x + t * j->w->cols;
    if (j->fmt == ACT_Q8_0)
        j->c->k->quant_q8_0(x, dst, j->w->cols);
    else if (j->fmt == ACT_Q8_1)
        j->c->k->quant_q8_1(x, dst, j->w->cols);
    else
        cpu_quant_q8_K(x, dst, j->w->cols);
}

static void mm_quant_cb(void *arg, int64_t b, int64_t e, int worker)
{
    struct mm_job *j = arg;
    (void)worker;
    for (int64_t t = b; t < e; t++)
        quant_row(j, t, (char *)j->c->act.p + t * j->act_row);
}

/* the work items [b, e) of all the weights: split at each weight's start */
static void mm_split(struct mm_job *j, int64_t b, int64_t e, int worker,
                     void (*one)(struct mm_job *, const struct dev_weight *, float *, int64_t,
                                 int64_t, int))
{
    for (int i = 0; i < j->n_w; i++) {
        int64_t lo = b > j->off[i] ? b : j->off[i], hi = e < j->off[i + 1] ? e : j->off[i + 1];
        if (lo < hi)
            one(j, j->ws[i], j->ys[i], lo - j->off[i], hi - j->off[i], worker);
    }
}

/*
 * Packed weights, row block by row block; within one, every group of 4
 * tokens against every group of 8 rows, so the block's weights stay in
 * cache across the token groups and a group's activations across the rows.
 */
static void mm_packed_one(struct mm_job *j, const struct dev_weight *w, float *yw, int64_t b,
                          int64_t e, int worker)
{
    const struct cpu_kernels *k = j->c->k;
    int64_t N = w->rows, nb = w->cols / qt_info(w->type)->blck_size;
    (void)worker;
    for (int64_t rb = b; rb < e; rb++) {
        int64_t r0 = rb * j->row_block, nr = N - r0 < j->row_block ? N - r0 : j->row_block;
        for (int t0 = 0; t0 < j->T; t0 += 4) {
            int nt = j->T - t0 < 4 ? j->T - t0 : 4;
            const char *a = (const char *)j->c->act.p + t0 * j->act_row;
            float *y = yw + t0 * N + r0;
            switch (w->type) {
            case QT_Q8_0:
                k->gemm_q8_0x8((const struct blk_q8_0x8 *)w->data + r0 / 8 * nb, nr,
                               (const void *)a, w->cols, y, N, nt);
                break;
            case QT_Q4_0:
                k->gemm_q4_0x8((const struct blk_q4_0x8 *)w->data + r0 / 8 * nb, nr,
                               (const void *)a, w->cols, y, N, nt);
                break;
            case QT_Q5_0:
                k->gemm_q5_0x8((const struct blk_q5_0x8 *)w->data + r0 / 8 * nb, nr,
                               (const void *)a, w->cols, y, N, nt);
                break;
            case QT_Q4_K:
                k->gemm_q4_Kx8((const struct blk_q4_Kx8 *)w->data + r0 / 8 * nb, nr,
                               (const void *)a, w->cols, y, N, nt);
                break;
            case QT_Q6_K:
                k->gemm_q6_Kx8((const struct blk_q6_Kx8 *)w->data + r0 / 8 * nb, nr,
                               (const void *)a, w->cols, y, N, nt);
                break;
            default:
                k->gemm_q4_1x8((const struct blk_q4_1x8 *)w->data + r0 / 8 * nb, nr,
                               (const void *)a, w->cols, y, N, nt);
                break;
            }
        }
    }
}

static void mm_packed_cb(void *arg, int64_t b, int64_t e, int worker)
{
    mm_split(arg, b, e, worker, mm_packed_one);
}

static void mm_rows_one(struct mm_job *j, const struct dev_weight *w, float *y, int64_t b,
                        int64_t e, int worker)
{
    const struct cpu_kernels *k = j->c->k;
    int64_t K = w->cols, N = w->rows;
    for (int64_t r = b; r < e; r++) {
        const char *wr = (const char *)w->data + r * w->row_bytes;
        if (j->fmt == ACT_F32) {
            const float *wf = (const float *)(const void *)wr;
            if (w->type != QT_F32) {
                float *tmp = j->c->per_worker[worker].p;
                qt_dequant(w->type, wr, tmp, (uint64_t)K);
                wf = tmp;
            }
            for (int t = 0; t < j->T; t++)
                y[t * N + r] = k->dot_f32(wf, j->x + t * K, K);
            continue;
        }
        for (int t = 0; t < j->T; t++) {
            const void *a = (const char *)j->c->act.p + t * j->act_row;
            float v;
            switch (w->type) {
            case QT_Q4_0:
                v = k->dot_q4_0(wr, a, K);
                break;
            case QT_Q5_0:
                v = k->dot_q5_0(wr, a, K);
                break;
            case QT_Q8_0:
                v = k->dot_q8_0(wr, a, K);
                break;
            case QT_Q4_1:
                v = k->dot_q4_1(wr, a, K);
                break;
            case QT_Q5_1:
                v = k->dot_q5_1(wr, a, K);
                break;
            case QT_Q4_K:
                v = k->dot_q4_K(wr, a, K);
                break;
            case QT_Q5_K:
                v = k->dot_q5_K(wr, a, K);
                break;
            default:
                v = k->dot_q6_K(wr, a, K);
                break;
            }
            y[t * N + r] = v;
        }
    }
}

static void mm_rows_cb(void *arg, int64_t b, int64_t e, int worker)
{
    mm_split(arg, b, e, worker, mm_rows_one);
}

static int cpu_matmul_n(void *ctx, const struct dev_weight *const *ws, int n, const float *x, int T,
                        float *const *ys)
{
    struct cpu *c = ctx;
    if (n < 1 || n > DEV_MATMUL_MAX)
        return -EINVAL;
    const struct dev_weight *w = ws[0];
    const struct qt_info *qi = qt_info(w->type);
    if (!qi || !qi->can_dequant || T < 0 || w->cols % qi->blck_size ||
        (w->packed && !packs(w->type)))
        return -EINVAL;
    struct mm_job j = {.c = c, .w = w, .x = x, .T = T, .n_w = n, .fmt = act_fmt_of(w->type)};
    int64_t rows = 0;
    for (int i = 0; i < n; i++) {
        if (ws[i]->type != w->type || ws[i]->cols != w->cols || ws[i]->packed != w->packed)
            return -EINVAL;
        j.ws[i] = ws[i];
        j.ys[i] = ys[i];
        rows += ws[i]->rows;
    }
    if (j.fmt == ACT_F32) {
        if (w->type != QT_F32 && worker_scratch(c, (size_t)w->cols * sizeof(float)))
            return -ENOMEM;
    } else {
        /* one activation block per weight block: 32 values, or 256 (Q8_K) */
        j.act_row =
            (size_t)(w->cols / qi->blck_size) * (j.fmt == ACT_Q8_0   ? sizeof(struct blk_q8_0)
                                                 : j.fmt == ACT_Q8_1 ? sizeof(struct blk_q8_1)
                                                                     : sizeof(struct blk_q8_K));
        if (!scratch_get(&c->act, j.act_row * (size_t)(T ? T : 1)))
            return -ENOMEM;
        pool_run(&c->pool, T, 1, mm_quant_cb, &j);
        if (w->packed) {
            /* blocks of at most 64 rows, at least two per thread */
            int64_t rb = (rows + c->pool.n * 2 - 1) / (c->pool.n * 2);
            rb = rb > 64 ? 64 : rb;
            j.row_block = (rb + 7) / 8 * 8;
            for (int i = 0; i < n; i++) /* work items: each weight's row blocks */
                j.off[i + 1] = j.off[i] + (ws[i]->rows + j.row_block - 1) / j.row_block;
            pool_run(&c->pool, j.off[n], 1, mm_packed_cb, &j);
            return 0;
        }
    }
    for (int i = 0; i < n; i++) /* work items: rows */
        j.off[i + 1] = j.off[i] + ws[i]->rows;
    /* chunks of rows; small enough to balance, large enough to amortize */
    int64_t chunk = rows / (c->pool.n * 2);
    pool_run(&c->pool, rows, chunk < 4 ? 4 : chunk, mm_rows_cb, &j);
    return 0;
}

/* row r's super-block src (Q4_K) into the 8-row block dst (kernels.h) */
static void pack_q4_K(struct blk_q4_Kx8 *dst, int r, const uint8_t *src)
{
    memcpy(&dst->d[r], src, 2);
    memcpy(&dst->dmin[r], src + 2, 2);
    for (int s = 0; s < 8; s++)
        k4_scale_min(s, src + 4, &dst->sc[s][r], &dst->mn[s / 2][r][s % 2]);
    for (int p = 0; p < 32; p++)
        memcpy(dst->qs[p][r], src + 16 + 4 * p, 4);
}

/* row r's super-block src (Q6_K: ql[128] qh[64] scales[16] d) into dst */
static void pack_q6_K(struct blk_q6_Kx8 *dst, int r, const uint8_t *src)
{
    uint8_t q[QKK]; /* the 6-bit values, 0..63 */
    for (int e = 0; e < QKK; e++) {
        int n = e / 128, c = e % 128 / 32, l = e % 32;
        const uint8_t *ql = src + 64 * n, *qh = src + 128 + 32 * n;
        q[e] = (uint8_t)(((ql[l + 32 * (c % 2)] >> (4 * (c / 2))) & 0xf) |
                         (((qh[l] >> (2 * c)) & 3) << 4));
    }
    memcpy(&dst->d[r], src + 208, 2);
    for (int s = 0; s < 16; s++)
        dst->sc[s][r] = (int8_t)src[192 + s];
    for (int g = 0; g < 8; g++)
        for (int c = 0; c < 4; c++)
            for (int b = 0; b < 4; b++) {
                int lo = q[32 * g + 4 * c + b], hi = q[32 * g + 16 + 4 * c + b];
                dst->ql[4 * g + c][r][b] = (uint8_t)((lo & 0xf) | (hi & 0xf) << 4);
                dst->qh[2 * g + c / 2][r][b] |=
                    (uint8_t)(((lo >> 4) | (hi >> 4) << 2) << (4 * (c % 2)));
            }
}

/* A weight being packed: rows of w into groups of 8 rows at dst (kernels.h). */
struct pack_job {
    const struct dev_weight *w;
    uint8_t *dst;
    size_t src_blk, dst_blk;
    int64_t nb; /* blocks (super-blocks) a row */
};

/* the 32-block types: f16 scales (Q4_1: d, m), Q5_0's fifth bits, then quants in 4-byte pieces */
static void pack_32(const struct pack_job *j, int ri, const uint8_t *src, uint8_t *blk)
{
    uint32_t type = j->w->type;
    int n_scales = type == QT_Q4_1 ? 2 : 1;
    size_t qh_bytes = type == QT_Q5_0 ? 4 : 0;
    size_t quant_bytes = j->src_blk - 2 * (size_t)n_scales - qh_bytes;
    for (int s = 0; s < n_scales; s++) /* d[8], then m[8] */
        memcpy(blk + (s * 8 + ri) * 2, src + 2 * s, 2);
    if (qh_bytes) { /* qh[ri], re-laid: bit j of the word to byte j % 4, bit j / 4 */
        const uint8_t *h = src + 2 * n_scales;
        uint8_t *dq = blk + n_scales * 16 + ri * 4;
        for (int e = 0; e < 32; e++)
            if (h[e / 8] >> (e % 8) & 1)
                dq[e % 4] |= (uint8_t)(1 << (e / 4));
    }
    uint8_t *qs = blk + n_scales * 16 + 8 * qh_bytes;
    const uint8_t *sq = src + 2 * n_scales + qh_bytes;
    for (size_t c = 0; c < quant_bytes / 4; c++) /* qs[c][ri] */
        memcpy(qs + (c * 8 + (size_t)ri) * 4, sq + c * 4, 4);
}

static void pack_cb(void *arg, int64_t b, int64_t e, int worker)
{
    const struct pack_job *j = arg;
    (void)worker;
    for (int64_t r = b; r < e; r++)
        for (int64_t k = 0; k < j->nb; k++) {
            uint8_t *blk = j->dst + ((r / 8) * j->nb + k) * j->dst_blk;
            const uint8_t *src = (const uint8_t *)j->w->data + r * j->w->row_bytes + k * j->src_blk;
            if (j->w->type == QT_Q4_K)
                pack_q4_K((struct blk_q4_Kx8 *)(void *)blk, (int)(r % 8), src);
            else if (j->w->type == QT_Q6_K)
                pack_q6_K((struct blk_q6_Kx8 *)(void *)blk, (int)(r % 8), src);
            else
                pack_32(j, (int)(r % 8), src, blk);
        }
}

/*
 * Rearranges a Q4_0, Q4_1, Q5_0, Q8_0, Q4_K or Q6_K weight into groups of 8
 * rows (kernels.h), rows spread over the pool (each writes its own bytes of
 * its group's blocks); other weights stay as they are.
 */
static int cpu_pack_weight(void *ctx, struct dev_weight *w)
{
    struct cpu *c = ctx;
    const struct qt_info *qi = qt_info(w->type);
    if (c->exact || w->packed || !packs(w->type) || w->cols <= 0 || w->cols % qi->blck_size ||
        w->rows <= 0)
        return 0;
    struct pack_job j = {.w = w, .src_blk = qi->type_size, .nb = w->cols / qi->blck_size};
    j.dst_blk = w->type == QT_Q4_1   ? sizeof(struct blk_q4_1x8)
                : w->type == QT_Q8_0 ? sizeof(struct blk_q8_0x8)
                : w->type == QT_Q4_0 ? sizeof(struct blk_q4_0x8)
                : w->type == QT_Q5_0 ? sizeof(struct blk_q5_0x8)
                : w->type == QT_Q4_K ? sizeof(struct blk_q4_Kx8)
                                     : sizeof(struct blk_q6_Kx8);
    size_t bytes = (size_t)(((w->rows + 7) / 8) * j.nb) * j.dst_blk;
    j.dst = cpu_alloc(c, bytes);
    if (!j.dst)
        return -ENOMEM;
    memset(j.dst, 0, bytes);
    pool_run(&c->pool, w->rows, 64, pack_cb, &j);
    w->data = j.dst;
    w->packed = 1;
    return 0;
}

static int cpu_matmul(void *ctx, const struct dev_weight *w, const float *x, int T, float *y)
{
    return cpu_matmul_n(ctx, &w, 1, x, T, &y);
}

/* ---- elementwise and per-row ops --------------------------------------------- */

static int cpu_embed(void *ctx, const struct dev_weight *table, float *out)
{
    struct cpu *c = ctx;
    const int32_t *ids = c->b.tokens;
    if (table->packed || !c->b.has_tokens)
        return -EINVAL;
    for (int t = 0; t < c->b.n; t++) {
        if (ids[t] < 0 || ids[t] >= table->rows)
            return -EINVAL;
        int rc = qt_dequant(table->type, (const char *)table->data + ids[t] * table->row_bytes,
                            out + (size_t)t * table->cols, (uint64_t)table->cols);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- per-token ops: split over the pool by token (rows) ----------------------- */

struct rows_job {
    struct cpu *c;
    const float *x, *w, *y;
    float *out;
    int n;
    float eps;
    const int32_t *pos;
    int n_heads, head_dim;
    const struct dev_rope *r;
};

/* runs fn over rows [0, T), each row on one thread, so results match T = 1 */
static void run_rows(struct cpu *c, int T, pool_fn fn, struct rows_job *j)
{
    pool_run(&c->pool, T, T >= 8 ? 2 : 1, fn, j);
}

static void rmsnorm_cb(void *arg, int64_t b, int64_t e, int worker)
{
    const struct rows_job *j = arg;
    int n = j->n;
    (void)worker;
    for (int64_t t = b; t < e; t++) {
        const float *xr = j->x + (size_t)t * n;
        float *o = j->out + (size_t)t * n;
        /* four running sums (in double, as llama.cpp's one) break the add chain */
        double s4[4] = {0.0, 0.0, 0.0, 0.0};
        int i = 0;
        for (; i + 4 <= n; i += 4)
            for (int l = 0; l < 4; l++)
                s4[l] += (double)(xr[i + l] * xr[i + l]);
        for (; i < n; i++)
            s4[0] += (double)(xr[i] * xr[i]);
        double sum = (s4[0] + s4[1]) + (s4[2] + s4[3]);
        float scale = 1.0f / sqrtf((float)(sum / n) + j->eps);
        for (int i = 0; i < n; i++)
            o[i] = j->w ? (xr[i] * scale) * j->w[i] : xr[i] * scale;
    }
}

static int cpu_rmsnorm(void *ctx, const float *x, const float *w, int T, int n, float eps,
                       float *out)
{
    struct rows_job j = {.c = ctx, .x = x, .w = w, .out = out, .n = n, .eps = eps};
    run_rows(ctx, T, rmsnorm_cb, &j);
    return 0;
}

/* The angles depend on the position and the pair, not the head: one sincos
 * per pair and token, applied to every head (the same values as per head). */
static void rope_cb(void *arg, int64_t b, int64_t e, int worker)
{
    const struct rows_job *j = arg;
    const struct dev_rope *r = j->r;
    const float theta_scale = powf(r->freq_base, -2.0f / (float)r->n_rot);
    const int half_rot = r->n_rot / 2;
    float *cs = j->c->per_worker[worker].p, *sn = cs + half_rot;
    for (int64_t t = b; t < e; t++) {
        float theta_base = (float)j->pos[t];
        for (int i = 0; i < half_rot; i++) {
            float ff = r->freq_factors ? r->freq_factors[i] : 1.0f;
            sincosf(r->freq_scale * (theta_base / ff), &sn[i], &cs[i]);
            theta_base *= theta_scale;
        }
        for (int h = 0; h < j->n_heads; h++) {
            float *v = j->out + ((size_t)t * j->n_heads + h) * j->head_dim;
            for (int i = 0; i < half_rot; i++) {
                int a = r->neox ? i : 2 * i, bb = r->neox ? i + half_rot : 2 * i + 1;
                float x0 = v[a], x1 = v[bb];
                /* fused as llama.cpp's compiled code does (checked bit for bit) */
                v[a] = fmaf(x0, cs[i], -(x1 * sn[i]));
                v[bb] = fmaf(x0, sn[i], x1 * cs[i]);
            }
        }
    }
}

static int cpu_rope(void *ctx, float *x, int n_heads, int head_dim, const struct dev_rope *r)
{
    struct cpu *c = ctx;
    const int32_t *pos = c->b.pos;
    int T = c->b.n;
    if (r->n_rot > head_dim || r->n_rot % 2)
        return -EINVAL;
    if (worker_scratch(c, (size_t)(r->n_rot > 0 ? r->n_rot : 1) * sizeof(float)))
        return -ENOMEM;
    struct rows_job j = {
        .c = c, .out = x, .pos = pos, .n_heads = n_heads, .head_dim = head_dim, .r = r};
    run_rows(c, T, rope_cb, &j);
    return 0;
}

static int cpu_kv_store(void *ctx, const struct dev_kv *kv, const float *k, const float *v)
{
    struct cpu *c = ctx;
    const struct cpu_tok *tp = c->b.tp;
    int T = c->b.n;
    if (batch_fits(c, kv))
        return -EINVAL;
    size_t row = (size_t)kv->n_kv_heads * kv->head_dim;
    for (int t = 0; t < T; t++) {
        int32_t blk = tp[t].blocks[tp[t].pos / kv->block_size];
        size_t slot = (size_t)blk * kv->block_size + (size_t)(tp[t].pos % kv->block_size);
        const float *ks = k + (size_t)t * row, *vs = v + (size_t)t * row;
        if (kv->type == QT_F16) {
            c->k->to_f16(ks, (uint16_t *)kv->k + slot * row, (int)row);
            c->k->to_f16(vs, (uint16_t *)kv->v + slot * row, (int)row);
        } else {
            memcpy((float *)kv->k + slot * row, ks, row * sizeof(float));
            memcpy((float *)kv->v + slot * row, vs, row * sizeof(float));
        }
    }
    return 0;
}

struct attn_job {
    struct cpu *c;
    const struct dev_kv *kv;
    const struct cpu_tok *tp;
    const float *q;
    int n_heads;
    int gsz; /* query heads per work item, sharing their KV head */
    float scale;
    float *out;
    int64_t n_items; /* (token, head group) items; then the prefetch items */
    const char *pf;  /* the prefetch hint's bytes, PF_ITEM per item */
    size_t pf_bytes;
};

/* bytes of the hinted weight one prefetch work item asks for */
#define PF_ITEM 16384

/* prefetch items [b, e) of an attention job: the lines of PF_ITEM bytes each */
static void attn_prefetch(const struct attn_job *j, int64_t b, int64_t e)
{
#if defined(__x86_64__) || defined(__i386__)
    for (int64_t i = b; i < e; i++) {
        size_t lo = (size_t)i * PF_ITEM,
               hi = lo + PF_ITEM < j->pf_bytes ? lo + PF_ITEM : j->pf_bytes;
        for (size_t o = lo; o < hi; o += 64)
            _mm_prefetch(j->pf + o, _MM_HINT_T1);
    }
#else
    (void)j, (void)b, (void)e;
#endif
}

/*
 * One (token, gsz query heads of one KV head): softmax(q . k_p * scale) over
 * the sequence's positions 0..pos, then the sum of p_p v_p, reading K and V
 * block by block.  The arithmetic follows llama.cpp's: q and the
 * probabilities are rounded to f16 for the f16 cache, and the dot products
 * keep its GEMM summation order (8 lanes) - and with exact_llamacpp, its
 * vector-dot order (32 lanes) for a lone token, as its decode has (see
 * kernels.h).  Each head's result is the same whatever gsz is.  Items past
 * n_items are prefetch items (cpu_prefetch).
 */
static void attn_cb(void *arg, int64_t b, int64_t e, int worker)
{
    struct attn_job *j = arg;
    if (e > j->n_items) {
        attn_prefetch(j, (b > j->n_items ? b : j->n_items) - j->n_items, e - j->n_items);
        e = j->n_items;
    }
    const struct dev_kv *kv = j->kv;
    const struct cpu_kernels *k = j->c->k;
    int hd = kv->head_dim, bs = kv->block_size, g = j->gsz;
    size_t row = (size_t)kv->n_kv_heads * hd;
    int group = j->n_heads / kv->n_kv_heads, items = j->n_heads / g;
    int f16 = kv->type == QT_F16;
    for (int64_t it = b; it < e; it++) {
        int t = (int)(it / items), h0 = (int)(it % items) * g, kh = h0 / group;
        const struct cpu_tok *tp = &j->tp[t];
        int n = tp->pos + 1;
        /* 32 lanes only to match llama.cpp's lone-token order (slower) */
        int lanes = tp->chunk || !j->c->exact ? 8 : 32;
        /* per head: n scores, hd of the query as the dots see it, 32 x hd lanes */
        size_t per_head = (size_t)n + 33 * (size_t)hd;
        float *sc = j->c->per_worker[worker].p, *qh = sc + n, *acc = qh + hd;
        const int32_t *blocks = tp->blocks;
        for (int i = 0; i < g; i++) {
            memcpy(qh + i * per_head, j->q + ((size_t)t * j->n_heads + h0 + i) * hd,
                   sizeof(float) * (size_t)hd);
            if (f16) /* the query meets K in f16 */
                k->scale_round_f16(qh + i * per_head, 1.0f, hd);
        }
        if (f16)
            k->scores_f16(qh, per_head, g, (const uint16_t *)kv->k + kh * hd,
                          (const uint16_t *)kv->v + kh * hd, blocks, bs, row, n, hd, lanes,
                          j->scale, sc, per_head);
        for (int i = 0; i < g; i++) {
            float *s = sc + i * per_head, mx = -INFINITY;
            for (int p = 0; !f16 && p < n; p++) {
                size_t slot = (size_t)blocks[p / bs] * bs + (size_t)(p % bs);
                s[p] =
                    k->dot_f32(qh + i * per_head, (const float *)kv->k + slot * row + kh * hd, hd) *
                    j->scale;
            }
            for (int p = 0; p < n; p++) /* NaN scores are passed over, as fmaxf would */
                mx = s[p] > mx ? s[p] : mx;
            float inv = (float)(1.0 / k->exp_sum(s, mx, s, n));
            if (f16) { /* the probabilities meet V in f16 */
                k->scale_round_f16(s, inv, n);
            } else {
                for (int p = 0; p < n; p++)
                    s[p] *= inv;
            }
        }
        if (f16) {
            k->accum_v_f16(acc, per_head, sc, per_head, g, (const uint16_t *)kv->v + kh * hd,
                           blocks, bs, row, n, hd, lanes);
            for (int i = 0; i < g; i++)
                k->reduce_lanes(acc + i * per_head, hd, lanes,
                                j->out + ((size_t)t * j->n_heads + h0 + i) * hd);
            continue;
        }
        for (int i = 0; i < g; i++) {
            const float *s = sc + i * per_head;
            float *o = j->out + ((size_t)t * j->n_heads + h0 + i) * hd;
            for (int d = 0; d < hd; d++)
                o[d] = 0.0f;
            for (int p = 0; p < n; p++) {
                size_t slot = (size_t)blocks[p / bs] * bs + (size_t)(p % bs);
                const float *v = (const float *)kv->v + slot * row + (size_t)kh * hd;
                for (int d = 0; d < hd; d++)
                    o[d] += s[p] * v[d];
            }
        }
    }
}

static void cpu_prefetch(void *ctx, const struct dev_weight *w)
{
    struct cpu *c = ctx;
    c->pf_data = w->data;
    c->pf_bytes = (size_t)w->rows * w->row_bytes; /* a packed weight has as many */
}

static int cpu_attention(void *ctx, const struct dev_kv *kv, const float *q, int n_heads,
                         float scale, float *out)
{
    struct cpu *c = ctx;
    const struct cpu_tok *tp = c->b.tp;
    int T = c->b.n;
    if (kv->n_kv_heads <= 0 || n_heads % kv->n_kv_heads || kv->head_dim % 8 || batch_fits(c, kv))
        return -EINVAL;
    int32_t max_pos = 0;
    for (int t = 0; t < T; t++)
        max_pos = tp[t].pos > max_pos ? tp[t].pos : max_pos;
    /*
     * Query heads of one KV head go together, up to 3 (the kernels' register
     * budget): each K and V row is then read and converted once for them.
     */
    int group = n_heads / kv->n_kv_heads;
    int gsz = group % 3 == 0 ? 3 : group % 2 == 0 ? 2 : 1;
    size_t per_head = (size_t)max_pos + 1 + 33 * (size_t)kv->head_dim;
    if (worker_scratch(c, per_head * (size_t)gsz * sizeof(float)))
        return -ENOMEM;
    struct attn_job j = {.c = c,
                         .kv = kv,
                         .tp = tp,
                         .q = q,
                         .n_heads = n_heads,
                         .gsz = gsz,
                         .scale = scale,
                         .out = out,
                         .n_items = (int64_t)T * (n_heads / gsz)};
    /*
     * With few items (a decode step of one sequence: one per KV head) some
     * thread runs out of work early: it asks for the hinted weight meanwhile,
     * so the next matmul finds it in cache (tg @ d256 +4.5% here).
     */
    int64_t n_pf = 0;
    if (c->pf_data && j.n_items < 4 * c->pool.n) {
        j.pf = c->pf_data;
        j.pf_bytes = c->pf_bytes;
        n_pf = (int64_t)((j.pf_bytes + PF_ITEM - 1) / PF_ITEM);
    }
    c->pf_data = NULL;
    pool_run(&c->pool, j.n_items + n_pf, 1, attn_cb, &j);
    return 0;
}

static void silu_mul_cb(void *arg, int64_t b, int64_t e, int worker)
{
    const struct rows_job *j = arg;
    (void)worker;
    for (int64_t t = b; t < e; t++)
        j->c->k->silu_mul(j->x + (size_t)t * j->n, j->y + (size_t)t * j->n, j->n,
                          j->out + (size_t)t * j->n);
}

static int cpu_silu_mul(void *ctx, const float *gate, const float *up, int T, int n, float *out)
{
    struct rows_job j = {.c = ctx, .x = gate, .y = up, .out = out, .n = n};
    run_rows(ctx, T, silu_mul_cb, &j);
    return 0;
}

static int cpu_add_bias(void *ctx, float *x, const float *b, int T, int n)
{
    (void)ctx;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < n; i++)
            x[(size_t)t * n + i] += b[i];
    return 0;
}

static void add_cb(void *arg, int64_t b, int64_t e, int worker)
{
    const struct rows_job *j = arg;
    (void)worker;
    for (int64_t i = b; i < e; i++)
        j->out[i] += j->y[i];
}

static int cpu_add(void *ctx, float *x, const float *y, size_t n)
{
    struct cpu *c = ctx;
    struct rows_job j = {.c = c, .y = y, .out = x};
    /* elementwise: any split gives the same sums */
    pool_run(&c->pool, (int64_t)n, n >= 16384 ? 4096 : (int64_t)n, add_cb, &j);
    return 0;
}

static int cpu_gather_rows(void *ctx, const float *x, int cols, float *out)
{
    struct cpu *c = ctx;
    const int32_t *rows = c->b.rows;
    for (int i = 0; i < c->b.n_out; i++)
        memcpy(out + (size_t)i * cols, x + (size_t)rows[i] * cols, (size_t)cols * sizeof(float));
    return 0;
}

static const char *cpu_kernels_op(void *ctx)
{
    return ((const struct cpu *)ctx)->k->name;
}

static const struct dev_ops dev_cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .kernels = cpu_kernels_op,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .matmul = cpu_matmul,
    .matmul_n = cpu_matmul_n,
    .pack_weight = cpu_pack_weight,
    .prefetch = cpu_prefetch,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .silu_mul = cpu_silu_mul,
    .add_bias = cpu_add_bias,
    .add = cpu_add,
    .gather_rows = cpu_gather_rows,
    .weight_load = cpu_weight_load,
    .weight_free = cpu_weight_free,
    .set_batch = cpu_set_batch,
};

/*
 * ---- fenced mode (tests) --------------------------------------------------------
 * Each op checks that the device pointers it is given are in the arena
 * (-EFAULT if not: host memory handed to the device), opens the arena for
 * the op's own work and closes it again, so any host access between ops
 * faults.
 */

#define FENCED(call)                                                                               \
    do {                                                                                           \
        fence_set(c, 1);                                                                           \
        int rc_ = (call);                                                                          \
        fence_set(c, 0);                                                                           \
        return rc_;                                                                                \
    } while (0)

static int f_upload(void *ctx, void *dst, const void *src, size_t n)
{
    struct cpu *c = ctx;
    if (!is_dev(c, dst))
        return -EFAULT;
    FENCED(cpu_copy(ctx, dst, src, n));
}

static int f_download(void *ctx, void *dst, const void *src, size_t n)
{
    struct cpu *c = ctx;
    if (!is_dev(c, src))
        return -EFAULT;
    FENCED(cpu_copy(ctx, dst, src, n));
}

static int f_matmul_n(void *ctx, const struct dev_weight *const *w, int n, const float *x, int T,
                      float *const *y)
{
    struct cpu *c = ctx;
    for (int i = 0; i < n; i++)
        if (!is_dev(c, w[i]->data) || !is_dev(c, y[i]))
            return -EFAULT;
    if (!is_dev(c, x))
        return -EFAULT;
    FENCED(cpu_matmul_n(ctx, w, n, x, T, y));
}

static int f_matmul(void *ctx, const struct dev_weight *w, const float *x, int T, float *y)
{
    return f_matmul_n(ctx, &w, 1, x, T, &y);
}

/* reads the GGUF's host bytes and writes the arena */
static int f_pack_weight(void *ctx, struct dev_weight *w)
{
    struct cpu *c = ctx;
    FENCED(cpu_pack_weight(ctx, w));
}

static int f_embed(void *ctx, const struct dev_weight *table, float *out)
{
    struct cpu *c = ctx;
    if (!is_dev(c, table->data) || !is_dev(c, out))
        return -EFAULT;
    FENCED(cpu_embed(ctx, table, out));
}

static int f_rmsnorm(void *ctx, const float *x, const float *w, int T, int n, float eps, float *out)
{
    struct cpu *c = ctx;
    if (!is_dev(c, x) || (w && !is_dev(c, w)) || !is_dev(c, out))
        return -EFAULT;
    FENCED(cpu_rmsnorm(ctx, x, w, T, n, eps, out));
}

static int f_rope(void *ctx, float *x, int n_heads, int head_dim, const struct dev_rope *r)
{
    struct cpu *c = ctx;
    if (!is_dev(c, x) || (r->freq_factors && !is_dev(c, r->freq_factors)))
        return -EFAULT;
    FENCED(cpu_rope(ctx, x, n_heads, head_dim, r));
}

static int f_kv_store(void *ctx, const struct dev_kv *kv, const float *k, const float *v)
{
    struct cpu *c = ctx;
    if (!is_dev(c, kv->k) || !is_dev(c, kv->v) || !is_dev(c, k) || !is_dev(c, v))
        return -EFAULT;
    FENCED(cpu_kv_store(ctx, kv, k, v));
}

static int f_attention(void *ctx, const struct dev_kv *kv, const float *q, int n_heads, float scale,
                       float *out)
{
    struct cpu *c = ctx;
    if (!is_dev(c, kv->k) || !is_dev(c, kv->v) || !is_dev(c, q) || !is_dev(c, out))
        return -EFAULT;
    FENCED(cpu_attention(ctx, kv, q, n_heads, scale, out));
}

static int f_silu_mul(void *ctx, const float *gate, const float *up, int T, int n, float *out)
{
    struct cpu *c = ctx;
    if (!is_dev(c, gate) || !is_dev(c, up) || !is_dev(c, out))
        return -EFAULT;
    FENCED(cpu_silu_mul(ctx, gate, up, T, n, out));
}

static int f_add_bias(void *ctx, float *x, const float *b, int T, int n)
{
    struct cpu *c = ctx;
    if (!is_dev(c, x) || !is_dev(c, b))
        return -EFAULT;
    FENCED(cpu_add_bias(ctx, x, b, T, n));
}

static int f_add(void *ctx, float *x, const float *y, size_t n)
{
    struct cpu *c = ctx;
    if (!is_dev(c, x) || !is_dev(c, y))
        return -EFAULT;
    FENCED(cpu_add(ctx, x, y, n));
}

static int f_gather_rows(void *ctx, const float *x, int cols, float *out)
{
    struct cpu *c = ctx;
    if (!is_dev(c, x) || !is_dev(c, out))
        return -EFAULT;
    FENCED(cpu_gather_rows(ctx, x, cols, out));
}

static const struct dev_ops dev_cpu_fenced_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .kernels = cpu_kernels_op,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = f_upload,
    .download = f_download,
    .matmul = f_matmul,
    .matmul_n = f_matmul_n,
    .pack_weight = f_pack_weight,
    .prefetch = cpu_prefetch,
    .embed = f_embed,
    .rmsnorm = f_rmsnorm,
    .rope = f_rope,
    .kv_store = f_kv_store,
    .attention = f_attention,
    .silu_mul = f_silu_mul,
    .add_bias = f_add_bias,
    .add = f_add,
    .gather_rows = f_gather_rows,
    .weight_load = cpu_weight_load,
    .weight_free = cpu_weight_free,
    .set_batch = cpu_set_batch,
};

/* ---- kernel paths -------------------------------------------------------------- */

#ifdef CINFER_HAVE_AVX2
/* cpuid; __builtin_cpu_supports also checks that the OS saves the wider registers */
static int has_avx2(void)
{
    unsigned a, b, c, d;
    __builtin_cpu_init();
    /* F16C is CPUID.1:ECX bit 29 (not every compiler's builtin knows its name) */
    int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
}

static int has_avx512(void)
{
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}

/* AVX-VNNI is CPUID.(7,1):EAX bit 4 (clang 14's builtin does not know its name) */
static int has_avxvnni(void)
{
    unsigned a, b, c, d;
    return has_avx2() && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 4));
}

static int has_avx512vnni(void)
{
    return has_avx512() && __builtin_cpu_supports("avx512vnni");
}
#endif

static int has_any(void)
{
    return 1;
}

/*
 * The kernel paths this build has, in the order auto prefers them, last
 * first (device/cpu/avx2.c says what each build is); all give the same bits.
 */
static const struct kpath {
    const char *name, *needs;
    const struct cpu_kernels *k;
    int (*here)(void);
} kpaths[] = {
    {"scalar", "", &cpu_kernels_scalar, has_any},
#ifdef CINFER_HAVE_AVX2
    {"avx2", "AVX2+FMA+F16C", &cpu_kernels_avx2, has_avx2},
    {"avx512", "AVX-512 F/BW/VL", &cpu_kernels_avx512, has_avx512},
    {"avxvnni", "AVX2 and AVX-VNNI", &cpu_kernels_avxvnni, has_avxvnni},
    {"avx512vnni", "AVX-512 F/BW/VL and AVX512-VNNI", &cpu_kernels_avx512vnni, has_avx512vnni},
#endif
};
#define N_KPATHS (sizeof kpaths / sizeof kpaths[0])

/*
 * Kernel builds a test binary adds (tests/unit/emulated_kernels.c), NULL
 * terminated: builds whose instructions SIMDe emulates, so that a CPU
 * without them still checks their code.  Chosen only by name, never by auto.
 */
extern const struct cpu_kernels *const cpu_kernels_emulated[] __attribute__((weak));

/* the kernels named `name` that run here, or NULL */
static const struct cpu_kernels *kernels_named(const char *name)
{
    for (size_t i = 0; i < N_KPATHS; i++)
        if (!strcmp(name, kpaths[i].name))
            return kpaths[i].here() ? kpaths[i].k : NULL;
#ifdef CINFER_HAVE_AVX2
    /* the emulated builds are AVX2 code around SIMDe's stand-ins */
    for (size_t i = 0; cpu_kernels_emulated && cpu_kernels_emulated[i]; i++)
        if (!strcmp(name, cpu_kernels_emulated[i]->name))
            return has_avx2() ? cpu_kernels_emulated[i] : NULL;
#endif
    return NULL;
}

/* the paths in kpaths that run here, space-separated, in kpaths' order */
static char kernels_here_buf[128];

static void kernels_here_init(void)
{
    size_t n = 0;
    for (size_t i = 0; i < N_KPATHS; i++)
        if (kpaths[i].here())
            n += (size_t)snprintf(kernels_here_buf + n, sizeof(kernels_here_buf) - n, "%s%s",
                                  n ? " " : "", kpaths[i].name);
}

const char *dev_cpu_kernels_here(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, kernels_here_init);
    return kernels_here_buf;
}

/* auto: the last path in kpaths that runs here */
static const struct cpu_kernels *kernels_auto(void)
{
    for (size_t i = N_KPATHS; i-- > 0;)
        if (kpaths[i].here())
            return kpaths[i].k;
    return &cpu_kernels_scalar;
}

int dev_cpu_kernels_check(const char *name, char *err, size_t errlen)
{
    if (!name || !strcmp(name, "auto") || kernels_named(name))
        return 0;
    if (err && errlen) {
        for (size_t i = 0; i < N_KPATHS; i++)
            if (!strcmp(name, kpaths[i].name)) {
                snprintf(err, errlen, "kernels '%s': this CPU lacks %s; here: %s", name,
                         kpaths[i].needs, dev_cpu_kernels_here());
                return -EINVAL;
            }
        char all[128] = "auto";
        size_t n = strlen(all);
        for (size_t i = 0; i < N_KPATHS; i++)
            n += (size_t)snprintf(all + n, sizeof(all) - n, ", %s", kpaths[i].name);
        snprintf(err, errlen, "unknown kernels '%.32s'; choices: %s (here: %s)", name, all,
                 dev_cpu_kernels_here());
    }
    return -EINVAL;
}

int dev_cpu_create(const struct dev_config *cfg, struct dev *out)
{
    struct cpu *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    struct util_cpus cpus;
    if (!cfg || cfg->threads <= 0)
        util_cpus_usable(NULL, 0, &cpus);
    int n = cfg && cfg->threads > 0 ? cfg->threads : cpus.n;
    if (n < 1)
        n = 1;
    c->exact = cfg && cfg->exact_llamacpp;
    if (cfg && cfg->force_scalar)
        c->k = &cpu_kernels_scalar;
    else if (cfg && cfg->kernels && strcmp(cfg->kernels, "auto"))
        c->k = kernels_named(cfg->kernels);
    else
        c->k = kernels_auto();
    if (!c->k) { /* dev_create checked the name: a caller that did not */
        free(c);
        return -EINVAL;
    }
    int rc = 0;
    if (cfg && cfg->fenced) {
        c->fenced = 1;
        c->fence.cap = (size_t)(cfg->fenced_mib > 0 ? cfg->fenced_mib : 1024) << 20;
        c->fence.base =
            mmap(NULL, c->fence.cap, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (c->fence.base == MAP_FAILED) {
            c->fence.base = NULL;
            rc = -ENOMEM;
        }
    }
    c->per_worker = rc ? NULL : calloc((size_t)n, sizeof(*c->per_worker));
    rc = rc ? rc : c->per_worker ? pool_init(&c->pool, n) : -ENOMEM;
    if (rc) {
        free(c->per_worker);
        if (c->fence.base)
            munmap(c->fence.base, c->fence.cap);
        free(c);
        return rc;
    }
    out->ops = c->fenced ? &dev_cpu_fenced_ops : &dev_cpu_ops;
    out->ctx = c;
    return 0;
}

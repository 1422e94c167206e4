/*
 * engine/request.c - a request's life outside the scheduler: its reference
 * count and its output channel, a queue of events the engine thread pushes
 * and the caller's thread takes.  The scheduler (sched.c) decides what goes
 * into the events; this file only moves them between threads.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/sched.h"

const char *eng_finish_name(enum eng_finish f)
{
    switch (f) {
    case ENG_FINISH_STOP:
        return "stop";
    case ENG_FINISH_LENGTH:
        return "length";
    case ENG_FINISH_CANCELLED:
        return "cancelled";
    case ENG_FINISH_ERROR:
        return "error";
    case ENG_FINISH_TIMEOUT:
        return "timeout";
    default:
        return "none";
    }
}

static void deadline_after(int timeout_ms, struct timespec *until)
{
    clock_gettime(CLOCK_MONOTONIC, until);
    until->tv_sec += timeout_ms / 1000;
    until->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until->tv_nsec >= 1000000000L) {
        until->tv_sec++;
        until->tv_nsec -= 1000000000L;
    }
}

static void cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
}

void eng_notify_init(struct eng_notify *n)
{
    pthread_mutex_init(&n->mu, NULL);
    cond_init_monotonic(&n->cv);
    n->count = 0;
    n->wake_cb = NULL;
    n->wake_arg = NULL;
}

void eng_notify_destroy(struct eng_notify *n)
{
    pthread_mutex_destroy(&n->mu);
    pthread_cond_destroy(&n->cv);
}

int eng_notify_wait(struct eng_notify *n, uint64_t *seen, int timeout_ms)
{
    struct timespec until;
    deadline_after(timeout_ms, &until);
    int rc = 0;
    pthread_mutex_lock(&n->mu);
    while (n->count == *seen && rc == 0)
        if (pthread_cond_timedwait(&n->cv, &n->mu, &until) == ETIMEDOUT)
            rc = -EAGAIN;
    if (n->count != *seen)
        rc = 0;
    *seen = n->count;
    pthread_mutex_unlock(&n->mu);
    return rc;
}

struct eng_req *req_create(void)
{
    struct eng_req *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    atomic_init(&r->refs, 2);
    atomic_init(&r->cancel, 0);
    pthread_mutex_init(&r->mu, NULL);
    cond_init_monotonic(&r->cv);
    kv_seq_init(&r->seq);
    return r;
}

void eng_event_clear(struct eng_event *ev)
{
    free(ev->text);
    free(ev->top);
    free(ev->embd);
    memset(ev, 0, sizeof(*ev));
}

void req_unref(struct eng_req *r)
{
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    for (int i = r->head; i < r->n; i++)
        eng_event_clear(&r->ev[i]);
    free(r->ev);
    free(r->tokens);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->stop);
    free(r->pending.p);
    free(r->bias);
    free(r->stop_ids);
    free(r->ban);
    free(r->pool_sum);
    free(r->embd_out);
    if (r->smp_ready)
        smp_free(&r->smp);
    req_constrain_free(r); /* a safety net: finish() frees it on the engine thread */
    eng_grammar_release(r->grammar);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

/* Wakes whoever waits on r's channel or its notify (r->mu held). */
static void wake_reader(struct eng_req *r)
{
    pthread_cond_signal(&r->cv);
    if (r->notify && !r->released) {
        pthread_mutex_lock(&r->notify->mu);
        r->notify->count++;
        pthread_cond_broadcast(&r->notify->cv);
        if (r->notify->wake_cb)
            r->notify->wake_cb(r->notify->wake_arg);
        pthread_mutex_unlock(&r->notify->mu);
    }
}

int req_push(struct eng_req *r, struct eng_event *ev)
{
    pthread_mutex_lock(&r->mu);
    if (r->head > 0 && r->head == r->n)
        r->head = r->n = 0;
    if (r->n == r->cap) {
        int cap = r->cap ? r->cap * 2 : 16;
        struct eng_event *p = realloc(r->ev, sizeof(*p) * (size_t)cap);
        if (!p) {
            if (ev->kind == ENG_EV_END) { /* the reader must still learn it is over */
                r->ended = r->taken = 1;
                wake_reader(r);
            }
            pthread_mutex_unlock(&r->mu);
            eng_event_clear(ev);
            return -ENOMEM;
        }
        r->ev = p;
        r->cap = cap;
    }
    r->ev[r->n++] = *ev;
    memset(ev, 0, sizeof(*ev));
    if (r->ev[r->n - 1].kind == ENG_EV_END)
        r->ended = 1;
    wake_reader(r);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

int eng_req_next(struct eng_req *r, struct eng_event *ev, int timeout_ms)
{
    struct timespec until;
    if (timeout_ms > 0)
        deadline_after(timeout_ms, &until);
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    while (r->head == r->n && !r->taken) {
        if (timeout_ms == 0)
            break;
        if (timeout_ms < 0)
            pthread_cond_wait(&r->cv, &r->mu);
        else if (pthread_cond_timedwait(&r->cv, &r->mu, &until) == ETIMEDOUT)
            break;
    }
    if (r->head < r->n) {
        *ev = r->ev[r->head++];
        if (ev->kind == ENG_EV_END)
            r->taken = 1;
    } else {
        rc = r->taken ? -ENODATA : -EAGAIN;
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

void eng_cancel(struct eng_req *r)
{
    if (!r || atomic_exchange(&r->cancel, 1))
        return;
    pthread_mutex_lock(&r->e->mu);
    if (!r->e->stopping) /* once stopping, the wake handle may be closed */
        uv_async_send(&r->e->wake);
    pthread_mutex_unlock(&r->e->mu);
}

void eng_req_release(struct eng_req *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    int ended = r->ended;
    r->released = 1;
    pthread_mutex_unlock(&r->mu);
    if (!ended)
        eng_cancel(r);
    req_unref(r);
}

void req_release_engine_state(struct engine *e, struct eng_req *r)
{
    kv_free_seq(e->pool, &r->seq);
    req_constrain_free(r);
    if (r->smp_ready) {
        smp_free(&r->smp);
        r->smp_ready = 0;
    }
}

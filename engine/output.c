/*
 * engine/output.c - what a request's client sees of each sampled token: the
 * incremental detokenizer, stop strings and the token's event.
 *
 * A token's bytes go through the detokenizer into the request's pending
 * text; whatever can no longer be the start of a stop string is released in
 * the token's event.  A stop string ends the request and neither it nor
 * anything after it is released.  Ending the request (the END event, its
 * blocks) is the scheduler's business: out_token only says how it ended.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sched.h"

char *out_copy(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        if (n)
            memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

/*
 * How many bytes at the start of r->pending can be released: all of them
 * when final, else all but the longest tail that may begin a stop string.
 * *hit is set when a stop string occurs; the count is then the text before it.
 */
static size_t stop_scan(const struct eng_req *r, int final, int *hit)
{
    const char *p = r->pending.p;
    size_t n = r->pending.n, first = SIZE_MAX, len_first = 0;
    *hit = 0;
    if (r->n_gen < r->min_tokens) /* too soon for a stop string */
        return n;
    for (int i = 0; i < r->n_stop; i++) {
        const char *at = n ? memmem(p, n, r->stop[i], strlen(r->stop[i])) : NULL;
        if (at && (size_t)(at - p) < first) {
            first = (size_t)(at - p);
            len_first = strlen(r->stop[i]);
        }
    }
    if (first != SIZE_MAX) {
        *hit = 1;
        return r->include_stop ? first + len_first : first;
    }
    if (final)
        return n;
    size_t hold = 0;
    for (int i = 0; i < r->n_stop; i++) {
        size_t len = strlen(r->stop[i]);
        for (size_t k = (len - 1 < n ? len - 1 : n); k > hold; k--)
            if (memcmp(p + n - k, r->stop[i], k) == 0) {
                hold = k;
                break;
            }
    }
    return n - hold;
}

static enum eng_finish fail(struct out_end *end, const char *msg)
{
    end->text = msg;
    end->n = strlen(msg);
    return ENG_FINISH_ERROR;
}

enum eng_finish out_token(struct eng_req *r, const struct smp_result *res, int eog, double now,
                          struct out_end *end)
{
    end->text = NULL;
    end->n = 0;
    if (!r->t_first)
        r->t_first = now;
    if (eog) {
        /* the end-of-generation token itself is neither text nor counted */
        tok_detok_flush(&r->detok, &r->pending);
        int hit;
        end->text = r->pending.p;
        end->n = stop_scan(r, 1, &hit);
        return ENG_FINISH_STOP;
    }
    int rc = tok_detok_feed(&r->detok, res->token, &r->pending);
    int last = r->n_gen >= r->max_tokens || r->gram_done || r->force_last;
    if (!rc && last)
        rc = tok_detok_flush(&r->detok, &r->pending);
    if (rc)
        return fail(end, "out of memory while detokenizing");
    int hit;
    size_t rel = stop_scan(r, last, &hit);
    struct eng_event ev = {
        .kind = ENG_EV_TOKEN, .t = now, .token = res->token, .logprob = res->logprob};
    ev.text = out_copy(r->pending.p, rel);
    ev.n_text = rel;
    if (r->logprobs) {
        ev.top = malloc(sizeof(*ev.top));
        if (ev.top)
            *ev.top = *res;
        ev.n_top = res->n_top;
    }
    if (!ev.text || (r->logprobs && !ev.top)) {
        eng_event_clear(&ev);
        return fail(end, "out of memory for the output");
    }
    if (hit) {
        r->pending.n = 0;
    } else if (rel) {
        memmove(r->pending.p, r->pending.p + rel, r->pending.n - rel);
        r->pending.n -= rel;
    }
    req_push(r, &ev);
    if (hit)
        return ENG_FINISH_STOP;
    if (r->gram_done || r->force_last) /* the grammar is complete, or a stop token */
        return ENG_FINISH_STOP;
    return last ? ENG_FINISH_LENGTH : ENG_FINISH_NONE;
}

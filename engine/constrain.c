/*
 * engine/constrain.c - constrained decoding in the engine: the model's
 * vocabulary as the grammar engine sees it, compiling a request's grammar
 * (with a small cache, as applications send the same schema again and
 * again), and each sequence's matcher: its mask before sampling, its
 * advance after.  The grammar work itself is grammar/'s.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sched.h"
#include "grammar/gram.h"
#include "util/clock.h"
#include "util/errmsg.h"

#define CACHE_SIZE 16

struct cache_entry {
    int kind;
    char *src;
    size_t len;
    struct gram *g;
    uint64_t used;
};

struct eng_constrain {
    struct gram_vocab *v;
    int32_t *eog; /* the end-of-generation tokens, allowed where the grammar may end */
    int n_eog;
    pthread_mutex_t mu;
    int compiling, max_compiling; /* (mu) */
    struct cache_entry cache[CACHE_SIZE];
    uint64_t tick;
};

int eng_constrain_init(struct engine *e, char *err, size_t errlen)
{
    int n = (int)tok_n_vocab(e->tok);
    const char **bytes = calloc((size_t)n, sizeof(*bytes));
    size_t *lens = calloc((size_t)n, sizeof(*lens));
    struct eng_constrain *c = calloc(1, sizeof(*c));
    int32_t *eog = calloc((size_t)n, sizeof(*eog));
    if (!bytes || !lens || !c || !eog) {
        free(bytes);
        free(lens);
        free(c);
        free(eog);
        return errmsg(err, errlen, -ENOMEM, "out of memory for the grammar vocabulary");
    }
    for (int i = 0; i < n; i++) {
        enum tok_type t = tok_type(e->tok, i);
        if (tok_is_eog(e->tok, i))
            eog[c->n_eog++] = i;
        /* control, unknown and end tokens are never text a grammar can take */
        if (t == TOK_TYPE_CONTROL || t == TOK_TYPE_UNKNOWN || t == TOK_TYPE_UNUSED ||
            tok_is_eog(e->tok, i))
            continue;
        bytes[i] = tok_piece(e->tok, i, 0, &lens[i]);
    }
    int rc = gram_vocab_create(n, bytes, lens, &c->v, err, errlen);
    free(bytes);
    free(lens);
    if (rc) {
        free(eog);
        free(c);
        return rc;
    }
    c->eog = eog;
    c->max_compiling = e->cfg.max_grammar_compiles > 0 ? e->cfg.max_grammar_compiles : 2;
    pthread_mutex_init(&c->mu, NULL);
    e->constrain = c;
    return 0;
}

void eng_constrain_free(struct engine *e)
{
    struct eng_constrain *c = e->constrain;
    if (!c)
        return;
    for (int i = 0; i < CACHE_SIZE; i++) {
        free(c->cache[i].src);
        gram_unref(c->cache[i].g);
    }
    gram_vocab_destroy(c->v);
    free(c->eog);
    pthread_mutex_destroy(&c->mu);
    free(c);
    e->constrain = NULL;
}

static const struct {
    const char *name;
    enum gram_kind kind;
} k_kinds[] = {
    {"json_schema", GRAM_JSON_SCHEMA},
    {"json_object", GRAM_JSON_OBJECT},
    {"regex", GRAM_REGEX},
    {"choice", GRAM_CHOICE},
    {"gbnf", GRAM_GBNF},
    {"tool_calls", GRAM_TOOL_CALLS},
};

int eng_grammar_compile(struct engine *e, const char *kind, const char *src, size_t len,
                        struct gram **out, char *err, size_t errlen)
{
    struct eng_constrain *c = e->constrain;
    *out = NULL;
    int k = -1;
    for (size_t i = 0; i < sizeof k_kinds / sizeof *k_kinds; i++)
        if (!strcmp(kind, k_kinds[i].name))
            k = (int)k_kinds[i].kind;
    if (k < 0)
        return errmsg(err, errlen, -EINVAL, "unknown grammar kind '%s'", kind);
    if (!c)
        return errmsg(err, errlen, -EINVAL, "this engine has no grammar vocabulary");
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < CACHE_SIZE; i++) {
        struct cache_entry *x = &c->cache[i];
        if (x->g && x->kind == k && x->len == len && !memcmp(x->src, src, len)) {
            x->used = ++c->tick;
            *out = gram_ref(x->g);
            pthread_mutex_unlock(&c->mu);
            return 0;
        }
    }
    if (c->compiling >= c->max_compiling) {
        int n = c->compiling;
        pthread_mutex_unlock(&c->mu);
        return errmsg(err, errlen, -EBUSY,
                      "%d other grammars are compiling; try again shortly (compiled ones are "
                      "cached)",
                      n);
    }
    c->compiling++;
    pthread_mutex_unlock(&c->mu);
    /* compiled outside the lock: it may take a while, and other threads go on */
    struct gram *g = NULL;
    int rc = gram_compile((enum gram_kind)k, src, len, c->v, NULL, &g, err, errlen);
    pthread_mutex_lock(&c->mu);
    c->compiling--;
    pthread_mutex_unlock(&c->mu);
    if (rc)
        return rc;
    char *copy = malloc(len + 1);
    pthread_mutex_lock(&c->mu);
    if (copy) {
        memcpy(copy, src, len);
        copy[len] = 0;
        int slot = 0;
        for (int i = 1; i < CACHE_SIZE; i++)
            if (c->cache[i].used < c->cache[slot].used)
                slot = i;
        struct cache_entry *x = &c->cache[slot];
        free(x->src);
        gram_unref(x->g);
        *x = (struct cache_entry){k, copy, len, gram_ref(g), ++c->tick};
    }
    pthread_mutex_unlock(&c->mu);
    *out = g;
    return 0;
}

void eng_grammar_release(struct gram *g)
{
    gram_unref(g);
}

int req_constrain_start(struct engine *e, struct eng_req *r)
{
    if (!r->grammar)
        return 0;
    if (!r->gm) {
        int n_words = (int)((tok_n_vocab(e->tok) + 31) / 32);
        r->mask = malloc(sizeof(uint32_t) * (size_t)n_words);
        if (!r->mask || gram_matcher_create(r->grammar, &r->gm))
            return -ENOMEM;
    }
    /* the matcher follows the tokens: after a preemption it is rebuilt from them */
    gram_matcher_reset(r->gm);
    for (int i = r->n_prompt; i < r->n_tokens; i++)
        if (gram_accept_token(r->gm, r->tokens[i]))
            return -EINVAL;
    return 0;
}

int req_constrain_mask(struct engine *e, struct eng_req *r)
{
    int any = gram_mask(r->gm, r->mask);
    if (any < 0)
        return any;
    const struct eng_constrain *c = e->constrain;
    if (gram_can_end(r->gm) && !r->ignore_eos)
        for (int i = 0; i < c->n_eog; i++) {
            int32_t t = c->eog[i];
            r->mask[t >> 5] |= 1u << (t & 31);
            any = 1;
        }
    return any ? 0 : -ENOENT;
}

int req_constrain_accept(struct eng_req *r, int32_t token)
{
    if (!r->gm)
        return 0;
    int rc = gram_accept_token(r->gm, token);
    if (!rc && gram_done(r->gm))
        r->gram_done = 1;
    return rc;
}

void req_constrain_free(struct eng_req *r)
{
    gram_matcher_destroy(r->gm);
    r->gm = NULL;
    free(r->mask);
    r->mask = NULL;
}

/* ---- the bench (cinfer bench --grammar) ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void summarise(double *t, int n, struct eng_gbench_times *out)
{
    memset(out, 0, sizeof(*out));
    if (!n)
        return;
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += t[i];
    qsort(t, (size_t)n, sizeof(*t), cmp_double);
    out->n = n;
    out->mean_us = sum / n * 1e6;
    out->p50_us = t[n / 2] * 1e6;
    int k = (int)(0.99 * (n - 1) + 0.5);
    out->p99_us = t[k] * 1e6;
    out->max_us = t[n - 1] * 1e6;
}

int eng_grammar_bench(const struct eng_vocab *ev, const char *kind, const char *src, size_t len,
                      const char *const *docs, int n_docs, int rounds, struct eng_gbench *out,
                      char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    struct engine fake = {.tok = (struct tok *)eng_vocab_tok(ev)};
    int rc = eng_constrain_init(&fake, err, errlen);
    if (rc)
        return rc;
    out->n_vocab = (int)tok_n_vocab(fake.tok);
    double t0 = util_now_s();
    struct gram *g = NULL;
    rc = eng_grammar_compile(&fake, kind, src, len, &g, err, errlen);
    out->compile_ms = (util_now_s() - t0) * 1e3;
    if (rc) {
        eng_constrain_free(&fake);
        return rc;
    }
    struct gram_stats st;
    gram_get_stats(g, &st);
    out->rules = st.rules;
    out->positions = st.positions;
    out->tables_ms = st.tables_s * 1e3;
    out->table_mib = (double)st.table_bytes / (1 << 20);
    int nw = (out->n_vocab + 31) / 32;
    uint32_t *mask = malloc(sizeof(uint32_t) * (size_t)nw);
    size_t cap = 0;
    double *first = NULL, *all = NULL;
    int n_first = 0, n_all = 0;
    for (int round = 0; !rc && round < rounds; round++)
        for (int d = 0; !rc && d < n_docs; d++) {
            int32_t *ids = NULL;
            int64_t n = tok_encode_alloc(fake.tok, docs[d], strlen(docs[d]), 0, &ids);
            if (n <= 0) {
                rc = errmsg(err, errlen, -EINVAL, "document %d does not tokenize", d + 1);
                break;
            }
            if ((size_t)(n_all + n) > cap) {
                cap = (size_t)(n_all + n) * 2;
                double *a = realloc(all, sizeof(*a) * cap),
                       *f = a ? realloc(first, sizeof(*f) * cap) : NULL;
                if (a)
                    all = a;
                if (f)
                    first = f;
                if (!a || !f)
                    rc = -ENOMEM;
            }
            struct gram_matcher *m = NULL;
            if (!rc && (!mask || gram_matcher_create(g, &m)))
                rc = -ENOMEM;
            for (int64_t k = 0; !rc && k < n; k++) {
                double a = util_now_s();
                int any = gram_mask(m, mask);
                double took = util_now_s() - a;
                if (any < 0 || !((mask[ids[k] >> 5] >> (ids[k] & 31)) & 1) ||
                    gram_accept_token(m, ids[k])) {
                    rc = errmsg(err, errlen, -EINVAL,
                                "document %d does not follow the grammar (token %lld)", d + 1,
                                (long long)k);
                    break;
                }
                all[n_all++] = took;
                if (round == 0 && d == 0)
                    first[n_first++] = took;
            }
            if (!rc && !gram_can_end(m))
                rc = errmsg(err, errlen, -EINVAL, "document %d stops short of the grammar's end",
                            d + 1);
            gram_matcher_destroy(m);
            free(ids);
        }
    if (!rc) {
        summarise(first, n_first, &out->first_doc);
        summarise(all, n_all, &out->all);
    }
    free(first);
    free(all);
    free(mask);
    gram_unref(g);
    eng_constrain_free(&fake);
    return rc;
}

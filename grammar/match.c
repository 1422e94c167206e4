/*
 * grammar/match.c - the pushdown matcher over bytes, the vocabulary trie,
 * the per-position token tables and the token mask.
 *
 * A stack is a node (pos, parent): pos an element of the compiled rules,
 * parent the node below it (0: the bottom).  Nodes are hash-consed per
 * pool, so a stack is one id and a state - the set of stacks the bytes so
 * far allow - is a sorted list of ids whose tops are byte sets (or 0: the
 * grammar is complete).  Expanding a position pushes rule references
 * (a reference that ends its alternative is a tail call: nothing is
 * pushed for it, so repetition runs in constant stack) until every stack
 * has a byte set on top.
 *
 * Tables: for each byte-set position p, a walk of the vocabulary trie from
 * the stack {p} alone sorts every token into accepted (consumed without
 * leaving p's rule, or leaving it exactly at the token's end), rejected,
 * or uncertain: it leaves the rule at an offset whose next byte may follow
 * the rule, so the stack below decides.  At run time a state's mask is
 * the union of its tops' accepted tokens plus the uncertain ones whose
 * suffix the real stack below accepts, walked in suffix order so that
 * entries sharing a prefix share the work.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/internal.h"
#include "util/clock.h"

/* ---- vocabulary ---- */

/* qsort_r's comparators take the vocabulary as their context: grammars compile on many threads */
static int cmp_tok(const void *a, const void *b, void *ctx)
{
    const struct gram_vocab *v = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint32_t lx = v->len[x], ly = v->len[y];
    int c = memcmp(v->blob + v->off[x], v->blob + v->off[y], lx < ly ? lx : ly);
    if (c)
        return c;
    if (lx != ly)
        return lx < ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

int gram_vocab_create(int n_vocab, const char *const *bytes, const size_t *lens,
                      struct gram_vocab **out, char *err, size_t errlen)
{
    *out = NULL;
    if (n_vocab <= 0) {
        snprintf(err, errlen, "a vocabulary of %d tokens", n_vocab);
        return -EINVAL;
    }
    struct gram_vocab *v = calloc(1, sizeof(*v));
    size_t total = 0;
    for (int i = 0; i < n_vocab; i++) {
        size_t n = bytes[i] ? lens[i] : 0;
        if (n > 65535) {
            free(v);
            snprintf(err, errlen, "token %d is %zu bytes long", i, n);
            return -EINVAL;
        }
        total += n;
    }
    if (v) {
        v->n_vocab = n_vocab;
        v->off = malloc(sizeof(uint32_t) * (size_t)n_vocab);
        v->len = malloc(sizeof(uint32_t) * (size_t)n_vocab);
        v->blob = malloc(total + 1);
        v->sorted = malloc(sizeof(int32_t) * (size_t)n_vocab);
        /* at most one node per byte, plus the end marker */
        v->t_byte = malloc(total + 1);
        v->t_depth = malloc(sizeof(uint16_t) * (total + 1));
        v->t_end = malloc(sizeof(uint32_t) * (total + 1));
        v->t_tok = malloc(sizeof(uint32_t) * (total + 2));
    }
    if (!v || !v->off || !v->len || !v->blob || !v->sorted || !v->t_byte || !v->t_depth ||
        !v->t_end || !v->t_tok || total > UINT32_MAX) {
        gram_vocab_destroy(v);
        snprintf(err, errlen, "out of memory for the vocabulary's trie");
        return -ENOMEM;
    }
    size_t o = 0;
    int ns = 0;
    for (int i = 0; i < n_vocab; i++) {
        size_t n = bytes[i] ? lens[i] : 0;
        v->off[i] = (uint32_t)o;
        v->len[i] = (uint32_t)n;
        if (n)
            memcpy(v->blob + o, bytes[i], n);
        o += n;
        if (n)
            v->sorted[ns++] = i;
        if ((int)n > v->max_len)
            v->max_len = (int)n;
    }
    qsort_r(v->sorted, (size_t)ns, sizeof(int32_t), cmp_tok, v);
    /* the trie in preorder: one node per distinct prefix */
    uint32_t *path = malloc(sizeof(uint32_t) * ((size_t)v->max_len + 1));
    if (!path) {
        gram_vocab_destroy(v);
        snprintf(err, errlen, "out of memory for the vocabulary's trie");
        return -ENOMEM;
    }
    int nn = 0, top = 0; /* path[1..top]: the open nodes */
    for (int k = 0; k < ns; k++) {
        int32_t t = v->sorted[k];
        const char *s = v->blob + v->off[t];
        int len = (int)v->len[t], l = 0;
        if (k) {
            int32_t u = v->sorted[k - 1];
            int lu = (int)v->len[u];
            const char *su = v->blob + v->off[u];
            while (l < len && l < lu && s[l] == su[l])
                l++;
        }
        for (int d = l + 1; d <= len; d++) {
            while (top >= d)
                v->t_end[path[top--]] = (uint32_t)nn;
            v->t_byte[nn] = (uint8_t)s[d - 1];
            v->t_depth[nn] = (uint16_t)d;
            v->t_tok[nn] = (uint32_t)k;
            path[++top] = (uint32_t)nn++;
        }
    }
    while (top > 0)
        v->t_end[path[top--]] = (uint32_t)nn;
    v->t_tok[nn] = (uint32_t)ns;
    v->n_nodes = nn;
    free(path);
    *out = v;
    return 0;
}

void gram_vocab_destroy(struct gram_vocab *v)
{
    if (!v)
        return;
    free(v->off);
    free(v->len);
    free(v->blob);
    free(v->sorted);
    free(v->t_byte);
    free(v->t_depth);
    free(v->t_end);
    free(v->t_tok);
    free(v);
}

int gram_vocab_n(const struct gram_vocab *v)
{
    return v->n_vocab;
}

/* ---- stacks ---- */

struct ids {
    uint32_t *v;
    int n, cap;
};

static int ids_push(struct ids *s, uint32_t x)
{
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 16;
        uint32_t *n = realloc(s->v, sizeof(*n) * (size_t)cap);
        if (!n)
            return -ENOMEM;
        s->v = n;
        s->cap = cap;
    }
    s->v[s->n++] = x;
    return 0;
}

#define NO_NODE UINT32_MAX

/* Hash-consed (pos, parent) nodes; node 0 is the empty stack. */
struct pool {
    const struct gram *g;
    uint32_t *pos, *par, *stamp;
    uint32_t n, cap;
    uint32_t *ht, ht_mask;
    uint32_t cur; /* the stamp of the expansion under way */
    uint32_t max;
    struct ids work; /* pairs (pos, par) to expand */
    int rc;          /* first error */
};

static int pool_init(struct pool *p, const struct gram *g, uint32_t max)
{
    memset(p, 0, sizeof(*p));
    p->g = g;
    p->max = max;
    p->cap = 1024;
    p->pos = malloc(sizeof(uint32_t) * p->cap);
    p->par = malloc(sizeof(uint32_t) * p->cap);
    p->stamp = calloc(p->cap, sizeof(uint32_t));
    p->ht = calloc(2048, sizeof(uint32_t));
    p->ht_mask = 2047;
    if (!p->pos || !p->par || !p->stamp || !p->ht)
        return -ENOMEM;
    p->pos[0] = NO_NODE;
    p->par[0] = 0;
    p->n = 1;
    return 0;
}

static void pool_free(struct pool *p)
{
    free(p->pos);
    free(p->par);
    free(p->stamp);
    free(p->ht);
    free(p->work.v);
    memset(p, 0, sizeof(*p));
}

static inline uint32_t node_hash(uint32_t pos, uint32_t par)
{
    uint64_t k = ((uint64_t)pos << 32 | par) * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(k >> 32);
}

static int pool_grow(struct pool *p)
{
    if (p->n >= p->max) {
        p->rc = -E2BIG;
        return -E2BIG;
    }
    if (p->n == p->cap) {
        uint32_t cap = p->cap * 2;
        uint32_t *a = realloc(p->pos, sizeof(uint32_t) * cap);
        if (a)
            p->pos = a;
        uint32_t *b = a ? realloc(p->par, sizeof(uint32_t) * cap) : NULL;
        if (b)
            p->par = b;
        uint32_t *c = b ? realloc(p->stamp, sizeof(uint32_t) * cap) : NULL;
        if (!c) {
            p->rc = -ENOMEM;
            return -ENOMEM;
        }
        memset(c + p->cap, 0, sizeof(uint32_t) * (cap - p->cap));
        p->stamp = c;
        p->cap = cap;
    }
    if (2 * (p->n + 1) > p->ht_mask + 1) {
        uint32_t hcap = (p->ht_mask + 1) * 2;
        uint32_t *h = calloc(hcap, sizeof(uint32_t));
        if (!h) {
            p->rc = -ENOMEM;
            return -ENOMEM;
        }
        for (uint32_t i = 1; i < p->n; i++) {
            uint32_t k = node_hash(p->pos[i], p->par[i]) & (hcap - 1);
            while (h[k])
                k = (k + 1) & (hcap - 1);
            h[k] = i;
        }
        free(p->ht);
        p->ht = h;
        p->ht_mask = hcap - 1;
    }
    return 0;
}

static uint32_t node_get(struct pool *p, uint32_t pos, uint32_t par)
{
    uint32_t k = node_hash(pos, par) & p->ht_mask;
    for (uint32_t i; (i = p->ht[k]); k = (k + 1) & p->ht_mask)
        if (p->pos[i] == pos && p->par[i] == par)
            return i;
    if (pool_grow(p))
        return NO_NODE;
    k = node_hash(pos, par) & p->ht_mask; /* the table may have grown */
    while (p->ht[k])
        k = (k + 1) & p->ht_mask;
    uint32_t id = p->n++;
    p->pos[id] = pos;
    p->par[id] = par;
    p->stamp[id] = 0;
    p->ht[k] = id;
    return id;
}

static void begin(struct pool *p)
{
    if (++p->cur == 0) { /* wrapped: clear the stamps */
        memset(p->stamp, 0, sizeof(uint32_t) * p->cap);
        p->cur = 1;
    }
}

/* Expands (pos, par) into stacks with a byte set on top (or 0), added once each to out. */
static int expand(struct pool *p, uint32_t pos0, uint32_t par0, struct ids *out)
{
    const struct gram *g = p->g;
    p->work.n = 0;
    if (ids_push(&p->work, pos0) || ids_push(&p->work, par0))
        return p->rc = -ENOMEM;
    while (p->work.n) {
        uint32_t par = p->work.v[--p->work.n], pos = p->work.v[--p->work.n];
        const struct gel *e = &g->els[pos];
        if (e->type == GE_END) {
            if (par == 0) {
                if (p->stamp[0] != p->cur) {
                    p->stamp[0] = p->cur;
                    if (ids_push(out, 0))
                        return p->rc = -ENOMEM;
                }
            } else if (ids_push(&p->work, p->pos[par]) || ids_push(&p->work, p->par[par]))
                return p->rc = -ENOMEM;
            continue;
        }
        uint32_t id = node_get(p, pos, par);
        if (id == NO_NODE)
            return p->rc;
        if (p->stamp[id] == p->cur)
            continue;
        p->stamp[id] = p->cur;
        if (e->type == GE_BYTES) {
            if (ids_push(out, id))
                return p->rc = -ENOMEM;
            continue;
        }
        /* a reference: push the continuation unless it is a tail call */
        uint32_t np = par;
        if (g->els[pos + 1].type != GE_END) {
            np = node_get(p, pos + 1, par);
            if (np == NO_NODE)
                return p->rc;
        }
        uint32_t r = e->arg;
        for (uint32_t a = g->rule_alt[r + 1]; a-- > g->rule_alt[r];)
            if (ids_push(&p->work, g->alts[a]) || ids_push(&p->work, np))
                return p->rc = -ENOMEM;
    }
    return 0;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void sort_ids(uint32_t *v, int n)
{
    if (n < 16) {
        for (int i = 1; i < n; i++) {
            uint32_t x = v[i];
            int j = i;
            for (; j > 0 && v[j - 1] > x; j--)
                v[j] = v[j - 1];
            v[j] = x;
        }
    } else
        qsort(v, (size_t)n, sizeof(*v), cmp_u32);
}

/* out = the stacks of in (n ids) after byte c, sorted; 0 or an error. */
static int advance(struct pool *p, const uint32_t *in, int n, unsigned c, struct ids *out,
                   int max_stacks)
{
    const struct gram *g = p->g;
    out->n = 0;
    begin(p);
    for (int i = 0; i < n; i++) {
        uint32_t id = in[i];
        if (!id)
            continue;
        uint32_t pos = p->pos[id];
        if (!gset_has(g->sets[g->els[pos].arg], c))
            continue;
        if (expand(p, pos + 1, p->par[id], out))
            return p->rc;
        if (out->n > max_stacks)
            return p->rc = -E2BIG;
    }
    sort_ids(out->v, out->n);
    return 0;
}

/* ---- the tables ---- */

static uint32_t state_hash(const uint32_t *v, int n)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++)
        h = (h ^ v[i]) * 1099511628211ull;
    return (uint32_t)(h ^ (h >> 32));
}

struct unc {
    int32_t tok;
    uint16_t off;
};

static int cmp_unc(const void *a, const void *b, void *ctx)
{
    const struct gram_vocab *v = ctx;
    const struct unc *x = a, *y = b;
    const char *sx = v->blob + v->off[x->tok] + x->off, *sy = v->blob + v->off[y->tok] + y->off;
    uint32_t lx = v->len[x->tok] - x->off, ly = v->len[y->tok] - y->off;
    int c = memcmp(sx, sy, lx < ly ? lx : ly);
    if (c)
        return c;
    return lx < ly ? -1 : lx > ly;
}

/*
 * Walks see the same states over and over (inside a string, every
 * character leads back to the same one), so states are interned and their
 * transitions remembered: a byte then costs one hash lookup.  A state is
 * kept without the empty stack; a transition says whether the empty stack
 * was reached (the rule the walk started in ended - for the tables - or
 * the grammar is complete - for a matcher).  State 0 is the dead one.
 */
struct tstate {
    uint32_t off, n; /* ids in dfa.sids */
    uint32_t hash;
};

struct dfa {
    struct pool pool;
    struct ids sids; /* the interned states' ids, back to back */
    struct tstate *ts;
    uint32_t n_ts, cap_ts;
    uint32_t *ts_ht, ts_mask; /* state hash -> index + 1 */
    uint64_t *tr_key;         /* transitions: (state << 8 | byte) + 1 -> */
    uint32_t *tr_val;         /* (next << 1) | reached the empty stack */
    uint32_t tr_n, tr_mask;
    struct ids tmp;
    int max_stacks;
};

static int ts_grow_ht(struct dfa *t)
{
    uint32_t cap = t->ts_mask ? (t->ts_mask + 1) * 2 : 1024;
    uint32_t *h = calloc(cap, sizeof(*h));
    if (!h)
        return -ENOMEM;
    for (uint32_t i = 0; i < t->n_ts; i++) {
        uint32_t k = t->ts[i].hash & (cap - 1);
        while (h[k])
            k = (k + 1) & (cap - 1);
        h[k] = i + 1;
    }
    free(t->ts_ht);
    t->ts_ht = h;
    t->ts_mask = cap - 1;
    return 0;
}

/* The index of the state with these ids (sorted, no 0); interned when new. */
static int64_t dfa_intern(struct dfa *t, const uint32_t *v, int n)
{
    uint32_t h = state_hash(v, n);
    if (2 * (t->n_ts + 1) > t->ts_mask + 1 && ts_grow_ht(t))
        return -ENOMEM;
    uint32_t k = h & t->ts_mask;
    for (uint32_t i; (i = t->ts_ht[k]); k = (k + 1) & t->ts_mask) {
        const struct tstate *x = &t->ts[i - 1];
        if (x->hash == h && x->n == (uint32_t)n &&
            !memcmp(t->sids.v + x->off, v, sizeof(uint32_t) * (size_t)n))
            return i - 1;
    }
    if (t->n_ts == t->cap_ts) {
        uint32_t cap = t->cap_ts ? 2 * t->cap_ts : 1024;
        struct tstate *ns = realloc(t->ts, sizeof(*ns) * cap);
        if (!ns)
            return -ENOMEM;
        t->ts = ns;
        t->cap_ts = cap;
    }
    struct tstate *x = &t->ts[t->n_ts];
    x->off = (uint32_t)t->sids.n;
    x->n = (uint32_t)n;
    x->hash = h;
    for (int i = 0; i < n; i++)
        if (ids_push(&t->sids, v[i]))
            return -ENOMEM;
    t->ts_ht[k] = ++t->n_ts;
    return t->n_ts - 1;
}

static int tr_grow(struct dfa *t)
{
    uint32_t cap = t->tr_mask ? (t->tr_mask + 1) * 2 : 4096;
    uint64_t *k = calloc(cap, sizeof(*k));
    uint32_t *v = malloc(sizeof(*v) * cap);
    if (!k || !v) {
        free(k);
        free(v);
        return -ENOMEM;
    }
    for (uint32_t i = 0; t->tr_key && i <= t->tr_mask; i++) {
        if (!t->tr_key[i])
            continue;
        uint32_t j = node_hash((uint32_t)(t->tr_key[i] >> 32), (uint32_t)t->tr_key[i]) & (cap - 1);
        while (k[j])
            j = (j + 1) & (cap - 1);
        k[j] = t->tr_key[i];
        v[j] = t->tr_val[i];
    }
    free(t->tr_key);
    free(t->tr_val);
    t->tr_key = k;
    t->tr_val = v;
    t->tr_mask = cap - 1;
    return 0;
}

static int dfa_init(struct dfa *t, const struct gram *g)
{
    memset(t, 0, sizeof(*t));
    t->max_stacks = g->lim.max_stacks;
    if (pool_init(&t->pool, g, (uint32_t)g->lim.max_nodes) || tr_grow(t) || ids_push(&t->sids, 0) ||
        ids_push(&t->tmp, 0))
        return -ENOMEM;
    t->tmp.n = 0;
    return dfa_intern(t, NULL, 0) == 0 ? 0 : -ENOMEM; /* the dead state */
}

static void dfa_free(struct dfa *t)
{
    pool_free(&t->pool);
    free(t->sids.v);
    free(t->ts);
    free(t->ts_ht);
    free(t->tr_key);
    free(t->tr_val);
    free(t->tmp.v);
    memset(t, 0, sizeof(*t));
}

/* Interns the stacks in t->tmp (sorted): (index << 1) | whether the empty stack is among them. */
static int64_t dfa_intern_tmp(struct dfa *t)
{
    int ended = t->tmp.n && t->tmp.v[0] == 0;
    int64_t ni = dfa_intern(t, t->tmp.v + ended, t->tmp.n - ended);
    return ni < 0 ? ni : (ni << 1 | ended);
}

/* The state after byte c from state si: (next << 1) | reached the empty stack; < 0 error. */
static int64_t dfa_step(struct dfa *t, uint32_t si, unsigned c)
{
    if (!si)
        return 0;
    uint64_t key = ((uint64_t)si << 8 | c) + 1;
    uint32_t j = node_hash((uint32_t)(key >> 32), (uint32_t)key) & t->tr_mask;
    for (; t->tr_key[j]; j = (j + 1) & t->tr_mask)
        if (t->tr_key[j] == key)
            return t->tr_val[j];
    const struct tstate *x = &t->ts[si];
    int rc = advance(&t->pool, t->sids.v + x->off, (int)x->n, c, &t->tmp, t->max_stacks);
    if (rc)
        return rc;
    int64_t val = dfa_intern_tmp(t);
    if (val < 0)
        return val;
    if (val > UINT32_MAX)
        return -E2BIG;
    if (2 * (t->tr_n + 1) > t->tr_mask + 1 && tr_grow(t))
        return -ENOMEM;
    j = node_hash((uint32_t)(key >> 32), (uint32_t)key) & t->tr_mask;
    while (t->tr_key[j])
        j = (j + 1) & t->tr_mask;
    t->tr_key[j] = key;
    t->tr_val[j] = (uint32_t)val;
    t->tr_n++;
    return val;
}

struct tbuild {
    struct dfa dfa;
    uint32_t *st;   /* per depth: the state */
    uint8_t *ended; /* per depth: a path left the rule after that many bytes */
    uint16_t *kn;   /* per depth: usable exits on the path so far */
    uint16_t *kv;   /* the exits' offsets, by count */
    struct ids acc;
    struct unc *unc;
    size_t n_unc, cap_unc;
};

static int unc_push(struct tbuild *t, int32_t tok, uint16_t off)
{
    if (t->n_unc == t->cap_unc) {
        size_t cap = t->cap_unc ? 2 * t->cap_unc : 1024;
        struct unc *n = realloc(t->unc, sizeof(*n) * cap);
        if (!n)
            return -ENOMEM;
        t->unc = n;
        t->cap_unc = cap;
    }
    t->unc[t->n_unc++] = (struct unc){tok, off};
    return 0;
}

static int table_for(struct gram *g, struct tbuild *t, uint32_t p)
{
    const struct gram_vocab *v = g->v;
    struct gpos *gp = &g->pos[p];
    const uint8_t *follow = g->follow[g->rule_of[p]];
    t->acc.n = 0;
    t->n_unc = 0;
    uint32_t start = node_get(&t->dfa.pool, p, 0);
    if (start == NO_NODE)
        return t->dfa.pool.rc;
    int64_t s0 = dfa_intern(&t->dfa, &start, 1);
    if (s0 < 0)
        return (int)s0;
    t->st[0] = (uint32_t)s0;
    t->ended[0] = 0;
    t->kn[0] = 0;
    for (int i = 0; i < v->n_nodes; i++) {
        int d = v->t_depth[i];
        unsigned c = v->t_byte[i];
        int kn = t->kn[d - 1];
        if (t->ended[d - 1] && gset_has(follow, c))
            t->kv[kn++] = (uint16_t)(d - 1);
        t->kn[d] = (uint16_t)kn;
        int64_t r = dfa_step(&t->dfa, t->st[d - 1], c);
        if (r < 0)
            return (int)r;
        t->st[d] = (uint32_t)(r >> 1);
        t->ended[d] = (uint8_t)(r & 1);
        int live = t->st[d] != 0;
        for (uint32_t k = v->t_tok[i]; k < v->t_tok[i + 1]; k++) {
            int32_t tok = v->sorted[k];
            if (live || t->ended[d]) {
                if (ids_push(&t->acc, (uint32_t)tok))
                    return -ENOMEM;
            } else
                for (int j = 0; j < kn; j++)
                    if (unc_push(t, tok, t->kv[j]))
                        return -ENOMEM;
        }
        if (!live && !t->ended[d] && kn == 0)
            i = (int)v->t_end[i] - 1; /* nothing below can be accepted */
    }
    /* accepted tokens: a list, or a bitmap when that is smaller */
    int nw = (v->n_vocab + 31) / 32;
    gp->n_acc = (uint32_t)t->acc.n;
    if ((size_t)t->acc.n * 32 > (size_t)v->n_vocab) {
        gp->acc_bits = calloc((size_t)nw, sizeof(uint32_t));
        if (!gp->acc_bits)
            return -ENOMEM;
        for (int k = 0; k < t->acc.n; k++)
            gp->acc_bits[t->acc.v[k] >> 5] |= 1u << (t->acc.v[k] & 31);
        g->st.table_bytes += (size_t)nw * 4;
    } else if (t->acc.n) {
        gp->acc = malloc(sizeof(int32_t) * (size_t)t->acc.n);
        if (!gp->acc)
            return -ENOMEM;
        memcpy(gp->acc, t->acc.v, sizeof(int32_t) * (size_t)t->acc.n);
        g->st.table_bytes += (size_t)t->acc.n * 4;
    }
    if (t->n_unc) {
        qsort_r(t->unc, t->n_unc, sizeof(*t->unc), cmp_unc, (void *)v);
        size_t n = t->n_unc;
        gp->unc_tok = malloc(sizeof(int32_t) * n);
        gp->unc_off = malloc(sizeof(uint16_t) * n);
        gp->unc_lcp = malloc(sizeof(uint16_t) * n);
        if (!gp->unc_tok || !gp->unc_off || !gp->unc_lcp)
            return -ENOMEM;
        for (size_t k = 0; k < n; k++) {
            gp->unc_tok[k] = t->unc[k].tok;
            gp->unc_off[k] = t->unc[k].off;
            uint16_t l = 0;
            if (k) {
                const struct unc *a = &t->unc[k - 1], *b = &t->unc[k];
                const char *sa = v->blob + v->off[a->tok] + a->off;
                const char *sb = v->blob + v->off[b->tok] + b->off;
                uint32_t la = v->len[a->tok] - a->off, lb = v->len[b->tok] - b->off;
                while (l < la && l < lb && sa[l] == sb[l])
                    l++;
            }
            gp->unc_lcp[k] = l;
        }
        gp->n_unc = (uint32_t)n;
        g->st.uncertain += (long)n;
        g->st.table_bytes += n * 8;
    }
    return 0;
}

int gram_tables_build(struct gram *g, double t0, char *err, size_t errlen)
{
    const struct gram_vocab *v = g->v;
    struct tbuild t = {0};
    int D = v->max_len + 1, rc = 0;
    g->pos = calloc((size_t)g->n_els, sizeof(*g->pos));
    t.st = calloc((size_t)D, sizeof(*t.st));
    t.ended = calloc((size_t)D, 1);
    t.kn = calloc((size_t)D, sizeof(uint16_t));
    t.kv = calloc((size_t)D, sizeof(uint16_t));
    /*
     * A token spans at most max_len bytes, so a walk from a position of a
     * repetition chain (g->down) sees no more than max_len + 1 levels below
     * it: positions with more than that below them (depth > T) have the
     * tables of the same position T levels above the chain's bottom.
     */
    int T = v->max_len + 2;
    int32_t *depth = malloc(sizeof(*depth) * (size_t)g->n_rules);
    int32_t *twin = malloc(sizeof(*twin) * (size_t)g->n_rules);
    if (!g->pos || !t.st || !t.ended || !t.kn || !t.kv || !depth || !twin || dfa_init(&t.dfa, g))
        rc = -ENOMEM;
    for (int r = 0; !rc && r < g->n_rules; r++) {
        int d = g->down[r]; /* d < r */
        depth[r] = d >= 0 ? depth[d] + 1 : 0;
        twin[r] = depth[r] <= T ? r : depth[d] == T ? d : twin[d];
        if (twin[r] != r && memcmp(g->follow[r], g->follow[twin[r]], 32))
            twin[r] = r;
    }
    for (int p = 0; !rc && p < g->n_els; p++) {
        if (g->els[p].type != GE_BYTES)
            continue;
        uint32_t r = g->rule_of[p];
        if (twin[r] != (int32_t)r) {
            uint32_t q = (uint32_t)p - g->alts[g->rule_alt[r]] + g->alts[g->rule_alt[twin[r]]];
            g->pos[p] = g->pos[q];
            g->pos[p].shared = 1;
            continue;
        }
        rc = table_for(g, &t, (uint32_t)p);
        if (!rc && util_now_s() - t0 > g->lim.max_compile_s)
            rc = -ETIMEDOUT;
    }
    if (rc == -ENOMEM)
        snprintf(err, errlen, "out of memory for the grammar's token tables");
    else if (rc == -E2BIG)
        snprintf(err, errlen,
                 "the grammar is too ambiguous: over %d parse stacks or %d stack nodes",
                 g->lim.max_stacks, g->lim.max_nodes);
    else if (rc == -ETIMEDOUT)
        snprintf(err, errlen, "the grammar took more than %.0f s to compile (token tables)",
                 g->lim.max_compile_s);
    free(depth);
    free(twin);
    free(t.st);
    free(t.ended);
    free(t.kn);
    free(t.kv);
    free(t.acc.v);
    free(t.unc);
    dfa_free(&t.dfa);
    return rc;
}

/* ---- the matcher ---- */

/*
 * What the matchers of one grammar share: the interned states and their
 * transitions, and the masks computed for states (most of a JSON document's
 * states recur across documents).  Used from one thread (the engine's);
 * reference-counted, because when it grows past its budget the grammar
 * starts a fresh one for new matchers while running ones keep theirs.
 */
struct rt_mask {
    uint32_t state; /* dfa state with the complete flag, + 1; 0: free */
    int any;
    uint64_t used;
    uint32_t *mask;
};

struct gram_rt {
    atomic_int refs;
    struct dfa dfa;
    uint32_t start; /* (state << 1) | complete */
    struct rt_mask *masks;
    int n_masks, cap_masks;
    uint32_t *slot_of; /* per (state << 1 | complete): mask slot + 1 */
    uint32_t n_slot_of;
    uint64_t tick;
};

static void rt_unref(struct gram_rt *rt)
{
    if (!rt || atomic_fetch_sub(&rt->refs, 1) != 1)
        return;
    for (int i = 0; i < rt->n_masks; i++)
        free(rt->masks[i].mask);
    free(rt->masks);
    free(rt->slot_of);
    dfa_free(&rt->dfa);
    free(rt);
}

void gram_rt_release(struct gram *g)
{
    rt_unref(g->rt);
    g->rt = NULL;
}

static struct gram_rt *rt_create(struct gram *g)
{
    struct gram_rt *rt = calloc(1, sizeof(*rt));
    if (!rt)
        return NULL;
    atomic_init(&rt->refs, 1);
    int rc = dfa_init(&rt->dfa, g);
    if (!rc) { /* the start: the root rule's alternatives expanded */
        struct pool *p = &rt->dfa.pool;
        begin(p);
        rt->dfa.tmp.n = 0;
        uint32_t r = g->root;
        for (uint32_t a = g->rule_alt[r]; !rc && a < g->rule_alt[r + 1]; a++)
            rc = expand(p, g->alts[a], 0, &rt->dfa.tmp);
        sort_ids(rt->dfa.tmp.v, rt->dfa.tmp.n);
        int64_t st = rc ? rc : dfa_intern_tmp(&rt->dfa);
        if (st < 0 || st > UINT32_MAX)
            rc = -1;
        else
            rt->start = (uint32_t)st;
    }
    if (g->v && !rc) {
        size_t bytes = sizeof(uint32_t) * (size_t)((g->v->n_vocab + 31) / 32);
        rt->cap_masks = (int)(GRAM_MASK_BUDGET / bytes);
        if (rt->cap_masks < 16)
            rt->cap_masks = 16;
        rt->masks = calloc((size_t)rt->cap_masks, sizeof(*rt->masks));
        if (!rt->masks)
            rc = -1;
    }
    if (rc) {
        rt_unref(rt);
        return NULL;
    }
    return rt;
}

struct gram_matcher {
    struct gram *g;
    struct gram_rt *rt;
    uint32_t cur;   /* (state << 1) | complete */
    uint32_t *walk; /* per depth: the walk's state */
    struct ids tops;
    uint64_t hits, misses;
};

int gram_matcher_create(struct gram *g, struct gram_matcher **out)
{
    *out = NULL;
    /* a runtime that has grown past its budget serves the matchers it has, not new ones */
    if (g->rt && g->rt->dfa.pool.n > (uint32_t)g->lim.max_nodes / 2)
        gram_rt_release(g);
    if (!g->rt && !(g->rt = rt_create(g)))
        return -ENOMEM;
    struct gram_matcher *m = calloc(1, sizeof(*m));
    if (m && g->v)
        m->walk = calloc((size_t)g->v->max_len + 2, sizeof(*m->walk));
    if (!m || (g->v && !m->walk)) {
        free(m);
        return -ENOMEM;
    }
    m->g = gram_ref(g);
    m->rt = g->rt;
    atomic_fetch_add(&m->rt->refs, 1);
    m->cur = m->rt->start;
    *out = m;
    return 0;
}

void gram_matcher_destroy(struct gram_matcher *m)
{
    if (!m)
        return;
    free(m->walk);
    free(m->tops.v);
    rt_unref(m->rt);
    gram_unref(m->g);
    free(m);
}

void gram_matcher_reset(struct gram_matcher *m)
{
    m->cur = m->rt->start;
}

int gram_feed(struct gram_matcher *m, const char *bytes, size_t n)
{
    uint32_t st = m->cur;
    for (size_t i = 0; i < n; i++) {
        int64_t r = dfa_step(&m->rt->dfa, st >> 1, (unsigned char)bytes[i]);
        if (r < 0)
            return (int)r;
        if (!r)
            return -EINVAL; /* dead: m->cur is unchanged */
        st = (uint32_t)r;
    }
    m->cur = st;
    return 0;
}

int gram_accept_token(struct gram_matcher *m, int32_t token)
{
    const struct gram_vocab *v = m->g->v;
    if (!v || token < 0 || token >= v->n_vocab || !v->len[token])
        return -EINVAL;
    return gram_feed(m, v->blob + v->off[token], v->len[token]);
}

int gram_can_end(const struct gram_matcher *m)
{
    return m->cur & 1;
}

int gram_done(const struct gram_matcher *m)
{
    return m->cur == 1;
}

void gram_matcher_counts(const struct gram_matcher *m, uint64_t *hits, uint64_t *misses)
{
    *hits = m->hits;
    *misses = m->misses;
}

/* The uncertain entries of top id's position that the stack below accepts, into mask. */
static int walk_uncertain(struct gram_matcher *m, uint32_t id, uint32_t *mask, int *any)
{
    const struct gram *g = m->g;
    const struct gram_vocab *v = g->v;
    struct dfa *d = &m->rt->dfa;
    struct pool *p = &d->pool;
    const struct gpos *gp = &g->pos[p->pos[id]];
    uint32_t q = p->par[id];
    if (!q || !gp->n_unc)
        return 0; /* the grammar ends with this rule: nothing may follow */
    /* the state once the rule has ended */
    begin(p);
    d->tmp.n = 0;
    if (expand(p, p->pos[q], p->par[q], &d->tmp))
        return p->rc;
    sort_ids(d->tmp.v, d->tmp.n);
    int64_t b = dfa_intern_tmp(d);
    if (b < 0)
        return (int)b;
    uint32_t *w = m->walk;
    w[0] = (uint32_t)b;
    int dead = 1 << 30;
    for (uint32_t k = 0; k < gp->n_unc; k++) {
        int l = gp->unc_lcp[k];
        if (l >= dead)
            continue;
        dead = 1 << 30;
        int32_t tok = gp->unc_tok[k];
        const unsigned char *s = (const unsigned char *)v->blob + v->off[tok] + gp->unc_off[k];
        int len = (int)(v->len[tok] - gp->unc_off[k]);
        int j = l;
        for (; j < len; j++) {
            int64_t r = dfa_step(d, w[j] >> 1, s[j]);
            if (r < 0)
                return (int)r;
            if (!r) {
                dead = j + 1;
                break;
            }
            w[j + 1] = (uint32_t)r;
        }
        if (j == len) {
            mask[tok >> 5] |= 1u << (tok & 31);
            *any = 1;
        }
    }
    return 0;
}

static int compute_mask(struct gram_matcher *m, uint32_t *mask)
{
    const struct gram *g = m->g;
    const struct gram_vocab *v = g->v;
    struct dfa *d = &m->rt->dfa;
    int nw = (v->n_vocab + 31) / 32, any = 0;
    memset(mask, 0, sizeof(uint32_t) * (size_t)nw);
    /* the tops (the walks below intern states, which may move the id array) */
    const struct tstate *x = &d->ts[m->cur >> 1];
    m->tops.n = 0;
    for (uint32_t i = 0; i < x->n; i++)
        if (ids_push(&m->tops, d->sids.v[x->off + i]))
            return -ENOMEM;
    for (int i = 0; i < m->tops.n; i++) {
        const struct gpos *gp = &g->pos[d->pool.pos[m->tops.v[i]]];
        any |= gp->n_acc > 0;
        if (gp->acc_bits)
            for (int w = 0; w < nw; w++)
                mask[w] |= gp->acc_bits[w];
        else
            for (uint32_t k = 0; k < gp->n_acc; k++)
                mask[gp->acc[k] >> 5] |= 1u << (gp->acc[k] & 31);
    }
    for (int i = 0; i < m->tops.n; i++) {
        int rc = walk_uncertain(m, m->tops.v[i], mask, &any);
        if (rc)
            return rc;
    }
    return any;
}

int gram_mask(struct gram_matcher *m, uint32_t *mask)
{
    const struct gram *g = m->g;
    struct gram_rt *rt = m->rt;
    if (!g->v)
        return -EINVAL;
    size_t bytes = sizeof(uint32_t) * (size_t)((g->v->n_vocab + 31) / 32);
    uint32_t key = m->cur;
    rt->tick++;
    if (key < rt->n_slot_of && rt->slot_of[key]) {
        struct rt_mask *c = &rt->masks[rt->slot_of[key] - 1];
        c->used = rt->tick;
        m->hits++;
        memcpy(mask, c->mask, bytes);
        return c->any;
    }
    m->misses++;
    int any = compute_mask(m, mask);
    if (any < 0)
        return any;
    /* remember it: a free slot, or the least recently used one */
    int slot;
    if (rt->n_masks < rt->cap_masks) {
        slot = rt->n_masks;
        rt->masks[slot].mask = malloc(bytes);
        if (!rt->masks[slot].mask)
            return any;
        rt->n_masks++;
    } else {
        slot = 0;
        for (int i = 1; i < rt->n_masks; i++)
            if (rt->masks[i].used < rt->masks[slot].used)
                slot = i;
        if (rt->masks[slot].state)
            rt->slot_of[rt->masks[slot].state - 1] = 0;
    }
    if (key >= rt->n_slot_of) {
        uint32_t n = rt->n_slot_of ? rt->n_slot_of : 1024;
        while (n <= key)
            n *= 2;
        uint32_t *so = realloc(rt->slot_of, sizeof(*so) * n);
        if (!so) {
            rt->masks[slot].state = 0;
            return any;
        }
        memset(so + rt->n_slot_of, 0, sizeof(*so) * (n - rt->n_slot_of));
        rt->slot_of = so;
        rt->n_slot_of = n;
    }
    struct rt_mask *c = &rt->masks[slot];
    c->state = key + 1;
    c->used = rt->tick;
    c->any = any;
    memcpy(c->mask, mask, bytes);
    rt->slot_of[key] = (uint32_t)slot + 1;
    return any;
}

/* debugging aid for the bench: the current state's size and its uncertain entries */
void gram_debug_state(const struct gram_matcher *m, int *n_stacks, long *n_unc, long *n_accbits)
{
    const struct dfa *d = &m->rt->dfa;
    const struct tstate *x = &d->ts[m->cur >> 1];
    *n_stacks = (int)x->n;
    *n_unc = 0;
    *n_accbits = 0;
    for (uint32_t i = 0; i < x->n; i++) {
        uint32_t id = d->sids.v[x->off + i];
        const struct gpos *gp = &m->g->pos[d->pool.pos[id]];
        *n_unc += d->pool.par[id] ? gp->n_unc : 0;
        *n_accbits += gp->acc_bits != NULL;
    }
}

/*
 * grammar/build.c - the expression builder, UTF-8 ranges, and lowering to
 * flat rules with the analyses the matcher needs (nullable rules, the
 * bytes that may follow each rule, left recursion refused by name).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/internal.h"
#include "util/clock.h"

/* ---- arena ---- */

struct gb_chunk {
    struct gb_chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char mem[];
};

static void *arena_alloc(struct gb *b, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    struct gb_chunk *c = b->arena;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        c = malloc(sizeof(*c) + cap);
        if (!c) {
            gb_fail(b, -ENOMEM, "out of memory compiling the grammar");
            return NULL;
        }
        c->next = b->arena;
        c->used = 0;
        c->cap = cap;
        b->arena = c;
    }
    void *p = c->mem + c->used;
    c->used += n;
    return p;
}

void gb_init(struct gb *b, const struct gram_limits *lim, char *err, size_t errlen)
{
    memset(b, 0, sizeof(*b));
    b->lim = lim;
    b->err = err;
    b->errlen = errlen;
    b->t0 = util_now_s();
    if (err && errlen)
        err[0] = 0;
}

void gb_free(struct gb *b)
{
    while (b->arena) {
        struct gb_chunk *n = b->arena->next;
        free(b->arena);
        b->arena = n;
    }
    for (int i = 0; i < b->n_rules; i++)
        free(b->names[i]);
    free(b->names);
    free(b->exprs);
    free(b->sets);
    free(b->set_hash);
    free(b->down);
    memset(b, 0, sizeof(*b));
}

int gb_fail(struct gb *b, int rc, const char *fmt, ...)
{
    if (b->rc)
        return b->rc;
    b->rc = rc;
    if (b->err && b->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(b->err, b->errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

int gb_check_time(struct gb *b)
{
    if (!b->rc && util_now_s() - b->t0 > b->lim->max_compile_s)
        gb_fail(b, -ETIMEDOUT, "the grammar took more than %.0f s to compile",
                b->lim->max_compile_s);
    return b->rc;
}

static int add_rule(struct gb *b, char *name)
{
    if (!name) {
        gb_fail(b, -ENOMEM, "out of memory compiling the grammar");
        return -1;
    }
    if (b->n_rules >= b->lim->max_positions) {
        free(name);
        gb_fail(b, -E2BIG, "the grammar has more than %d rules", b->lim->max_positions);
        return -1;
    }
    if (b->n_rules == b->cap_rules) {
        int cap = b->cap_rules ? 2 * b->cap_rules : 64;
        char **nn = realloc(b->names, sizeof(*nn) * (size_t)cap);
        if (nn)
            b->names = nn;
        struct gx **ne = nn ? realloc(b->exprs, sizeof(*ne) * (size_t)cap) : NULL;
        if (!ne) {
            free(name);
            gb_fail(b, -ENOMEM, "out of memory compiling the grammar");
            return -1;
        }
        b->exprs = ne;
        b->cap_rules = cap;
    }
    b->names[b->n_rules] = name;
    b->exprs[b->n_rules] = NULL;
    return b->n_rules++;
}

int gb_rule(struct gb *b, const char *name, size_t n)
{
    if (b->rc)
        return -1;
    /* linear: front ends look names up while parsing, rule counts are small there */
    for (int i = 0; i < b->n_rules; i++)
        if (strlen(b->names[i]) == n && !memcmp(b->names[i], name, n))
            return i;
    return add_rule(b, strndup(name, n));
}

int gb_rule_new(struct gb *b, const char *prefix)
{
    if (b->rc)
        return -1;
    char tmp[96];
    snprintf(tmp, sizeof(tmp), "%.80s-%d", prefix, b->n_rules);
    return add_rule(b, strdup(tmp));
}

void gb_define(struct gb *b, int rule, struct gx *x)
{
    if (!b->rc && rule >= 0 && rule < b->n_rules)
        b->exprs[rule] = x;
}

static struct gx k_dummy; /* returned after an error: never lowered */

static struct gx *gx_new(struct gb *b, int kind)
{
    if (b->rc)
        return &k_dummy;
    if (++b->n_exprs > 8 * b->lim->max_positions) {
        gb_fail(b, -E2BIG, "the grammar has more than %d elements", b->lim->max_positions);
        return &k_dummy;
    }
    struct gx *x = arena_alloc(b, sizeof(*x));
    if (!x)
        return &k_dummy;
    memset(x, 0, sizeof(*x));
    x->kind = (uint8_t)kind;
    return x;
}

struct gx *gx_empty(struct gb *b)
{
    return gx_new(b, GX_EMPTY);
}

static uint32_t set_hash(const uint8_t *s)
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 32; i++)
        h = (h ^ s[i]) * 16777619u;
    return h;
}

/* The index of set s in b->sets, added when new; -1 on error. */
static int set_index(struct gb *b, const uint8_t s[32])
{
    if (b->rc)
        return -1;
    if (2 * (b->n_sets + 1) > b->set_hash_cap) {
        int cap = b->set_hash_cap ? 2 * b->set_hash_cap : 256;
        uint32_t *h = calloc((size_t)cap, sizeof(*h));
        if (!h) {
            gb_fail(b, -ENOMEM, "out of memory compiling the grammar");
            return -1;
        }
        for (int i = 0; i < b->n_sets; i++) {
            uint32_t k = set_hash(b->sets[i]) & (uint32_t)(cap - 1);
            while (h[k])
                k = (k + 1) & (uint32_t)(cap - 1);
            h[k] = (uint32_t)i + 1;
        }
        free(b->set_hash);
        b->set_hash = h;
        b->set_hash_cap = cap;
    }
    uint32_t k = set_hash(s) & (uint32_t)(b->set_hash_cap - 1);
    while (b->set_hash[k]) {
        if (!memcmp(b->sets[b->set_hash[k] - 1], s, 32))
            return (int)b->set_hash[k] - 1;
        k = (k + 1) & (uint32_t)(b->set_hash_cap - 1);
    }
    if (b->n_sets == b->cap_sets) {
        int cap = b->cap_sets ? 2 * b->cap_sets : 64;
        uint8_t(*ns)[32] = realloc(b->sets, 32 * (size_t)cap);
        if (!ns) {
            gb_fail(b, -ENOMEM, "out of memory compiling the grammar");
            return -1;
        }
        b->sets = ns;
        b->cap_sets = cap;
    }
    memcpy(b->sets[b->n_sets], s, 32);
    b->set_hash[k] = (uint32_t)b->n_sets + 1;
    return b->n_sets++;
}

struct gx *gx_set(struct gb *b, const uint8_t set[32])
{
    int i = set_index(b, set);
    struct gx *x = gx_new(b, GX_BYTES);
    if (i >= 0 && x != &k_dummy)
        x->arg = (uint32_t)i;
    return x;
}

struct gx *gx_range(struct gb *b, uint8_t lo, uint8_t hi)
{
    uint8_t s[32] = {0};
    for (unsigned c = lo; c <= hi; c++)
        gset_add(s, c);
    return gx_set(b, s);
}

struct gx *gx_byte(struct gb *b, uint8_t c)
{
    return gx_range(b, c, c);
}

struct gx *gx_seq(struct gb *b)
{
    return gx_new(b, GX_SEQ);
}

struct gx *gx_alt(struct gb *b)
{
    return gx_new(b, GX_ALT);
}

struct gx *gx_add(struct gb *b, struct gx *x, struct gx *kid)
{
    if (b->rc || x == &k_dummy)
        return x;
    /* flatten a sequence into a sequence and an alternative into an alternative */
    if (kid->kind == x->kind && (x->kind == GX_SEQ || x->kind == GX_ALT)) {
        for (int i = 0; i < kid->n; i++)
            gx_add(b, x, kid->kids[i]);
        return x;
    }
    if (x->kind == GX_SEQ && kid->kind == GX_EMPTY)
        return x;
    if (x->n == x->cap) {
        int cap = x->cap ? 2 * x->cap : 4;
        struct gx **k = arena_alloc(b, sizeof(*k) * (size_t)cap);
        if (!k)
            return x;
        if (x->n)
            memcpy(k, x->kids, sizeof(*k) * (size_t)x->n);
        x->kids = k;
        x->cap = cap;
    }
    x->kids[x->n++] = kid;
    return x;
}

struct gx *gx_seq2(struct gb *b, struct gx *a, struct gx *c)
{
    return gx_add(b, gx_add(b, gx_seq(b), a), c);
}

struct gx *gx_alt2(struct gb *b, struct gx *a, struct gx *c)
{
    return gx_add(b, gx_add(b, gx_alt(b), a), c);
}

struct gx *gx_lit(struct gb *b, const char *s, size_t n)
{
    struct gx *x = gx_seq(b);
    for (size_t i = 0; i < n; i++)
        gx_add(b, x, gx_byte(b, (uint8_t)s[i]));
    return x;
}

struct gx *gx_str(struct gb *b, const char *s)
{
    return gx_lit(b, s, strlen(s));
}

struct gx *gx_ref(struct gb *b, int rule)
{
    struct gx *x = gx_new(b, GX_REF);
    if (rule < 0 && !b->rc)
        gb_fail(b, -EINVAL, "internal: a reference to no rule");
    if (x != &k_dummy && rule >= 0)
        x->arg = (uint32_t)rule;
    return x;
}

struct gx *gx_rep(struct gb *b, struct gx *x, int min, int max)
{
    if (max >= 0 && max < min)
        gb_fail(b, -EINVAL, "a repetition {%d,%d} with its maximum below its minimum", min, max);
    int lim = b->lim->max_positions;
    if (min > lim || max > lim)
        gb_fail(b, -E2BIG, "a repetition bound over %d", lim);
    if (max == 1 && min == 1)
        return x;
    if (x->kind == GX_EMPTY)
        return x;
    /* (a*)* (a+)* (a?)+ ... : one unbounded repetition (else the rule would be left-recursive) */
    if (max < 0 && x->kind == GX_REP && x->min <= 1)
        return gx_rep(b, x->kids[0], min > 0 && x->min > 0 ? 1 : 0, -1);
    struct gx *r = gx_new(b, GX_REP);
    if (r == &k_dummy) /* shared by every compile, on any thread: never written */
        return r;
    r->min = min;
    r->max = max;
    gx_add(b, r, x);
    return r;
}

struct gx *gx_opt(struct gb *b, struct gx *x)
{
    return gx_rep(b, x, 0, 1);
}

/* ---- UTF-8 ---- */

int gram_utf8_put(uint32_t c, char *o)
{
    if (c < 0x80) {
        o[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (char)(0xC0 | (c >> 6));
        o[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (char)(0xE0 | (c >> 12));
        o[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (c >> 18));
    o[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

int gram_utf8_get(const char *p, size_t n, uint32_t *out)
{
    const unsigned char *s = (const unsigned char *)p;
    if (!n)
        return 0;
    if (s[0] < 0x80) {
        *out = s[0];
        return 1;
    }
    int len = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC0 ? 2 : 0;
    if (!len || (size_t)len > n || s[0] > 0xF4)
        return 0;
    uint32_t c = s[0] & (0x7F >> len);
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < min[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *out = c;
    return len;
}

/* Adds the byte-range sequences spelling lo..hi (one UTF-8 length, no surrogates) to alt. */
static void utf8_split(struct gb *b, struct gx *alt, uint8_t *ascii, uint32_t lo, uint32_t hi)
{
    static const uint32_t bound[3] = {0x7F, 0x7FF, 0xFFFF};
    if (lo > hi || b->rc)
        return;
    for (int i = 0; i < 3; i++)
        if (lo <= bound[i] && hi > bound[i]) {
            utf8_split(b, alt, ascii, lo, bound[i]);
            utf8_split(b, alt, ascii, bound[i] + 1, hi);
            return;
        }
    if (hi <= 0x7F) {
        for (uint32_t c = lo; c <= hi; c++)
            gset_add(ascii, c);
        return;
    }
    char a[4], z[4];
    int n = gram_utf8_put(lo, a);
    for (int i = 1; i < n; i++) {
        uint32_t m = (1u << (6 * i)) - 1;
        if ((lo & ~m) != (hi & ~m)) {
            if (lo & m) {
                utf8_split(b, alt, ascii, lo, lo | m);
                utf8_split(b, alt, ascii, (lo | m) + 1, hi);
                return;
            }
            if ((hi & m) != m) {
                utf8_split(b, alt, ascii, lo, (hi & ~m) - 1);
                utf8_split(b, alt, ascii, hi & ~m, hi);
                return;
            }
        }
    }
    gram_utf8_put(hi, z);
    struct gx *seq = gx_seq(b);
    for (int i = 0; i < n; i++)
        gx_add(b, seq, gx_range(b, (uint8_t)a[i], (uint8_t)z[i]));
    gx_add(b, alt, seq);
}

static int cmp_range(const void *a, const void *c)
{
    const struct gcp_range *x = a, *y = c;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

struct gx *gx_cps(struct gb *b, const struct gcp_range *r, int n, int negate)
{
    struct gx *alt = gx_alt(b);
    if (b->rc)
        return alt;
    struct gcp_range *s = malloc(sizeof(*s) * (size_t)(n + 2));
    if (!s) {
        gb_fail(b, -ENOMEM, "out of memory compiling the grammar");
        return alt;
    }
    memcpy(s, r, sizeof(*s) * (size_t)n);
    qsort(s, (size_t)n, sizeof(*s), cmp_range);
    int m = 0; /* merged */
    for (int i = 0; i < n; i++) {
        if (s[i].lo > s[i].hi)
            continue;
        if (m && s[i].lo <= s[m - 1].hi + 1) {
            if (s[i].hi > s[m - 1].hi)
                s[m - 1].hi = s[i].hi;
        } else
            s[m++] = s[i];
    }
    if (negate) { /* the gaps between the merged ranges */
        struct gcp_range *g = malloc(sizeof(*g) * (size_t)(m + 1));
        if (!g) {
            free(s);
            gb_fail(b, -ENOMEM, "out of memory compiling the grammar");
            return alt;
        }
        int k = 0;
        uint32_t next = 0;
        for (int i = 0; i < m; i++) {
            if (s[i].lo > next)
                g[k++] = (struct gcp_range){next, s[i].lo - 1};
            next = s[i].hi + 1;
        }
        if (next <= 0x10FFFF)
            g[k++] = (struct gcp_range){next, 0x10FFFF};
        free(s);
        s = g;
        m = k;
    }
    uint8_t ascii[32] = {0};
    for (int i = 0; i < m; i++) {
        uint32_t lo = s[i].lo, hi = s[i].hi > 0x10FFFF ? 0x10FFFF : s[i].hi;
        /* without the surrogates */
        if (lo < 0xD800 && hi >= 0xD800) {
            utf8_split(b, alt, ascii, lo, 0xD7FF);
            lo = 0xE000;
        } else if (lo >= 0xD800 && lo <= 0xDFFF)
            lo = 0xE000;
        if (lo <= hi)
            utf8_split(b, alt, ascii, lo, hi);
    }
    free(s);
    static const uint8_t none[32];
    if (memcmp(ascii, none, 32)) {
        /* the one-byte characters first, as one set */
        struct gx *one = gx_set(b, ascii);
        if (!b->rc) {
            gx_add(b, alt, one);
            memmove(alt->kids + 1, alt->kids, sizeof(*alt->kids) * (size_t)(alt->n - 1));
            alt->kids[0] = one;
        }
    }
    return alt;
}

/* ---- lowering ---- */

struct lower {
    struct gb *b;
    struct gram *g;
    int cap_els, cap_alts;
    int n_alts;
    int cur; /* the rule being lowered */
};

static int push_el(struct lower *L, uint32_t type, uint32_t arg)
{
    struct gram *g = L->g;
    if (L->b->rc)
        return L->b->rc;
    if (g->n_els >= L->b->lim->max_positions)
        return gb_fail(L->b, -E2BIG, "the grammar has more than %d elements",
                       L->b->lim->max_positions);
    if (g->n_els == L->cap_els) {
        int cap = L->cap_els ? 2 * L->cap_els : 256;
        struct gel *n = realloc(g->els, sizeof(*n) * (size_t)cap);
        if (!n)
            return gb_fail(L->b, -ENOMEM, "out of memory compiling the grammar");
        g->els = n;
        L->cap_els = cap;
    }
    g->els[g->n_els++] = (struct gel){type, arg};
    return 0;
}

static int push_alt(struct lower *L)
{
    struct gram *g = L->g;
    if (L->n_alts == L->cap_alts) {
        int cap = L->cap_alts ? 2 * L->cap_alts : 256;
        uint32_t *n = realloc(g->alts, sizeof(*n) * (size_t)cap);
        if (!n)
            return gb_fail(L->b, -ENOMEM, "out of memory compiling the grammar");
        g->alts = n;
        L->cap_alts = cap;
    }
    g->alts[L->n_alts++] = (uint32_t)g->n_els;
    return 0;
}

/*
 * x repeated steps times as a chain of rules R_1 .. R_steps, each of x's
 * alternatives followed by a reference to the next rule down (R_1: to
 * tail, or nothing when tail is -1), plus the empty alternative when
 * optional; loop: one rule R = x1 R | x2 R | ... instead.  Returns the top
 * rule.  A chain keeps each repetition's continuation inside the rule
 * being matched, so a token spanning several repetitions is decided by
 * the position's own table (a rule per repetition holding only x would
 * end after one, leaving nearly every token to the slow path).
 */
/* The fewest bytes x matches, counting a rule reference as none. */
static long gx_min_bytes(const struct gx *x)
{
    long n = 0, m = -1;
    switch (x->kind) {
    case GX_BYTES:
        return 1;
    case GX_SEQ:
        for (int i = 0; i < x->n; i++)
            n += gx_min_bytes(x->kids[i]);
        return n;
    case GX_ALT:
        for (int i = 0; i < x->n; i++) {
            long k = gx_min_bytes(x->kids[i]);
            m = m < 0 || k < m ? k : m;
        }
        return m < 0 ? 0 : m;
    case GX_REP:
        return x->min > 0 ? x->min * gx_min_bytes(x->kids[0]) : 0;
    default:
        return 0;
    }
}

/* Records that rule r's next level down is rule d (for gram->down). */
static void set_down(struct gb *b, int r, int d)
{
    if (b->rc || r < 0)
        return;
    if (r >= b->cap_down) {
        int cap = b->cap_down ? b->cap_down : 256;
        while (cap <= r)
            cap *= 2;
        int *n = realloc(b->down, sizeof(*n) * (size_t)cap);
        if (!n) {
            gb_fail(b, -ENOMEM, "out of memory compiling the grammar");
            return;
        }
        memset(n + b->cap_down, 0, sizeof(*n) * (size_t)(cap - b->cap_down));
        b->down = n;
        b->cap_down = cap;
    }
    b->down[r] = d + 1;
}

static int chain_rule(struct lower *L, struct gx *x, int steps, int loop, int tail, int optional)
{
    struct gb *b = L->b;
    int prev = tail, r = -1;
    /* links that each take a byte at least can share their tables (gram->down) */
    int linked = !loop && gx_min_bytes(x) >= 1;
    for (int i = 0; i < steps && !b->rc; i++) {
        r = gb_rule_new(b, b->names[L->cur]);
        int next = loop ? r : prev;
        struct gx *alt = gx_alt(b);
        int n = x->kind == GX_ALT ? x->n : 1;
        for (int j = 0; j < n; j++) {
            struct gx *xi = x->kind == GX_ALT ? x->kids[j] : x;
            gx_add(b, alt, gx_seq2(b, xi, next >= 0 ? gx_ref(b, next) : gx_empty(b)));
        }
        if (optional)
            gx_add(b, alt, gx_empty(b));
        gb_define(b, r, alt);
        if (linked && i > 0)
            set_down(b, r, prev);
        prev = r;
        if ((i & 63) == 63 && gb_check_time(b))
            break;
    }
    return r;
}

/* The repetition x{0,k} (k -1: unbounded) as a rule: x1 R | x2 R | ... | empty. */
static int rep_rule(struct lower *L, struct gx *x, int k)
{
    return chain_rule(L, x, k < 0 ? 1 : k, k < 0, -1, 1);
}

static void emit(struct lower *L, struct gx *x)
{
    struct gb *b = L->b;
    if (b->rc)
        return;
    switch (x->kind) {
    case GX_EMPTY:
        return;
    case GX_BYTES:
        push_el(L, GE_BYTES, x->arg);
        return;
    case GX_REF:
        push_el(L, GE_REF, x->arg);
        return;
    case GX_SEQ:
        for (int i = 0; i < x->n; i++)
            emit(L, x->kids[i]);
        return;
    case GX_ALT:
        if (x->n == 1) {
            emit(L, x->kids[0]);
            return;
        } else {
            int r = gb_rule_new(b, b->names[L->cur]);
            gb_define(b, r, x);
            if (r >= 0)
                push_el(L, GE_REF, (uint32_t)r);
        }
        return;
    case GX_REP: {
        struct gx *k = x->kids[0];
        if (k->kind == GX_ALT && k->n > 1 && x->min > 0) {
            /* x{n,m} of alternatives: n mandatory links, then the optional ones */
            int tail = x->max == x->min ? -1 : rep_rule(L, k, x->max < 0 ? -1 : x->max - x->min);
            int r = chain_rule(L, k, x->min, 0, tail, 0);
            if (r >= 0)
                push_el(L, GE_REF, (uint32_t)r);
            return;
        }
        for (int i = 0; i < x->min && !b->rc; i++) {
            emit(L, k);
            if ((i & 255) == 255)
                gb_check_time(b);
        }
        if (x->max != x->min) {
            int r = rep_rule(L, k, x->max < 0 ? -1 : x->max - x->min);
            if (r >= 0)
                push_el(L, GE_REF, (uint32_t)r);
        }
        return;
    }
    }
}

static void lower_rule(struct lower *L, int r)
{
    struct gx *x = L->b->exprs[r];
    L->cur = r;
    L->g->rule_alt[r] = (uint32_t)L->n_alts;
    int n = x->kind == GX_ALT ? x->n : 1;
    for (int i = 0; i < n && !L->b->rc; i++) {
        push_alt(L);
        emit(L, x->kind == GX_ALT ? x->kids[i] : x);
        push_el(L, GE_END, 0);
    }
}

/* nullable rules and the first bytes of each, to a fixed point */
static int analyse_first(struct gram *g, uint8_t *nullable, uint8_t (*first)[32])
{
    int changed = 1;
    while (changed) {
        changed = 0;
        for (int r = 0; r < g->n_rules; r++) {
            for (uint32_t a = g->rule_alt[r]; a < g->rule_alt[r + 1]; a++) {
                uint32_t p = g->alts[a];
                int all = 1;
                for (; g->els[p].type != GE_END; p++) {
                    const uint8_t *f;
                    int nul;
                    if (g->els[p].type == GE_BYTES) {
                        f = g->sets[g->els[p].arg];
                        nul = 0;
                    } else {
                        f = first[g->els[p].arg];
                        nul = nullable[g->els[p].arg];
                    }
                    for (int i = 0; i < 32; i++)
                        if (f[i] & ~first[r][i]) {
                            first[r][i] |= f[i];
                            changed = 1;
                        }
                    if (!nul) {
                        all = 0;
                        break;
                    }
                }
                if (all && !nullable[r]) {
                    nullable[r] = 1;
                    changed = 1;
                }
            }
        }
    }
    return 0;
}

/* Rules that begin with themselves (through nullable prefixes): the PDA would loop. */
static int check_left_recursion(struct gb *b, struct gram *g, const uint8_t *nullable)
{
    int n = g->n_rules > 0 ? g->n_rules : 0;
    uint8_t *color = calloc((size_t)n + 1, 1);
    uint32_t *stack = malloc(sizeof(*stack) * ((size_t)n * 2 + 2));
    if (!color || !stack) {
        free(color);
        free(stack);
        return gb_fail(b, -ENOMEM, "out of memory compiling the grammar");
    }
    /* iterative DFS; stack entries: rule, next alternative-element cursor */
    for (int s = 0; s < n && !b->rc; s++) {
        if (color[s])
            continue;
        int sp = 0;
        stack[sp++] = (uint32_t)s;
        stack[sp++] = 0;
        color[s] = 1;
        while (sp && !b->rc) {
            uint32_t r = stack[sp - 2], cur = stack[sp - 1];
            /* cur enumerates (alternative, element) pairs in the left corner */
            uint32_t na = g->rule_alt[r + 1] - g->rule_alt[r];
            uint32_t ai = cur >> 16, ei = cur & 0xFFFF;
            int pushed = 0;
            while (ai < na && !pushed) {
                uint32_t p = g->alts[g->rule_alt[r] + ai] + ei;
                if (g->els[p].type != GE_REF) {
                    ai++;
                    ei = 0;
                    continue;
                }
                uint32_t t = g->els[p].arg;
                /* a reference that ends its alternative is a tail call: it pushes no frame,
                   so a cycle through it cannot grow the stack (expansion dedupes it) */
                int tail = g->els[p + 1].type == GE_END;
                if (nullable[t] && ei < 0xFFFF)
                    ei++;
                else {
                    ai++;
                    ei = 0;
                }
                if (tail)
                    continue;
                if (color[t] == 1) {
                    gb_fail(b, -EINVAL, "rule '%s' is left-recursive (it can begin with itself)",
                            b->names[t]);
                    break;
                }
                if (!color[t]) {
                    stack[sp - 1] = (ai << 16) | ei;
                    color[t] = 1;
                    stack[sp++] = t;
                    stack[sp++] = 0;
                    pushed = 1;
                }
            }
            if (!pushed && !b->rc) {
                color[r] = 2;
                sp -= 2;
            }
        }
    }
    free(color);
    free(stack);
    return b->rc;
}

static void analyse_follow(struct gram *g, const uint8_t *nullable, uint8_t (*first)[32])
{
    int changed = 1;
    while (changed) {
        changed = 0;
        for (int r = 0; r < g->n_rules; r++)
            for (uint32_t a = g->rule_alt[r]; a < g->rule_alt[r + 1]; a++)
                for (uint32_t p = g->alts[a]; g->els[p].type != GE_END; p++) {
                    if (g->els[p].type != GE_REF)
                        continue;
                    uint8_t *f = g->follow[g->els[p].arg];
                    uint8_t add[32] = {0};
                    uint32_t q = p + 1;
                    for (; g->els[q].type != GE_END; q++) {
                        const uint8_t *s = g->els[q].type == GE_BYTES ? g->sets[g->els[q].arg]
                                                                      : first[g->els[q].arg];
                        for (int i = 0; i < 32; i++)
                            add[i] |= s[i];
                        if (g->els[q].type == GE_BYTES || !nullable[g->els[q].arg])
                            break;
                    }
                    if (g->els[q].type == GE_END)
                        for (int i = 0; i < 32; i++)
                            add[i] |= g->follow[r][i];
                    for (int i = 0; i < 32; i++)
                        if (add[i] & ~f[i]) {
                            f[i] |= add[i];
                            changed = 1;
                        }
                }
    }
}

/*
 * 1 when rule r is laid out as rule d (its level down in a chain): the same
 * alternatives of the same elements, where a reference either names the
 * same rule in both or names d in r and the rule chain_rule put below d
 * in d (which need not be laid out alike: it is the chain's bottom).
 */
static int same_layout(const struct gram *g, const struct gb *b, int r, int d)
{
    uint32_t na = g->rule_alt[r + 1] - g->rule_alt[r];
    if (na != g->rule_alt[d + 1] - g->rule_alt[d])
        return 0;
    int dd = d < b->cap_down ? b->down[d] - 1 : -1;
    for (uint32_t a = 0; a < na; a++) {
        const struct gel *x = &g->els[g->alts[g->rule_alt[r] + a]];
        const struct gel *y = &g->els[g->alts[g->rule_alt[d] + a]];
        for (;; x++, y++) {
            if (x->type != y->type)
                return 0;
            if (x->type == GE_END)
                break;
            if (x->arg == y->arg)
                continue;
            if (x->type != GE_REF || (int)x->arg != d || dd < 0 || (int)y->arg != dd)
                return 0;
        }
    }
    return 1;
}

int gram_lower(struct gb *b, int root, struct gram **out)
{
    *out = NULL;
    if (b->rc)
        return b->rc;
    if (root < 0)
        return gb_fail(b, -EINVAL, "the grammar has no start rule");
    struct gram *g = calloc(1, sizeof(*g));
    if (!g)
        return gb_fail(b, -ENOMEM, "out of memory compiling the grammar");
    atomic_init(&g->refs, 1);
    struct lower L = {.b = b, .g = g};
    size_t cap_rules = 0;
    for (int r = 0; r < b->n_rules && !b->rc; r++) {
        if (!b->exprs[r]) {
            gb_fail(b, -EINVAL, "rule '%s' is used but not defined", b->names[r]);
            break;
        }
        if ((size_t)b->n_rules + 1 > cap_rules) {
            cap_rules = (size_t)b->n_rules * 2 + 1;
            uint32_t *n = realloc(g->rule_alt, sizeof(*n) * cap_rules);
            if (!n) {
                gb_fail(b, -ENOMEM, "out of memory compiling the grammar");
                break;
            }
            g->rule_alt = n;
        }
        lower_rule(&L, r);
        if ((r & 255) == 255)
            gb_check_time(b);
    }
    if (b->rc) {
        gram_free(g);
        return b->rc;
    }
    g->n_rules = b->n_rules;
    g->rule_alt[g->n_rules] = (uint32_t)L.n_alts;
    g->root = (uint32_t)root;
    /* the names and byte sets move to the grammar */
    g->names = b->names;
    g->sets = b->sets;
    g->n_sets = b->n_sets;
    b->names = NULL;
    b->sets = NULL;
    int n_rules = b->n_rules;
    b->n_rules = b->n_sets = b->cap_rules = b->cap_sets = 0;
    g->rule_of = malloc(sizeof(*g->rule_of) * (size_t)(g->n_els + 1));
    g->follow = calloc((size_t)n_rules, 32);
    uint8_t *nullable = calloc((size_t)n_rules, 1);
    uint8_t(*first)[32] = calloc((size_t)n_rules, 32);
    if (!g->rule_of || !g->follow || !nullable || !first) {
        free(nullable);
        free(first);
        gram_free(g);
        return gb_fail(b, -ENOMEM, "out of memory compiling the grammar");
    }
    for (int r = 0; r < n_rules; r++)
        for (uint32_t a = g->rule_alt[r]; a < g->rule_alt[r + 1]; a++)
            for (uint32_t p = g->alts[a];; p++) {
                g->rule_of[p] = (uint32_t)r;
                if (g->els[p].type == GE_END)
                    break;
            }
    g->down = malloc(sizeof(*g->down) * (size_t)n_rules);
    if (!g->down) {
        free(nullable);
        free(first);
        gram_free(g);
        return gb_fail(b, -ENOMEM, "out of memory compiling the grammar");
    }
    for (int r = 0; r < n_rules; r++) {
        int d = r < b->cap_down ? b->down[r] - 1 : -1;
        g->down[r] = d >= 0 && d < r && same_layout(g, b, r, d) ? d : -1;
    }
    analyse_first(g, nullable, first);
    /* names still needed for the message: borrow them back */
    b->names = g->names;
    b->n_rules = n_rules;
    check_left_recursion(b, g, nullable);
    b->names = NULL;
    b->n_rules = 0;
    if (!b->rc)
        analyse_follow(g, nullable, first);
    free(nullable);
    free(first);
    if (b->rc) {
        gram_free(g);
        return b->rc;
    }
    g->lim = *b->lim;
    g->st.rules = g->n_rules;
    g->st.positions = g->n_els;
    *out = g;
    return 0;
}

void gram_free(struct gram *g)
{
    if (!g)
        return;
    gram_rt_release(g);
    if (g->pos) {
        for (int i = 0; i < g->n_els; i++) {
            struct gpos *p = &g->pos[i];
            if (p->shared)
                continue;
            free(p->acc);
            free(p->acc_bits);
            free(p->unc_tok);
            free(p->unc_off);
            free(p->unc_lcp);
        }
        free(g->pos);
    }
    for (int i = 0; i < g->n_rules; i++)
        free(g->names[i]);
    free(g->names);
    free(g->rule_alt);
    free(g->alts);
    free(g->els);
    free(g->sets);
    free(g->rule_of);
    free(g->down);
    free(g->follow);
    free(g);
}

struct gram *gram_ref(struct gram *g)
{
    if (g)
        atomic_fetch_add(&g->refs, 1);
    return g;
}

void gram_unref(struct gram *g)
{
    if (g && atomic_fetch_sub(&g->refs, 1) == 1)
        gram_free(g);
}

void gram_get_stats(const struct gram *g, struct gram_stats *out)
{
    *out = g->st;
}

void gram_limits_default(struct gram_limits *l)
{
    l->max_source = 256 * 1024;
    l->max_depth = 64;
    l->max_positions = 200000;
    l->max_stacks = 4096;
    l->max_nodes = 1 << 22;
    l->max_compile_s = 10.0;
}

/* ---- dump (GBNF) ---- */

static void dump_set(const uint8_t *s, char *o, size_t *k)
{
    int n = 0;
    for (int c = 0; c < 256; c++)
        n += gset_has(s, (unsigned)c);
    if (n == 1) {
        for (int c = 0; c < 256; c++)
            if (gset_has(s, (unsigned)c))
                *k += (size_t)sprintf(
                    o + *k,
                    c >= 0x20 && c < 0x7F && c != '"' && c != '\\' ? "\"%c\"" : "\"\\x%02X\"", c);
        return;
    }
    o[(*k)++] = '[';
    for (int c = 0; c < 256; c++) {
        if (!gset_has(s, (unsigned)c))
            continue;
        int e = c;
        while (e + 1 < 256 && gset_has(s, (unsigned)e + 1))
            e++;
        for (int x = 0; x < (e > c + 1 ? 2 : e - c + 1); x++) {
            int v = x == 0 ? c : e;
            if (x == 1 && e > c + 1)
                o[(*k)++] = '-';
            *k += (size_t)sprintf(
                o + *k, v >= 0x20 && v < 0x7F && !strchr("]\\^-", v) ? "%c" : "\\x%02X", v);
        }
        c = e;
    }
    o[(*k)++] = ']';
}

char *gram_dump(const struct gram *g)
{
    size_t cap = 64;
    for (int r = 0; r < g->n_rules; r++)
        cap += strlen(g->names[r]) + 8;
    for (int p = 0; p < g->n_els; p++)
        cap += g->els[p].type == GE_REF ? strlen(g->names[g->els[p].arg]) + 4 : 1300;
    char *o = malloc(cap);
    if (!o)
        return NULL;
    size_t k = 0;
    for (int r = 0; r < g->n_rules; r++) {
        k += (size_t)sprintf(o + k, "%s ::=", g->names[r]);
        for (uint32_t a = g->rule_alt[r]; a < g->rule_alt[r + 1]; a++) {
            if (a > g->rule_alt[r])
                k += (size_t)sprintf(o + k, " |");
            if (g->els[g->alts[a]].type == GE_END)
                k += (size_t)sprintf(o + k, " \"\"");
            for (uint32_t p = g->alts[a]; g->els[p].type != GE_END; p++) {
                o[k++] = ' ';
                if (g->els[p].type == GE_REF)
                    k += (size_t)sprintf(o + k, "%s", g->names[g->els[p].arg]);
                else
                    dump_set(g->sets[g->els[p].arg], o, &k);
            }
        }
        o[k++] = '\n';
    }
    o[k] = 0;
    return o;
}

/* ---- the entry point ---- */

int gram_compile(enum gram_kind kind, const char *src, size_t len, const struct gram_vocab *v,
                 const struct gram_limits *lim, struct gram **out, char *err, size_t errlen)
{
    struct gram_limits def;
    if (!lim) {
        gram_limits_default(&def);
        lim = &def;
    }
    *out = NULL;
    struct gb b;
    gb_init(&b, lim, err, errlen);
    if (kind != GRAM_JSON_OBJECT && len > lim->max_source) {
        gb_fail(&b, -E2BIG, "the grammar source is %zu bytes, over the limit of %zu", len,
                lim->max_source);
        gb_free(&b);
        return -E2BIG;
    }
    int root = -1;
    switch (kind) {
    case GRAM_GBNF:
        root = gram_gbnf_parse(&b, src, len);
        break;
    case GRAM_JSON_SCHEMA:
        root = gram_schema_compile(&b, src, len);
        break;
    case GRAM_JSON_OBJECT:
        root = gram_json_object(&b);
        break;
    case GRAM_REGEX: {
        root = gb_rule(&b, "root", 4);
        struct gx *x = gram_regex_parse(&b, src, len, 0);
        gb_define(&b, root, x);
        break;
    }
    case GRAM_CHOICE:
        root = gram_choice_compile(&b, src, len);
        break;
    case GRAM_TOOL_CALLS:
        root = gram_tools_compile(&b, src, len);
        break;
    default:
        gb_fail(&b, -EINVAL, "unknown grammar kind %d", (int)kind);
    }
    struct gram *g = NULL;
    int rc = gram_lower(&b, root, &g);
    double t_lowered = util_now_s();
    double t0 = b.t0;
    gb_free(&b);
    if (rc)
        return rc;
    g->st.compile_s = t_lowered - t0;
    g->v = v;
    if (v) {
        rc = gram_tables_build(g, t0, err, errlen);
        if (rc) {
            gram_free(g);
            return rc;
        }
        g->st.tables_s = util_now_s() - t_lowered;
    }
    *out = g;
    return 0;
}

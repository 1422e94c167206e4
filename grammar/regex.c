/*
 * grammar/regex.c - a regular expression as a grammar expression: the
 * whole output must match (a leading ^ and a trailing $ change nothing).
 * Literals and escapes (\d \w \s and their negations - ASCII classes -,
 * \n \t \r \f \v \0 \xHH \uHHHH \u{H..}), classes [...] and [^...], `.`
 * (any character but a newline), groups (...) (?:...) (?P<n>...),
 * alternation, and * + ? {m} {m,} {m,n} with their lazy forms (the same
 * language).  Refused by name: backreferences, lookahead, lookbehind, word
 * boundaries, inline flags, possessive quantifiers, ^ or $ inside.
 *
 * For a JSON schema's "pattern" (json_string) every character is spelled
 * as it must appear inside a JSON string: " and \ and control characters
 * as escapes, the rest as UTF-8.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/internal.h"

struct rp {
    struct gb *b;
    const char *s, *end, *src;
    int json;
    int depth;
};

static struct gx *rfail(struct rp *p, const char *what)
{
    gb_fail(p->b, -EINVAL, "regex at offset %d: %s", (int)(p->s - p->src), what);
    return NULL;
}

static struct gx *unsupported(struct rp *p, const char *what)
{
    gb_fail(p->b, -EINVAL, "regex at offset %d: %s is not supported", (int)(p->s - p->src), what);
    return NULL;
}

/* A growable set of code point ranges. */
struct rset {
    struct gcp_range *r;
    int n, cap;
};

static int rs_add(struct rp *p, struct rset *s, uint32_t lo, uint32_t hi)
{
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 16;
        struct gcp_range *n = realloc(s->r, sizeof(*n) * (size_t)cap);
        if (!n)
            return gb_fail(p->b, -ENOMEM, "out of memory compiling the regex");
        s->r = n;
        s->cap = cap;
    }
    s->r[s->n++] = (struct gcp_range){lo, hi};
    return 0;
}

static int cmp_r(const void *a, const void *b)
{
    const struct gcp_range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Sorts and merges; with negate, replaces the set by its complement. */
static int rs_norm(struct rp *p, struct rset *s, int negate)
{
    qsort(s->r, (size_t)s->n, sizeof(*s->r), cmp_r);
    int m = 0;
    for (int i = 0; i < s->n; i++) {
        if (m && s->r[i].lo <= s->r[m - 1].hi + 1) {
            if (s->r[i].hi > s->r[m - 1].hi)
                s->r[m - 1].hi = s->r[i].hi;
        } else
            s->r[m++] = s->r[i];
    }
    s->n = m;
    if (!negate)
        return 0;
    struct rset c = {0};
    uint32_t next = 0;
    for (int i = 0; i < s->n; i++) {
        if (s->r[i].lo > next && rs_add(p, &c, next, s->r[i].lo - 1))
            break;
        next = s->r[i].hi + 1;
    }
    if (next <= 0x10FFFF)
        rs_add(p, &c, next, 0x10FFFF);
    free(s->r);
    *s = c;
    return p->b->rc;
}

/* The escape JSON writes for a character that cannot appear raw in a string. */
static int json_escape(uint32_t c, char *o)
{
    static const char hex[] = "0123456789abcdef";
    const char *short_ = c == '"'    ? "\\\""
                         : c == '\\' ? "\\\\"
                         : c == '\n' ? "\\n"
                         : c == '\t' ? "\\t"
                         : c == '\r' ? "\\r"
                         : c == '\b' ? "\\b"
                         : c == '\f' ? "\\f"
                                     : NULL;
    if (short_) {
        memcpy(o, short_, 2);
        return 2;
    }
    memcpy(o, "\\u00", 4);
    o[4] = hex[c >> 4];
    o[5] = hex[c & 15];
    return 6;
}

/* \u00XX for c < 0x80, hex digits in either case */
static struct gx *unicode_escape(struct rp *p, uint32_t c)
{
    struct gb *b = p->b;
    struct gx *x = gx_lit(b, "\\u00", 4);
    static const char hex[] = "0123456789abcdef";
    for (int k = 0; k < 2; k++) {
        int d = k ? (int)(c & 15) : (int)(c >> 4);
        uint8_t set[32] = {0};
        gset_add(set, (unsigned char)hex[d]);
        if (d >= 10)
            gset_add(set, (unsigned char)(hex[d] - 32));
        gx_add(b, x, gx_set(b, set));
    }
    return x;
}

/* The characters of a normalised set, spelled for the target (raw, or inside a JSON string). */
static struct gx *spell(struct rp *p, struct rset *s)
{
    struct gb *b = p->b;
    if (!p->json)
        return gx_cps(b, s->r, s->n, 0);
    struct gx *alt = gx_alt(b);
    struct rset raw = {0};
    for (int i = 0; i < s->n && !b->rc; i++) {
        for (uint32_t c = s->r[i].lo; c <= s->r[i].hi && c < 0x80; c++) {
            if (c < 0x20 || c == '"' || c == '\\') {
                char e[6];
                if (json_escape(c, e) == 2) /* the short form, and \u00XX */
                    gx_add(b, alt, gx_lit(b, e, 2));
                gx_add(b, alt, unicode_escape(p, c));
            }
            if (c == '/')
                gx_add(b, alt, gx_lit(b, "\\/", 2));
        }
        /* the raw part: the range without the characters above */
        uint32_t lo = s->r[i].lo, hi = s->r[i].hi;
        for (uint32_t c = lo; c <= hi; c++) {
            if (c >= 0x80) {
                rs_add(p, &raw, c, hi);
                break;
            }
            if (c >= 0x20 && c != '"' && c != '\\')
                rs_add(p, &raw, c, c);
        }
    }
    if (raw.n)
        gx_add(b, alt, gx_cps(b, raw.r, raw.n, 0));
    free(raw.r);
    return alt;
}

static struct gx *spell1(struct rp *p, uint32_t c)
{
    struct gcp_range r = {c, c};
    struct rset s = {&r, 1, 1};
    return spell(p, &s);
}

static int hexv(int c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static int add_class(struct rp *p, struct rset *s, char k)
{
    switch (k) {
    case 'd':
        return rs_add(p, s, '0', '9');
    case 'w':
        rs_add(p, s, '0', '9');
        rs_add(p, s, 'A', 'Z');
        rs_add(p, s, '_', '_');
        return rs_add(p, s, 'a', 'z');
    case 's':
        rs_add(p, s, '\t', '\r'); /* \t \n \v \f \r */
        return rs_add(p, s, ' ', ' ');
    }
    return -1;
}

/*
 * After a backslash (p->s at the escaped character): a single character
 * into *c (returns 1), a class into s (returns 2), or 0 on error.
 */
static int parse_escape(struct rp *p, uint32_t *c, struct rset *s, int in_class)
{
    if (p->s >= p->end) {
        rfail(p, "a trailing backslash");
        return 0;
    }
    char e = *p->s++;
    switch (e) {
    case 'd':
    case 'w':
    case 's':
        add_class(p, s, e);
        return 2;
    case 'D':
    case 'W':
    case 'S': {
        struct rset t = {0};
        add_class(p, &t, (char)(e + 32));
        rs_norm(p, &t, 1);
        for (int i = 0; i < t.n; i++)
            rs_add(p, s, t.r[i].lo, t.r[i].hi);
        free(t.r);
        return 2;
    }
    case 'n':
        *c = '\n';
        return 1;
    case 't':
        *c = '\t';
        return 1;
    case 'r':
        *c = '\r';
        return 1;
    case 'f':
        *c = '\f';
        return 1;
    case 'v':
        *c = '\v';
        return 1;
    case '0':
        *c = 0;
        return 1;
    case 'b':
        if (in_class) {
            *c = '\b';
            return 1;
        }
        unsupported(p, "a word boundary (\\b)");
        return 0;
    case 'B':
        unsupported(p, "a word boundary (\\B)");
        return 0;
    case 'x':
    case 'u': {
        uint32_t v = 0;
        int n = e == 'x' ? 2 : 4, braces = 0;
        if (p->s < p->end && *p->s == '{') {
            braces = 1;
            p->s++;
            n = 8;
        }
        int got = 0;
        while (got < n && p->s < p->end && hexv((unsigned char)*p->s) >= 0) {
            v = v * 16 + (uint32_t)hexv((unsigned char)*p->s++);
            got++;
        }
        if (braces) {
            if (p->s >= p->end || *p->s != '}' || !got) {
                rfail(p, "a \\x{...} or \\u{...} escape without its }");
                return 0;
            }
            p->s++;
        } else if (got != n) {
            rfail(p, "a \\x or \\u escape needs 2 or 4 hex digits");
            return 0;
        }
        if (v > 0x10FFFF) {
            rfail(p, "a code point past U+10FFFF");
            return 0;
        }
        *c = v;
        return 1;
    }
    default:
        if (e >= '1' && e <= '9') {
            unsupported(p, "a backreference");
            return 0;
        }
        if (e == 'A' || e == 'Z' || e == 'z' || e == 'G') {
            unsupported(p, "an anchor escape (\\A, \\Z)");
            return 0;
        }
        if (e == 'p' || e == 'P') {
            unsupported(p, "a Unicode property class (\\p)");
            return 0;
        }
        if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z')) {
            rfail(p, "an unknown escape");
            return 0;
        }
        p->s--;
        int n = gram_utf8_get(p->s, (size_t)(p->end - p->s), c);
        if (!n) {
            rfail(p, "invalid UTF-8");
            return 0;
        }
        p->s += n;
        return 1;
    }
}

static struct gx *parse_class(struct rp *p)
{
    struct rset s = {0};
    int neg = 0;
    p->s++; /* [ */
    if (p->s < p->end && *p->s == '^') {
        neg = 1;
        p->s++;
    }
    int first = 1;
    while (p->s < p->end && (*p->s != ']' || first)) {
        first = 0;
        uint32_t lo;
        int k;
        if (*p->s == '\\') {
            p->s++;
            k = parse_escape(p, &lo, &s, 1);
        } else {
            int n = gram_utf8_get(p->s, (size_t)(p->end - p->s), &lo);
            if (!n) {
                free(s.r);
                return rfail(p, "invalid UTF-8");
            }
            p->s += n;
            k = 1;
        }
        if (!k) {
            free(s.r);
            return NULL;
        }
        if (k == 2)
            continue;
        uint32_t hi = lo;
        if (p->s + 1 < p->end && *p->s == '-' && p->s[1] != ']') {
            p->s++;
            struct rset dummy = {0};
            if (*p->s == '\\') {
                p->s++;
                k = parse_escape(p, &hi, &dummy, 1);
            } else {
                int n = gram_utf8_get(p->s, (size_t)(p->end - p->s), &hi);
                k = n ? 1 : 0;
                p->s += n;
                if (!n)
                    rfail(p, "invalid UTF-8");
            }
            free(dummy.r);
            if (k != 1) {
                free(s.r);
                return k == 2 ? rfail(p, "a class escape as a range bound") : NULL;
            }
            if (hi < lo) {
                free(s.r);
                return rfail(p, "a character range whose end is before its start");
            }
        }
        rs_add(p, &s, lo, hi);
    }
    if (p->s >= p->end) {
        free(s.r);
        return rfail(p, "a class without its closing ]");
    }
    p->s++;
    rs_norm(p, &s, neg);
    struct gx *x = spell(p, &s);
    free(s.r);
    return x;
}

static struct gx *parse_alt(struct rp *p);

static struct gx *parse_atom(struct rp *p)
{
    struct gb *b = p->b;
    char c = *p->s;
    if (c == '(') {
        p->s++;
        if (p->s < p->end && *p->s == '?') {
            const char *q = p->s + 1;
            if (q < p->end && *q == ':')
                p->s += 2;
            else if (q < p->end && (*q == '=' || *q == '!'))
                return unsupported(p, "a lookahead");
            else if (q + 1 < p->end && *q == '<' && (q[1] == '=' || q[1] == '!'))
                return unsupported(p, "a lookbehind");
            else if (q < p->end && (*q == 'P' || *q == '<')) {
                const char *e = memchr(q, '>', (size_t)(p->end - q));
                if (!e || (*q == 'P' && (q + 1 >= p->end || q[1] != '<')))
                    return unsupported(p, "this group syntax");
                p->s = e + 1;
            } else
                return unsupported(p, "an inline flag or special group");
        }
        if (++p->depth > b->lim->max_depth)
            return rfail(p, "groups nested too deeply");
        struct gx *x = parse_alt(p);
        if (!x)
            return NULL;
        if (p->s >= p->end || *p->s != ')')
            return rfail(p, "a group without its closing )");
        p->s++;
        p->depth--;
        return x;
    }
    if (c == '[')
        return parse_class(p);
    if (c == '.') {
        p->s++;
        struct gcp_range r[2] = {{0, '\n' - 1}, {'\n' + 1, 0x10FFFF}};
        struct rset s = {r, 2, 2};
        return spell(p, &s);
    }
    if (c == '^' || c == '$')
        return unsupported(p, "an anchor (^ or $) inside the expression");
    if (c == '*' || c == '+' || c == '?')
        return rfail(p, "a quantifier with nothing to repeat");
    if (c == '\\') {
        p->s++;
        uint32_t v;
        struct rset s = {0};
        int k = parse_escape(p, &v, &s, 0);
        struct gx *x = NULL;
        if (k == 1)
            x = spell1(p, v);
        else if (k == 2) {
            rs_norm(p, &s, 0);
            x = spell(p, &s);
        }
        free(s.r);
        return x;
    }
    uint32_t v;
    int n = gram_utf8_get(p->s, (size_t)(p->end - p->s), &v);
    if (!n)
        return rfail(p, "invalid UTF-8");
    p->s += n;
    return spell1(p, v);
}

/* {m}, {m,}, {m,n} at p->s; 1 when it is one (bounds set), 0 when `{` is a literal. */
static int parse_braces(struct rp *p, int *lo, int *hi)
{
    const char *q = p->s + 1;
    long a = 0, z = -1;
    int digits = 0;
    while (q < p->end && *q >= '0' && *q <= '9' && a <= 1000000) {
        a = a * 10 + (*q++ - '0');
        digits++;
    }
    if (!digits)
        return 0;
    if (q < p->end && *q == '}') {
        z = a;
    } else if (q < p->end && *q == ',') {
        q++;
        digits = 0;
        long t = 0;
        while (q < p->end && *q >= '0' && *q <= '9' && t <= 1000000) {
            t = t * 10 + (*q++ - '0');
            digits++;
        }
        z = digits ? t : -1;
        if (q >= p->end || *q != '}')
            return 0;
    } else
        return 0;
    if (a > 1000000 || z > 1000000) {
        rfail(p, "a repetition count over 1000000");
        return -1;
    }
    *lo = (int)a;
    *hi = (int)z;
    p->s = q + 1;
    return 1;
}

static struct gx *parse_seq(struct rp *p)
{
    struct gb *b = p->b;
    struct gx *seq = gx_seq(b);
    while (p->s < p->end && *p->s != '|' && *p->s != ')') {
        /* a trailing $ ends the whole expression */
        if (*p->s == '$' && p->s + 1 == p->end && !p->depth) {
            p->s++;
            break;
        }
        struct gx *x = parse_atom(p);
        if (!x)
            return NULL;
        for (;;) {
            int lo, hi;
            if (p->s >= p->end)
                break;
            char c = *p->s;
            if (c == '*' || c == '+' || c == '?') {
                p->s++;
                lo = c == '+';
                hi = c == '?' ? 1 : -1;
            } else if (c == '{') {
                int k = parse_braces(p, &lo, &hi);
                if (k < 0)
                    return NULL;
                if (!k)
                    break;
                if (hi >= 0 && hi < lo)
                    return rfail(p, "{m,n} with n < m");
            } else
                break;
            if (p->s < p->end && *p->s == '?')
                p->s++; /* lazy: the same language */
            else if (p->s < p->end && *p->s == '+')
                return unsupported(p, "a possessive quantifier");
            x = gx_rep(b, x, lo, hi);
        }
        gx_add(b, seq, x);
        if (b->rc)
            return NULL;
    }
    return seq;
}

static struct gx *parse_alt(struct rp *p)
{
    struct gx *alt = gx_alt(p->b);
    for (;;) {
        struct gx *s = parse_seq(p);
        if (!s)
            return NULL;
        gx_add(p->b, alt, s);
        if (p->s < p->end && *p->s == '|') {
            p->s++;
            continue;
        }
        break;
    }
    return alt->n == 1 ? alt->kids[0] : alt;
}

struct gx *gram_regex_parse(struct gb *b, const char *src, size_t len, int json_string)
{
    struct rp p = {.b = b, .s = src, .end = src + len, .src = src, .json = json_string};
    if (p.s < p.end && *p.s == '^')
        p.s++;
    struct gx *x = parse_alt(&p);
    if (x && p.s < p.end)
        x = rfail(&p, *p.s == ')' ? "an unmatched )" : "unexpected character");
    return x ? x : gx_empty(b);
}

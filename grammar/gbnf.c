/*
 * grammar/gbnf.c - llama.cpp's GBNF: `name ::= alternatives` rules with
 * "literals", [classes] ([^...] negated), `.`, ( groups ), rule names, and
 * the postfix operators * + ? {m} {m,} {m,n}; `#` comments.  The start
 * rule is `root`.  A superset in two small ways: `_` in names, and an
 * alternative may continue on the next line when that line begins with `|`.
 * Not supported (refused by name): token references `<...>` / `<[id]>`.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/internal.h"

struct gp {
    struct gb *b;
    const char *s, *end, *src;
    int depth;
};

static int line_of(const struct gp *p, const char *at)
{
    int line = 1;
    for (const char *q = p->src; q < at && q < p->end; q++)
        line += *q == '\n';
    return line;
}

static int fail(struct gp *p, const char *at, const char *what)
{
    return gb_fail(p->b, -EINVAL, "grammar line %d: %s", line_of(p, at), what);
}

static int is_name(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

/* Skips blanks and comments; newlines too when nl. */
static void space(struct gp *p, int nl)
{
    while (p->s < p->end) {
        char c = *p->s;
        if (c == ' ' || c == '\t' || (nl && (c == '\n' || c == '\r')))
            p->s++;
        else if (c == '#')
            while (p->s < p->end && *p->s != '\n')
                p->s++;
        else
            break;
    }
}

static int hexval(int c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* One character of a literal or class (escapes decoded); 0 or -1 on error. */
static int parse_char(struct gp *p, uint32_t *out)
{
    if (p->s >= p->end)
        return fail(p, p->s, "unexpected end of grammar"), -1;
    if (*p->s == '\\') {
        if (p->s + 1 >= p->end)
            return fail(p, p->s, "unexpected end of grammar after \\"), -1;
        char e = p->s[1];
        p->s += 2;
        int nhex = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
        if (nhex) {
            uint32_t v = 0;
            for (int i = 0; i < nhex; i++) {
                int h = p->s < p->end ? hexval((unsigned char)*p->s) : -1;
                if (h < 0)
                    return fail(p, p->s, "a \\x, \\u or \\U escape needs hex digits"), -1;
                v = v * 16 + (uint32_t)h;
                p->s++;
            }
            if (v > 0x10FFFF)
                return fail(p, p->s, "a code point past U+10FFFF"), -1;
            *out = v;
            return 0;
        }
        switch (e) {
        case 't':
            *out = '\t';
            return 0;
        case 'n':
            *out = '\n';
            return 0;
        case 'r':
            *out = '\r';
            return 0;
        case 'f':
            *out = '\f';
            return 0;
        case 'v':
            *out = '\v';
            return 0;
        case '0':
            *out = 0;
            return 0;
        default:
            if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '0' && e <= '9'))
                return fail(p, p->s - 2, "an unknown escape"), -1;
            *out = (unsigned char)e;
            return 0;
        }
    }
    int n = gram_utf8_get(p->s, (size_t)(p->end - p->s), out);
    if (!n)
        return fail(p, p->s, "invalid UTF-8"), -1;
    p->s += n;
    return 0;
}

static struct gx *parse_alts(struct gp *p, int nested);

static int parse_uint(struct gp *p, int *out)
{
    if (p->s >= p->end || *p->s < '0' || *p->s > '9')
        return -1;
    long v = 0;
    while (p->s < p->end && *p->s >= '0' && *p->s <= '9') {
        v = v * 10 + (*p->s++ - '0');
        if (v > 1000000)
            return fail(p, p->s, "a repetition count over 1000000"), -1;
    }
    *out = (int)v;
    return 0;
}

static struct gx *parse_atom(struct gp *p, int nested)
{
    struct gb *b = p->b;
    char c = *p->s;
    if (c == '"') {
        p->s++;
        struct gx *x = gx_seq(b);
        while (p->s < p->end && *p->s != '"') {
            uint32_t cp;
            if (parse_char(p, &cp))
                return NULL;
            char u[4];
            gx_add(b, x, gx_lit(b, u, (size_t)gram_utf8_put(cp, u)));
        }
        if (p->s >= p->end)
            return fail(p, p->s, "a string literal without its closing quote"), NULL;
        p->s++;
        return x;
    }
    if (c == '[') {
        const char *at = p->s++;
        int neg = 0;
        if (p->s < p->end && *p->s == '^') {
            neg = 1;
            p->s++;
        }
        struct gcp_range r[256];
        int n = 0;
        struct gx *alt = gx_alt(b);
        while (p->s < p->end && *p->s != ']') {
            uint32_t lo, hi;
            if (parse_char(p, &lo))
                return NULL;
            hi = lo;
            if (p->s + 1 < p->end && *p->s == '-' && p->s[1] != ']') {
                p->s++;
                if (parse_char(p, &hi))
                    return NULL;
                if (hi < lo)
                    return fail(p, at, "a character range whose end is before its start"), NULL;
            }
            if (n == 256) { /* long classes: merged in parts (only when not negated) */
                if (neg)
                    return fail(p, at, "a negated class of more than 256 ranges"), NULL;
                gx_add(b, alt, gx_cps(b, r, n, 0));
                n = 0;
            }
            r[n++] = (struct gcp_range){lo, hi};
        }
        if (p->s >= p->end)
            return fail(p, at, "a character class without its closing ]"), NULL;
        p->s++;
        gx_add(b, alt, gx_cps(b, r, n, neg));
        return alt;
    }
    if (c == '.') {
        p->s++;
        struct gcp_range all = {0, 0x10FFFF};
        return gx_cps(b, &all, 1, 0);
    }
    if (c == '(') {
        const char *at = p->s++;
        if (++p->depth > b->lim->max_depth)
            return fail(p, at, "groups nested too deeply"), NULL;
        space(p, 1);
        struct gx *x = parse_alts(p, 1);
        if (!x)
            return NULL;
        if (p->s >= p->end || *p->s != ')')
            return fail(p, at, "a group without its closing )"), NULL;
        p->s++;
        p->depth--;
        return x;
    }
    if (c == '<')
        return fail(p, p->s, "token references (<...>) are not supported"), NULL;
    if (is_name((unsigned char)c)) {
        const char *n0 = p->s;
        while (p->s < p->end && is_name((unsigned char)*p->s))
            p->s++;
        int r = gb_rule(b, n0, (size_t)(p->s - n0));
        return r < 0 ? NULL : gx_ref(b, r);
    }
    (void)nested;
    return fail(p, p->s, "unexpected character"), NULL;
}

static struct gx *parse_seq(struct gp *p, int nested)
{
    struct gb *b = p->b;
    struct gx *seq = gx_seq(b);
    while (p->s < p->end) {
        char c = *p->s;
        if (c == '|' || c == ')' || c == '\n' || c == '\r')
            break;
        struct gx *x = parse_atom(p, nested);
        if (!x)
            return NULL;
        space(p, nested);
        /* postfix operators */
        while (p->s < p->end && strchr("*+?{", *p->s)) {
            char op = *p->s++;
            if (op == '*')
                x = gx_rep(b, x, 0, -1);
            else if (op == '+')
                x = gx_rep(b, x, 1, -1);
            else if (op == '?')
                x = gx_rep(b, x, 0, 1);
            else {
                const char *at = p->s - 1;
                int lo, hi;
                space(p, 0);
                if (parse_uint(p, &lo))
                    return b->rc ? NULL : (fail(p, at, "{m,n} needs a number"), NULL);
                space(p, 0);
                hi = lo;
                if (p->s < p->end && *p->s == ',') {
                    p->s++;
                    space(p, 0);
                    hi = -1;
                    if (p->s < p->end && *p->s != '}' && parse_uint(p, &hi))
                        return b->rc ? NULL : (fail(p, at, "{m,n} needs a number"), NULL);
                    space(p, 0);
                }
                if (p->s >= p->end || *p->s != '}')
                    return fail(p, at, "{m,n} without its closing }"), NULL;
                p->s++;
                if (hi >= 0 && hi < lo)
                    return fail(p, at, "{m,n} with n < m"), NULL;
                x = gx_rep(b, x, lo, hi);
            }
            space(p, nested);
        }
        gx_add(b, seq, x);
        if (b->rc)
            return NULL;
    }
    return seq;
}

static struct gx *parse_alts(struct gp *p, int nested)
{
    struct gb *b = p->b;
    struct gx *alt = gx_alt(b);
    for (;;) {
        struct gx *s = parse_seq(p, nested);
        if (!s)
            return NULL;
        gx_add(b, alt, s);
        if (!nested) { /* the next line may go on with `|` */
            const char *save = p->s;
            space(p, 1);
            if (p->s >= p->end || *p->s != '|')
                p->s = save;
        }
        if (p->s < p->end && *p->s == '|') {
            p->s++;
            space(p, 1);
            continue;
        }
        break;
    }
    if (b->rc)
        return NULL;
    return alt->n == 1 ? alt->kids[0] : alt;
}

int gram_gbnf_parse(struct gb *b, const char *src, size_t len)
{
    struct gp p = {.b = b, .s = src, .end = src + len, .src = src};
    uint8_t *defined = NULL;
    int n_defined = 0;
    space(&p, 1);
    while (p.s < p.end && !b->rc) {
        const char *n0 = p.s;
        while (p.s < p.end && is_name((unsigned char)*p.s))
            p.s++;
        if (p.s == n0) {
            fail(&p, p.s, "expected a rule name");
            break;
        }
        size_t nlen = (size_t)(p.s - n0);
        space(&p, 0);
        if (p.end - p.s < 3 || memcmp(p.s, "::=", 3)) {
            fail(&p, p.s, "expected ::= after the rule name");
            break;
        }
        p.s += 3;
        space(&p, 1);
        int r = gb_rule(b, n0, nlen);
        if (r < 0)
            break;
        if (r >= n_defined) {
            uint8_t *d = realloc(defined, (size_t)r + 64);
            if (!d) {
                gb_fail(b, -ENOMEM, "out of memory compiling the grammar");
                break;
            }
            memset(d + n_defined, 0, (size_t)(r + 64 - n_defined));
            defined = d;
            n_defined = r + 64;
        }
        if (defined[r]) {
            gb_fail(b, -EINVAL, "grammar line %d: rule '%.*s' is defined twice", line_of(&p, n0),
                    (int)nlen, n0);
            break;
        }
        defined[r] = 1;
        struct gx *x = parse_alts(&p, 0);
        if (!x)
            break;
        gb_define(b, r, x);
        if (p.s < p.end && *p.s != '\n' && *p.s != '\r') {
            fail(&p, p.s, "expected the end of the line");
            break;
        }
        space(&p, 1);
    }
    free(defined);
    if (b->rc)
        return -1;
    for (int i = 0; i < b->n_rules; i++)
        if (!strcmp(b->names[i], "root"))
            return i;
    gb_fail(b, -EINVAL, "the grammar has no rule 'root'");
    return -1;
}

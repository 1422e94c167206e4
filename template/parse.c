/*
 * template/parse.c - Jinja2 source -> syntax tree.
 *
 * The lexer follows jinja2's (3.1) rules with Hugging Face's settings:
 * newlines normalised to "\n" and one trailing newline dropped;
 * trim_blocks (a newline right after a block or comment tag goes) and
 * lstrip_blocks (spaces and tabs from the start of a line up to a block or
 * comment tag go); "-" on a tag strips all whitespace on that side, "+"
 * keeps it.  The parser is jinja2's grammar by recursive descent, with the
 * same operator precedence.  Everything is allocated in the template's
 * arena; nothing here evaluates.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template/internal.h"
#include "util/errmsg.h"

enum tk { K_DATA, K_VBEGIN, K_VEND, K_BBEGIN, K_BEND, K_NAME, K_STR, K_INT, K_FLOAT, K_OP, K_EOF };

struct tok {
    enum tk k;
    int line;
    const char *s; /* K_DATA, K_NAME, K_OP: into the source; K_STR: decoded, in the arena */
    size_t n;
    int64_t i;
    double f;
};

struct ps {
    struct tpl *t;
    struct arena *ar;
    const char *s;
    size_t n;
    struct tok *toks;
    size_t ntok, cap, at;
    size_t line_pos;
    int line;
    int depth;
    char *err;
    size_t errlen;
};

#define MAX_PARSE_DEPTH 200

static int fail(struct ps *p, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct ps *p, int line, const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return errmsg(p->err, p->errlen, -EINVAL, "line %d: %s", line, msg);
}

static int line_of(struct ps *p, size_t pos)
{
    for (; p->line_pos < pos; p->line_pos++)
        p->line += p->s[p->line_pos] == '\n';
    return p->line;
}

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static int push(struct ps *p, struct tok tk)
{
    if (p->ntok == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        struct tok *nt = realloc(p->toks, cap * sizeof(*nt));
        if (!nt)
            return errmsg(p->err, p->errlen, -ENOMEM, "out of memory");
        p->toks = nt;
        p->cap = cap;
    }
    p->toks[p->ntok++] = tk;
    return 0;
}

static int starts(const char *s, size_t n, size_t i, const char *w)
{
    size_t k = strlen(w);
    return i + k <= n && memcmp(s + i, w, k) == 0;
}

/* A data token, with the whitespace control of the tag after it applied. */
static int push_data(struct ps *p, size_t from, size_t to, char sign, int is_var, int line_starting)
{
    const char *s = p->s;
    if (sign == '-') {
        while (to > from && is_ws(s[to - 1]))
            to--;
    } else if (sign != '+' && !is_var) {
        size_t l = to;
        while (l > from && s[l - 1] != '\n')
            l--;
        if ((l > from || line_starting) && l < to) {
            size_t k = l;
            while (k < to && is_ws(s[k]))
                k++;
            if (k == to)
                to = l;
        }
    }
    if (to == from)
        return 0;
    return push(p,
                (struct tok){.k = K_DATA, .line = line_of(p, from), .s = s + from, .n = to - from});
}

/* The end of a block tag at i: the index past it (and its whitespace control), or 0. */
static size_t block_end_at(const char *s, size_t n, size_t i)
{
    if (starts(s, n, i, "+%}"))
        return i + 3;
    if (starts(s, n, i, "-%}")) {
        i += 3;
        while (i < n && is_ws(s[i]))
            i++;
        return i;
    }
    if (starts(s, n, i, "%}"))
        return i + 2 + (i + 2 < n && s[i + 2] == '\n');
    return 0;
}

static int utf8_put(char *o, uint32_t c)
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

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A string literal from s[i] (the quote) decoded as Python's unicode-escape; *end past it. */
static int lex_string(struct ps *p, size_t i, size_t *end)
{
    const char *s = p->s;
    char q = s[i];
    size_t j = i + 1;
    while (j < p->n && s[j] != q)
        j += s[j] == '\\' ? 2 : 1;
    if (j >= p->n)
        return fail(p, line_of(p, i), "unterminated string");
    char *o = arena_alloc(p->ar, (j - i) * 2 + 1);
    if (!o)
        return errmsg(p->err, p->errlen, -ENOMEM, "out of memory");
    size_t k = 0;
    for (size_t a = i + 1; a < j; a++) {
        if (s[a] != '\\') {
            o[k++] = s[a];
            continue;
        }
        char c = s[++a];
        int digits = 0;
        switch (c) {
        case '\n':
            break;
        case '\\':
            o[k++] = '\\';
            break;
        case '\'':
            o[k++] = '\'';
            break;
        case '"':
            o[k++] = '"';
            break;
        case 'n':
            o[k++] = '\n';
            break;
        case 't':
            o[k++] = '\t';
            break;
        case 'r':
            o[k++] = '\r';
            break;
        case 'b':
            o[k++] = '\b';
            break;
        case 'f':
            o[k++] = '\f';
            break;
        case 'v':
            o[k++] = '\v';
            break;
        case 'a':
            o[k++] = '\a';
            break;
        case 'x':
            digits = 2;
            break;
        case 'u':
            digits = 4;
            break;
        case 'U':
            digits = 8;
            break;
        default:
            if (c >= '0' && c <= '7') {
                uint32_t v = 0;
                int m = 0;
                for (; m < 3 && a < j && s[a] >= '0' && s[a] <= '7'; m++, a++)
                    v = v * 8 + (uint32_t)(s[a] - '0');
                a--;
                k += (size_t)utf8_put(o + k, v);
            } else {
                o[k++] = '\\';
                o[k++] = c;
            }
        }
        if (digits) {
            uint32_t v = 0;
            for (int m = 0; m < digits; m++) {
                int h = a + 1 + (size_t)m < j ? hexval(s[a + 1 + (size_t)m]) : -1;
                if (h < 0)
                    return fail(p, line_of(p, i), "truncated \\%c escape in a string", c);
                v = v * 16 + (uint32_t)h;
            }
            if (v > 0x10FFFF || (v >= 0xD800 && v < 0xE000))
                return fail(p, line_of(p, i), "\\%c escape out of range", c);
            a += (size_t)digits;
            k += (size_t)utf8_put(o + k, v);
        }
    }
    o[k] = 0;
    *end = j + 1;
    return push(p, (struct tok){.k = K_STR, .line = line_of(p, i), .s = o, .n = k});
}

static int lex_number(struct ps *p, size_t i, size_t *end)
{
    const char *s = p->s;
    size_t j = i;
    char buf[80];
    size_t bn = 0;
    int is_float = 0, base = 10;
    if (s[j] == '0' && j + 1 < p->n && strchr("xXoObB", s[j + 1]) && s[j + 1]) {
        base = strchr("xX", s[j + 1]) ? 16 : strchr("oO", s[j + 1]) ? 8 : 2;
        j += 2;
        while (j < p->n && (hexval(s[j]) >= 0 || s[j] == '_') && bn < sizeof(buf) - 1) {
            if (s[j] != '_')
                buf[bn++] = s[j];
            j++;
        }
    } else {
        while (j < p->n && ((s[j] >= '0' && s[j] <= '9') || s[j] == '_') && bn < sizeof(buf) - 1) {
            if (s[j] != '_')
                buf[bn++] = s[j];
            j++;
        }
        if (j + 1 < p->n && s[j] == '.' && s[j + 1] >= '0' && s[j + 1] <= '9') {
            is_float = 1;
            buf[bn++] = s[j++];
            while (j < p->n && ((s[j] >= '0' && s[j] <= '9') || s[j] == '_') &&
                   bn < sizeof(buf) - 1) {
                if (s[j] != '_')
                    buf[bn++] = s[j];
                j++;
            }
        }
        if (j < p->n && (s[j] == 'e' || s[j] == 'E')) {
            size_t e = j + 1;
            if (e < p->n && (s[e] == '+' || s[e] == '-'))
                e++;
            if (e < p->n && s[e] >= '0' && s[e] <= '9') {
                is_float = 1;
                while (j < e && bn < sizeof(buf) - 1)
                    buf[bn++] = s[j++];
                while (j < p->n && s[j] >= '0' && s[j] <= '9' && bn < sizeof(buf) - 1)
                    buf[bn++] = s[j++];
            }
        }
    }
    buf[bn] = 0;
    struct tok tk = {.k = is_float ? K_FLOAT : K_INT, .line = line_of(p, i)};
    errno = 0;
    if (is_float) {
        tk.f = strtod(buf, NULL);
    } else {
        char *e;
        tk.i = (int64_t)strtoll(buf, &e, base);
        if (errno || *e || !bn)
            return fail(p, tk.line, "integer literal '%.30s' out of range", buf);
    }
    *end = j;
    return push(p, tk);
}

static const char *const k_ops[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/",
                                    "*",  "%",  "~",  "[",  "]",  "(",  ")", "{", "}",
                                    ">",  "<",  "=",  ".",  ":",  "|",  ",", ";"};

/* The tokens of one {{ }} or {% %} from i (past the opener); *end past its closer. */
static int lex_tag(struct ps *p, size_t i, int is_var, size_t *end)
{
    const char *s = p->s;
    char stack[MAX_PARSE_DEPTH];
    int depth = 0, rc, open_line = line_of(p, i);
    for (;;) {
        while (i < p->n && is_ws(s[i]))
            i++;
        if (i >= p->n)
            return fail(p, open_line, "unexpected end of template: the %s tag is not closed",
                        is_var ? "{{" : "{%");
        if (!depth) {
            size_t e = 0;
            if (is_var) {
                if (starts(s, p->n, i, "-}}")) {
                    e = i + 3;
                    while (e < p->n && is_ws(s[e]))
                        e++;
                } else if (starts(s, p->n, i, "}}"))
                    e = i + 2;
            } else
                e = block_end_at(s, p->n, i);
            if (e) {
                *end = e;
                return push(p, (struct tok){.k = is_var ? K_VEND : K_BEND, .line = line_of(p, i)});
            }
        }
        char c = s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') {
            size_t j = i;
            while (j < p->n && ((s[j] >= 'a' && s[j] <= 'z') || (s[j] >= 'A' && s[j] <= 'Z') ||
                                (s[j] >= '0' && s[j] <= '9') || s[j] == '_'))
                j++;
            if ((rc = push(
                     p, (struct tok){.k = K_NAME, .line = line_of(p, i), .s = s + i, .n = j - i})))
                return rc;
            i = j;
            continue;
        }
        if (c >= '0' && c <= '9') {
            if ((rc = lex_number(p, i, &i)))
                return rc;
            continue;
        }
        if (c == '\'' || c == '"') {
            if ((rc = lex_string(p, i, &i)))
                return rc;
            continue;
        }
        size_t k = 0;
        for (; k < sizeof(k_ops) / sizeof(*k_ops); k++)
            if (starts(s, p->n, i, k_ops[k]))
                break;
        if (k == sizeof(k_ops) / sizeof(*k_ops))
            return fail(p, line_of(p, i), "unexpected character '%c'", c);
        const char *op = k_ops[k];
        if (strchr("([{", op[0])) {
            if (depth == MAX_PARSE_DEPTH)
                return fail(p, line_of(p, i), "brackets nested too deep");
            stack[depth++] = op[0] == '(' ? ')' : op[0] == '[' ? ']' : '}';
        } else if (strchr(")]}", op[0])) {
            if (!depth || stack[depth - 1] != op[0])
                return fail(p, line_of(p, i), "unexpected '%c'", op[0]);
            depth--;
        }
        if ((rc =
                 push(p, (struct tok){.k = K_OP, .line = line_of(p, i), .s = op, .n = strlen(op)})))
            return rc;
        i += strlen(op);
    }
}

/* {% raw %} at i (past "{%" and its sign)?  Then the index past the tag, else 0. */
static size_t raw_begin_at(const char *s, size_t n, size_t i)
{
    while (i < n && is_ws(s[i]))
        i++;
    if (!starts(s, n, i, "raw"))
        return 0;
    i += 3;
    while (i < n && is_ws(s[i]))
        i++;
    if (starts(s, n, i, "-%}")) {
        i += 3;
        while (i < n && is_ws(s[i]))
            i++;
        return i;
    }
    return starts(s, n, i, "%}") ? i + 2 : 0;
}

static int lex(struct ps *p)
{
    const char *s = p->s;
    size_t pos = 0, n = p->n;
    int line_starting = 1, rc;
    while (pos < n) {
        size_t i = pos;
        while (i + 1 < n &&
               !(s[i] == '{' && (s[i + 1] == '{' || s[i + 1] == '%' || s[i + 1] == '#')))
            i++;
        if (i + 1 >= n) {
            if ((rc = push(p,
                           (struct tok){
                               .k = K_DATA, .line = line_of(p, pos), .s = s + pos, .n = n - pos})))
                return rc;
            break;
        }
        char kind = s[i + 1];
        size_t j = i + 2;
        char sign = (j < n && (s[j] == '-' || s[j] == '+')) ? s[j++] : 0;
        size_t raw = kind == '%' ? raw_begin_at(s, n, j) : 0;
        if ((rc = push_data(p, pos, i, sign, kind == '{', line_starting)))
            return rc;
        if (kind == '#') {
            size_t k = j, e = 0;
            for (; k + 1 < n && !e; k++) {
                if (starts(s, n, k, "+#}"))
                    e = k + 3;
                else if (starts(s, n, k, "-#}")) {
                    e = k + 3;
                    while (e < n && is_ws(s[e]))
                        e++;
                } else if (starts(s, n, k, "#}"))
                    e = k + 2 + (k + 2 < n && s[k + 2] == '\n');
            }
            if (!e)
                return fail(p, line_of(p, i), "missing end of comment tag");
            pos = e;
            line_starting = s[e - 1] == '\n';
            continue;
        }
        if (raw) {
            line_starting = s[raw - 1] == '\n';
            size_t k = raw, e = 0, body_end = 0;
            char esign = 0;
            for (; k + 1 < n && !e; k++) {
                if (!(s[k] == '{' && s[k + 1] == '%'))
                    continue;
                size_t m = k + 2;
                char sg = (m < n && (s[m] == '-' || s[m] == '+')) ? s[m++] : 0;
                while (m < n && is_ws(s[m]))
                    m++;
                if (!starts(s, n, m, "endraw"))
                    continue;
                m += 6;
                while (m < n && is_ws(s[m]))
                    m++;
                if ((e = block_end_at(s, n, m))) {
                    body_end = k;
                    esign = sg;
                }
            }
            if (!e)
                return fail(p, line_of(p, i), "missing end of raw directive");
            if ((rc = push_data(p, raw, body_end, esign, 0, line_starting)))
                return rc;
            pos = e;
            line_starting = s[e - 1] == '\n';
            continue;
        }
        if ((rc = push(
                 p, (struct tok){.k = kind == '{' ? K_VBEGIN : K_BBEGIN, .line = line_of(p, i)})))
            return rc;
        if ((rc = lex_tag(p, j, kind == '{', &pos)))
            return rc;
        line_starting = s[pos - 1] == '\n';
    }
    return push(p, (struct tok){.k = K_EOF, .line = line_of(p, n)});
}

/* ---- parser ------------------------------------------------------------- */

static const struct tok *cur(struct ps *p)
{
    return &p->toks[p->at];
}
static const struct tok *peek(struct ps *p, int k)
{
    size_t i = p->at + (size_t)k;
    return &p->toks[i < p->ntok ? i : p->ntok - 1];
}

static int tok_is(const struct tok *t, enum tk k, const char *s)
{
    return t->k == k && (!s || (t->n == strlen(s) && memcmp(t->s, s, t->n) == 0));
}
static int is_op(struct ps *p, const char *op)
{
    return tok_is(cur(p), K_OP, op);
}
static int is_name(struct ps *p, const char *w)
{
    return tok_is(cur(p), K_NAME, w);
}

static const char *tok_desc(const struct tok *t, char *b, size_t n)
{
    switch (t->k) {
    case K_DATA:
        return "template data";
    case K_VBEGIN:
        return "'{{'";
    case K_VEND:
        return "end of print statement";
    case K_BBEGIN:
        return "'{%'";
    case K_BEND:
        return "end of statement block";
    case K_EOF:
        return "end of template";
    case K_STR:
        return "string";
    case K_INT:
        return "integer";
    case K_FLOAT:
        return "float";
    default:
        snprintf(b, n, "'%.*s'", (int)(t->n > 30 ? 30 : t->n), t->s);
        return b;
    }
}

static int expect_op(struct ps *p, const char *op)
{
    if (is_op(p, op)) {
        p->at++;
        return 0;
    }
    char b[48];
    return fail(p, cur(p)->line, "expected '%s', got %s", op, tok_desc(cur(p), b, sizeof b));
}

static int expect_kind(struct ps *p, enum tk k, const char *what)
{
    if (cur(p)->k == k) {
        p->at++;
        return 0;
    }
    char b[48];
    return fail(p, cur(p)->line, "expected %s, got %s", what, tok_desc(cur(p), b, sizeof b));
}

static char *dupn(struct ps *p, const char *s, size_t n)
{
    char *o = arena_alloc(p->ar, n + 1);
    if (o)
        memcpy(o, s, n);
    return o;
}

static int oom(struct ps *p)
{
    return errmsg(p->err, p->errlen, -ENOMEM, "out of memory");
}

static struct expr *node(struct ps *p, enum expr_kind k, int line)
{
    struct expr *e = arena_alloc(p->ar, sizeof(*e));
    if (e) {
        e->k = k;
        e->line = line;
    }
    return e;
}

static int parse_expr(struct ps *p, const struct expr **out);
static int parse_or(struct ps *p, const struct expr **out);
static int parse_unary(struct ps *p, int with_filter, const struct expr **out);

/* A growable array of expression pointers, copied into the arena when done. */
struct elist {
    const struct expr **v;
    const char **names;
    int n, cap;
};
static int elist_push(struct elist *l, const struct expr *e, const char *name)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 8;
        const struct expr **nv = realloc(l->v, (size_t)cap * sizeof(*nv));
        if (!nv)
            return -ENOMEM;
        l->v = nv;
        const char **nn = realloc(l->names, (size_t)cap * sizeof(*nn));
        if (!nn)
            return -ENOMEM;
        l->names = nn;
        l->cap = cap;
    }
    l->names[l->n] = name;
    l->v[l->n++] = e;
    return 0;
}
static void elist_free(struct elist *l)
{
    free(l->v);
    free(l->names);
}
static int elist_take(struct ps *p, struct elist *l, const struct expr ***out, const char ***names)
{
    *out = arena_alloc(p->ar, (size_t)(l->n ? l->n : 1) * sizeof(**out));
    if (!*out)
        return -ENOMEM;
    if (l->n)
        memcpy(*out, l->v, (size_t)l->n * sizeof(**out));
    if (names) {
        *names = arena_alloc(p->ar, (size_t)(l->n ? l->n : 1) * sizeof(**names));
        if (!*names)
            return -ENOMEM;
        if (l->n)
            memcpy(*names, l->names, (size_t)l->n * sizeof(**names));
    }
    return 0;
}

/* (a, b=c, ...) after the '(' has been seen: positional then keyword arguments. */
static int parse_call_args(struct ps *p, struct expr *e)
{
    struct elist pos = {0}, kw = {0};
    int rc = expect_op(p, "(");
    while (!rc && !is_op(p, ")")) {
        if (pos.n + kw.n && (rc = expect_op(p, ",")))
            break;
        if (is_op(p, ")"))
            break;
        if (is_op(p, "*") || is_op(p, "**")) {
            rc = fail(p, cur(p)->line, "*args and **kwargs in calls are not supported");
            break;
        }
        const struct expr *a;
        if (cur(p)->k == K_NAME && tok_is(peek(p, 1), K_OP, "=")) {
            char *name = dupn(p, cur(p)->s, cur(p)->n);
            p->at += 2;
            if (!name) {
                rc = oom(p);
                break;
            }
            if (!(rc = parse_expr(p, &a)) && elist_push(&kw, a, name))
                rc = oom(p);
        } else {
            if (kw.n) {
                rc = fail(p, cur(p)->line, "a positional argument follows a keyword argument");
                break;
            }
            if (!(rc = parse_expr(p, &a)) && elist_push(&pos, a, NULL))
                rc = oom(p);
        }
    }
    if (!rc)
        rc = expect_op(p, ")");
    if (!rc) {
        e->nargs = pos.n;
        e->nkw = kw.n;
        const struct expr **args, **kwargs;
        const char **names;
        if (elist_take(p, &pos, &args, NULL) || elist_take(p, &kw, &kwargs, &names))
            rc = oom(p);
        else {
            e->args = args;
            e->kwargs = kwargs;
            e->kwnames = names;
        }
    }
    elist_free(&pos);
    elist_free(&kw);
    return rc;
}

static int parse_primary(struct ps *p, const struct expr **out)
{
    const struct tok *t = cur(p);
    struct expr *e;
    int rc;
    if (t->k == K_NAME) {
        if (!(e = node(p, E_LIT, t->line)))
            return oom(p);
        if (tok_is(t, K_NAME, "true") || tok_is(t, K_NAME, "True"))
            e->lit = tv_bool(1);
        else if (tok_is(t, K_NAME, "false") || tok_is(t, K_NAME, "False"))
            e->lit = tv_bool(0);
        else if (tok_is(t, K_NAME, "none") || tok_is(t, K_NAME, "None"))
            e->lit = tv_none();
        else {
            e->k = E_NAME;
            if (!(e->name = dupn(p, t->s, t->n)))
                return oom(p);
        }
        p->at++;
    } else if (t->k == K_STR) {
        if (!(e = node(p, E_LIT, t->line)))
            return oom(p);
        size_t total = 0;
        for (int k = 0; peek(p, k)->k == K_STR; k++)
            total += peek(p, k)->n;
        char *s = arena_alloc(p->ar, total + 1);
        if (!s)
            return oom(p);
        size_t o = 0;
        while (cur(p)->k == K_STR) {
            memcpy(s + o, cur(p)->s, cur(p)->n);
            o += cur(p)->n;
            p->at++;
        }
        e->lit = tv_str(s, total);
    } else if (t->k == K_INT || t->k == K_FLOAT) {
        if (!(e = node(p, E_LIT, t->line)))
            return oom(p);
        e->lit = t->k == K_INT ? tv_int(t->i) : tv_float(t->f);
        p->at++;
    } else if (tok_is(t, K_OP, "(")) {
        p->at++;
        if (is_op(p, ")")) { /* the empty tuple */
            p->at++;
            if (!(e = node(p, E_TUPLE, t->line)) ||
                !(e->args = arena_alloc(p->ar, sizeof(*e->args))))
                return oom(p);
        } else {
            const struct expr *first;
            if ((rc = parse_expr(p, &first)))
                return rc;
            if (!is_op(p, ",")) {
                if ((rc = expect_op(p, ")")))
                    return rc;
                *out = first;
                return 0;
            }
            struct elist l = {0};
            rc = elist_push(&l, first, NULL) ? oom(p) : 0;
            while (!rc && is_op(p, ",")) {
                p->at++;
                if (is_op(p, ")"))
                    break;
                const struct expr *a;
                if (!(rc = parse_expr(p, &a)) && elist_push(&l, a, NULL))
                    rc = oom(p);
            }
            if (!rc)
                rc = expect_op(p, ")");
            const struct expr **args = NULL;
            if (!rc && (!(e = node(p, E_TUPLE, t->line)) || elist_take(p, &l, &args, NULL)))
                rc = oom(p);
            if (!rc) {
                e->args = args;
                e->nargs = l.n;
            }
            elist_free(&l);
            if (rc)
                return rc;
        }
    } else if (tok_is(t, K_OP, "[") || tok_is(t, K_OP, "{")) {
        int dict = tok_is(t, K_OP, "{");
        const char *close = dict ? "}" : "]";
        p->at++;
        struct elist l = {0};
        rc = 0;
        while (!rc && !is_op(p, close)) {
            if (l.n && (rc = expect_op(p, ",")))
                break;
            if (is_op(p, close))
                break;
            const struct expr *a;
            if (!(rc = parse_expr(p, &a)) && elist_push(&l, a, NULL))
                rc = oom(p);
            if (!rc && dict) {
                if (!(rc = expect_op(p, ":")) && !(rc = parse_expr(p, &a)) &&
                    elist_push(&l, a, NULL))
                    rc = oom(p);
            }
        }
        if (!rc)
            rc = expect_op(p, close);
        const struct expr **args = NULL;
        if (!rc &&
            (!(e = node(p, dict ? E_DICT : E_LIST, t->line)) || elist_take(p, &l, &args, NULL)))
            rc = oom(p);
        if (!rc) {
            e->args = args;
            e->nargs = l.n;
        }
        elist_free(&l);
        if (rc)
            return rc;
    } else {
        char b[48];
        return fail(p, t->line, "unexpected %s", tok_desc(t, b, sizeof b));
    }
    *out = e;
    return 0;
}

/* .name, [subscript] and (call) after a primary. */
static int parse_postfix(struct ps *p, const struct expr **io, int calls)
{
    int rc;
    for (;;) {
        const struct tok *t = cur(p);
        struct expr *e;
        if (tok_is(t, K_OP, ".")) {
            p->at++;
            if (cur(p)->k != K_NAME && cur(p)->k != K_INT)
                return fail(p, t->line, "expected an attribute name after '.'");
            if (!(e = node(p, cur(p)->k == K_NAME ? E_ATTR : E_ITEM, t->line)))
                return oom(p);
            if (cur(p)->k == K_NAME) {
                if (!(e->name = dupn(p, cur(p)->s, cur(p)->n)))
                    return oom(p);
            } else {
                struct expr *idx = node(p, E_LIT, t->line);
                if (!idx)
                    return oom(p);
                idx->lit = tv_int(cur(p)->i);
                e->b = idx;
            }
            p->at++;
            e->a = *io;
            *io = e;
        } else if (tok_is(t, K_OP, "[")) {
            p->at++;
            const struct expr *parts[3] = {0};
            int np = 0, colons = 0;
            for (;;) {
                if (is_op(p, ":")) {
                    if (++colons > 2)
                        return fail(p, t->line, "too many ':' in a subscript");
                    np = colons;
                    p->at++;
                    continue;
                }
                if (is_op(p, "]"))
                    break;
                if (parts[np])
                    return fail(p, t->line, "expected ':' or ']' in a subscript");
                if ((rc = parse_expr(p, &parts[np])))
                    return rc;
            }
            p->at++;
            if (!colons && !parts[0])
                return fail(p, t->line, "an empty subscript");
            if (!(e = node(p, colons ? E_SLICE : E_ITEM, t->line)))
                return oom(p);
            e->a = *io;
            e->b = parts[0];
            e->c = parts[1];
            e->d = parts[2];
            *io = e;
        } else if (calls && tok_is(t, K_OP, "(")) {
            if (!(e = node(p, E_CALL, t->line)))
                return oom(p);
            e->a = *io;
            if ((rc = parse_call_args(p, e)))
                return rc;
            *io = e;
        } else
            return 0;
    }
}

static int parse_dotted_name(struct ps *p, const char **out)
{
    if (cur(p)->k != K_NAME)
        return fail(p, cur(p)->line, "expected a filter or test name");
    char b[128];
    size_t n = 0;
    for (;;) {
        size_t k = cur(p)->n;
        if (n + k + 1 >= sizeof b)
            return fail(p, cur(p)->line, "name too long");
        memcpy(b + n, cur(p)->s, k);
        n += k;
        p->at++;
        if (!(is_op(p, ".") && peek(p, 1)->k == K_NAME))
            break;
        b[n++] = '.';
        p->at++;
    }
    return (*out = dupn(p, b, n)) ? 0 : oom(p);
}

/* | filter(args) ... ; base may be NULL (filter blocks). */
static int parse_filter(struct ps *p, const struct expr **io)
{
    struct expr *e = node(p, E_FILTER, cur(p)->line);
    if (!e)
        return oom(p);
    int rc = parse_dotted_name(p, &e->name);
    if (!rc && is_op(p, "("))
        rc = parse_call_args(p, e);
    e->a = *io;
    *io = e;
    return rc;
}

static int parse_filter_expr(struct ps *p, const struct expr **io)
{
    int rc;
    for (;;) {
        if (is_op(p, "|")) {
            p->at++;
            if ((rc = parse_filter(p, io)))
                return rc;
        } else if (is_name(p, "is")) {
            int line = cur(p)->line;
            p->at++;
            struct expr *e = node(p, E_TEST, line);
            if (!e)
                return oom(p);
            if (is_name(p, "not")) {
                p->at++;
                e->op = 1;
            }
            if ((rc = parse_dotted_name(p, &e->name)))
                return rc;
            const struct tok *t = cur(p);
            if (tok_is(t, K_OP, "(")) {
                if ((rc = parse_call_args(p, e)))
                    return rc;
            } else if ((t->k == K_NAME || t->k == K_STR || t->k == K_INT || t->k == K_FLOAT ||
                        tok_is(t, K_OP, "[") || tok_is(t, K_OP, "{")) &&
                       !is_name(p, "else") && !is_name(p, "or") && !is_name(p, "and")) {
                if (is_name(p, "is"))
                    return fail(p, t->line, "you cannot chain multiple tests with is");
                const struct expr *arg;
                if ((rc = parse_primary(p, &arg)) || (rc = parse_postfix(p, &arg, 1)))
                    return rc;
                if (!(e->args = arena_alloc(p->ar, sizeof(*e->args))))
                    return oom(p);
                e->args[0] = arg;
                e->nargs = 1;
            }
            e->a = *io;
            *io = e;
        } else if (is_op(p, "(")) {
            struct expr *e = node(p, E_CALL, cur(p)->line);
            if (!e)
                return oom(p);
            e->a = *io;
            if ((rc = parse_call_args(p, e)))
                return rc;
            *io = e;
        } else
            return 0;
    }
}

static int enter(struct ps *p)
{
    if (++p->depth > MAX_PARSE_DEPTH)
        return fail(p, cur(p)->line, "expression nested too deep");
    return 0;
}

static int parse_unary(struct ps *p, int with_filter, const struct expr **out)
{
    int rc;
    if ((rc = enter(p)))
        return rc;
    const struct tok *t = cur(p);
    if (tok_is(t, K_OP, "-") || tok_is(t, K_OP, "+")) {
        p->at++;
        struct expr *e = node(p, tok_is(t, K_OP, "-") ? E_NEG : E_POS, t->line);
        if (!e)
            return oom(p);
        if ((rc = parse_unary(p, 0, &e->a)))
            return rc;
        *out = e;
    } else if ((rc = parse_primary(p, out)))
        return rc;
    if (!(rc = parse_postfix(p, out, 1)) && with_filter)
        rc = parse_filter_expr(p, out);
    p->depth--;
    return rc;
}

static int binary(struct ps *p, enum expr_kind k, int op, const struct expr *a,
                  const struct expr *b, int line, const struct expr **out)
{
    struct expr *e = node(p, k, line);
    if (!e)
        return oom(p);
    e->op = op;
    e->a = a;
    e->b = b;
    *out = e;
    return 0;
}

static int parse_pow(struct ps *p, const struct expr **out)
{
    int rc = parse_unary(p, 1, out);
    while (!rc && is_op(p, "**")) {
        int line = cur(p)->line;
        p->at++;
        const struct expr *r;
        if (!(rc = parse_unary(p, 1, &r)))
            rc = binary(p, E_BIN, OP_POW, *out, r, line, out);
    }
    return rc;
}

static int parse_math2(struct ps *p, const struct expr **out)
{
    int rc = parse_pow(p, out);
    for (;;) {
        int op = is_op(p, "*")    ? OP_MUL
                 : is_op(p, "/")  ? OP_DIV
                 : is_op(p, "//") ? OP_FLOORDIV
                 : is_op(p, "%")  ? OP_MOD
                                  : -1;
        if (rc || op < 0)
            return rc;
        int line = cur(p)->line;
        p->at++;
        const struct expr *r;
        if (!(rc = parse_pow(p, &r)))
            rc = binary(p, E_BIN, op, *out, r, line, out);
    }
}

static int parse_concat(struct ps *p, const struct expr **out)
{
    int rc = parse_math2(p, out);
    while (!rc && is_op(p, "~")) {
        int line = cur(p)->line;
        p->at++;
        const struct expr *r;
        if (!(rc = parse_math2(p, &r)))
            rc = binary(p, E_CONCAT, 0, *out, r, line, out);
    }
    return rc;
}

static int parse_math1(struct ps *p, const struct expr **out)
{
    int rc = parse_concat(p, out);
    for (;;) {
        int op = is_op(p, "+") ? OP_ADD : is_op(p, "-") ? OP_SUB : -1;
        if (rc || op < 0)
            return rc;
        int line = cur(p)->line;
        p->at++;
        const struct expr *r;
        if (!(rc = parse_concat(p, &r)))
            rc = binary(p, E_BIN, op, *out, r, line, out);
    }
}

static int cmp_op(struct ps *p)
{
    static const struct {
        const char *s;
        int op;
    } ops[] = {{"==", OP_EQ}, {"!=", OP_NE}, {"<", OP_LT},
               {"<=", OP_LE}, {">", OP_GT},  {">=", OP_GE}};
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)
        if (is_op(p, ops[i].s)) {
            p->at++;
            return ops[i].op;
        }
    if (is_name(p, "in")) {
        p->at++;
        return OP_IN;
    }
    if (is_name(p, "not") && tok_is(peek(p, 1), K_NAME, "in")) {
        p->at += 2;
        return OP_NOTIN;
    }
    return -1;
}

static int parse_compare(struct ps *p, const struct expr **out)
{
    int line = cur(p)->line, rc = parse_math1(p, out), op;
    if (rc)
        return rc;
    struct elist l = {0};
    int *ops = NULL, nops = 0;
    while ((op = cmp_op(p)) >= 0) {
        if (!nops && elist_push(&l, *out, NULL))
            goto nomem;
        int *no = realloc(ops, (size_t)(nops + 1) * sizeof(*no));
        if (!no)
            goto nomem;
        ops = no;
        ops[nops++] = op;
        const struct expr *r;
        if ((rc = parse_math1(p, &r)))
            goto done;
        if (elist_push(&l, r, NULL))
            goto nomem;
    }
    if (nops) {
        struct expr *e = node(p, E_CMP, line);
        const struct expr **args;
        if (!e || elist_take(p, &l, &args, NULL) ||
            !(e->ops = arena_alloc(p->ar, (size_t)nops * sizeof(int))))
            goto nomem;
        memcpy(e->ops, ops, (size_t)nops * sizeof(int));
        e->args = args;
        e->nargs = l.n;
        *out = e;
    }
    goto done;
nomem:
    rc = oom(p);
done:
    free(ops);
    elist_free(&l);
    return rc;
}

static int parse_not(struct ps *p, const struct expr **out)
{
    if (is_name(p, "not")) {
        int line = cur(p)->line, rc;
        p->at++;
        if ((rc = enter(p)))
            return rc;
        const struct expr *a;
        if ((rc = parse_not(p, &a)))
            return rc;
        p->depth--;
        return binary(p, E_NOT, 0, a, NULL, line, out);
    }
    return parse_compare(p, out);
}

static int parse_and(struct ps *p, const struct expr **out)
{
    int rc = parse_not(p, out);
    while (!rc && is_name(p, "and")) {
        int line = cur(p)->line;
        p->at++;
        const struct expr *r;
        if (!(rc = parse_not(p, &r)))
            rc = binary(p, E_AND, 0, *out, r, line, out);
    }
    return rc;
}

static int parse_or(struct ps *p, const struct expr **out)
{
    int rc = parse_and(p, out);
    while (!rc && is_name(p, "or")) {
        int line = cur(p)->line;
        p->at++;
        const struct expr *r;
        if (!(rc = parse_and(p, &r)))
            rc = binary(p, E_OR, 0, *out, r, line, out);
    }
    return rc;
}

/* or-expression [if or-expression [else expression]] */
static int parse_expr(struct ps *p, const struct expr **out)
{
    int rc;
    if ((rc = enter(p)) || (rc = parse_or(p, out)))
        return rc;
    while (is_name(p, "if")) {
        struct expr *e = node(p, E_COND, cur(p)->line);
        if (!e)
            return oom(p);
        p->at++;
        e->b = *out;
        if ((rc = parse_or(p, &e->a)))
            return rc;
        if (is_name(p, "else")) {
            p->at++;
            if ((rc = parse_expr(p, &e->c)))
                return rc;
        }
        *out = e;
    }
    p->depth--;
    return 0;
}

/* expr [, expr ...] -> the expression, or a tuple when there is a comma. */
static int parse_tuple(struct ps *p, const struct expr **out)
{
    int line = cur(p)->line, rc = parse_expr(p, out);
    if (rc || !is_op(p, ","))
        return rc;
    struct elist l = {0};
    rc = elist_push(&l, *out, NULL) ? oom(p) : 0;
    while (!rc && is_op(p, ",")) {
        p->at++;
        if (cur(p)->k == K_VEND || cur(p)->k == K_BEND)
            break;
        const struct expr *a;
        if (!(rc = parse_expr(p, &a)) && elist_push(&l, a, NULL))
            rc = oom(p);
    }
    struct expr *e = NULL;
    const struct expr **args = NULL;
    if (!rc && (!(e = node(p, E_TUPLE, line)) || elist_take(p, &l, &args, NULL)))
        rc = oom(p);
    if (!rc) {
        e->args = args;
        e->nargs = l.n;
        *out = e;
    }
    elist_free(&l);
    return rc;
}

/* ---- statements --------------------------------------------------------- */

static struct stmt *snode(struct ps *p, enum stmt_kind k, int line)
{
    struct stmt *s = arena_alloc(p->ar, sizeof(*s));
    if (s) {
        s->k = k;
        s->line = line;
    }
    return s;
}

static int parse_body(struct ps *p, const char *const *ends, const struct stmt **out,
                      const char **ended);

static int end_block(struct ps *p)
{
    return expect_kind(p, K_BEND, "end of statement block");
}

/* name [, name ...] (optionally in parentheses) for for and set. */
static int parse_targets(struct ps *p, struct stmt *s)
{
    const char *names[16];
    int n = 0, paren = is_op(p, "(");
    if (paren)
        p->at++;
    for (;;) {
        if (cur(p)->k != K_NAME)
            return fail(p, cur(p)->line, "expected a variable name");
        if (n == (int)(sizeof names / sizeof *names))
            return fail(p, cur(p)->line, "too many names to unpack into");
        if (!(names[n++] = dupn(p, cur(p)->s, cur(p)->n)))
            return oom(p);
        p->at++;
        if (!is_op(p, ","))
            break;
        p->at++;
    }
    if (paren) {
        int rc = expect_op(p, ")");
        if (rc)
            return rc;
    }
    s->ntargets = n;
    if (!(s->targets = arena_alloc(p->ar, (size_t)n * sizeof(*s->targets))))
        return oom(p);
    memcpy(s->targets, names, (size_t)n * sizeof(*names));
    return 0;
}

/* name(a, b=default, ...) of a macro, or the (params) of a call block. */
static int parse_params(struct ps *p, struct tmacro *m)
{
    int rc = expect_op(p, "(");
    struct elist l = {0};
    while (!rc && !is_op(p, ")")) {
        if (l.n && (rc = expect_op(p, ",")))
            break;
        if (cur(p)->k != K_NAME) {
            rc = fail(p, cur(p)->line, "expected a parameter name");
            break;
        }
        char *name = dupn(p, cur(p)->s, cur(p)->n);
        p->at++;
        const struct expr *def = NULL;
        if (!name)
            rc = oom(p);
        else if (is_op(p, "=")) {
            p->at++;
            rc = parse_expr(p, &def);
        } else if (l.n && l.v[l.n - 1])
            rc = fail(p, cur(p)->line, "a parameter without a default follows one with a default");
        if (!rc && elist_push(&l, def, name))
            rc = oom(p);
    }
    if (!rc)
        rc = expect_op(p, ")");
    if (!rc) {
        m->nparams = l.n;
        if (elist_take(p, &l, (const struct expr ***)&m->defaults, &m->params))
            rc = oom(p);
    }
    elist_free(&l);
    return rc;
}

static const char *const k_end_if[] = {"elif", "else", "endif", NULL};
static const char *const k_end_for[] = {"else", "endfor", NULL};

static int parse_if(struct ps *p, int line, struct stmt **out)
{
    struct stmt *s = snode(p, S_IF, line);
    if (!s)
        return oom(p);
    const char *ended;
    int rc;
    if ((rc = parse_expr(p, &s->e)) || (rc = end_block(p)) ||
        (rc = parse_body(p, k_end_if, &s->body, &ended)))
        return rc;
    if (!strcmp(ended, "elif")) {
        struct stmt *e;
        if ((rc = parse_if(p, cur(p)->line, &e)))
            return rc;
        s->else_body = e;
    } else if (!strcmp(ended, "else")) {
        static const char *const ends[] = {"endif", NULL};
        if ((rc = end_block(p)) || (rc = parse_body(p, ends, &s->else_body, &ended)))
            return rc;
    }
    if (strcmp(ended, "elif") == 0)
        ; /* the inner if consumed endif */
    else if ((rc = end_block(p)))
        return rc;
    *out = s;
    return 0;
}

static int parse_stmt(struct ps *p, const struct stmt **out)
{
    const struct tok *t = cur(p);
    int line = t->line, rc;
    if (t->k != K_NAME)
        return fail(p, line, "expected a statement name after '{%%'");
    char name[32];
    snprintf(name, sizeof name, "%.*s", (int)(t->n < 31 ? t->n : 31), t->s);
    p->at++;
    const char *ended;
    struct stmt *s = NULL;
    if (!strcmp(name, "if")) {
        if ((rc = parse_if(p, line, &s)))
            return rc;
    } else if (!strcmp(name, "for")) {
        if (!(s = snode(p, S_FOR, line)))
            return oom(p);
        if ((rc = parse_targets(p, s)))
            return rc;
        if (!is_name(p, "in"))
            return fail(p, cur(p)->line, "expected 'in' in a for loop");
        p->at++;
        /* the iterable: a tuple without its if (jinja2's parse_tuple(with_condexpr=False)) */
        if ((rc = parse_or(p, &s->e)))
            return rc;
        if (is_op(p, ",")) {
            struct elist l = {0};
            rc = elist_push(&l, s->e, NULL) ? oom(p) : 0;
            while (!rc && is_op(p, ",")) {
                p->at++;
                const struct expr *a;
                if (!(rc = parse_or(p, &a)) && elist_push(&l, a, NULL))
                    rc = oom(p);
            }
            struct expr *e = NULL;
            const struct expr **args = NULL;
            if (!rc && (!(e = node(p, E_TUPLE, line)) || elist_take(p, &l, &args, NULL)))
                rc = oom(p);
            if (!rc) {
                e->args = args;
                e->nargs = l.n;
                s->e = e;
            }
            elist_free(&l);
            if (rc)
                return rc;
        }
        if (is_name(p, "if")) {
            p->at++;
            if ((rc = parse_expr(p, &s->cond)))
                return rc;
        }
        if (is_name(p, "recursive")) {
            p->at++;
            s->recursive = 1;
        }
        if ((rc = end_block(p)) || (rc = parse_body(p, k_end_for, &s->body, &ended)))
            return rc;
        if (!strcmp(ended, "else")) {
            static const char *const ends[] = {"endfor", NULL};
            if ((rc = end_block(p)) || (rc = parse_body(p, ends, &s->else_body, &ended)))
                return rc;
        }
        if ((rc = end_block(p)))
            return rc;
    } else if (!strcmp(name, "set")) {
        if (!(s = snode(p, S_SET, line)))
            return oom(p);
        if (cur(p)->k == K_NAME && tok_is(peek(p, 1), K_OP, ".")) {
            if (!(s->targets = arena_alloc(p->ar, sizeof(*s->targets))) ||
                !(s->targets[0] = dupn(p, cur(p)->s, cur(p)->n)))
                return oom(p);
            s->ntargets = 1;
            p->at += 2;
            if (cur(p)->k != K_NAME)
                return fail(p, line, "expected an attribute name after '.'");
            if (!(s->attr = dupn(p, cur(p)->s, cur(p)->n)))
                return oom(p);
            p->at++;
        } else if ((rc = parse_targets(p, s)))
            return rc;
        if (is_op(p, "=")) {
            p->at++;
            if ((rc = parse_tuple(p, &s->e)) || (rc = end_block(p)))
                return rc;
        } else {
            if (s->attr || s->ntargets != 1)
                return fail(p, line, "a set block assigns one name");
            s->k = S_SETBLK;
            while (!rc && is_op(p, "|")) {
                p->at++;
                rc = parse_filter(p, &s->e);
            }
            static const char *const ends[] = {"endset", NULL};
            if (rc || (rc = end_block(p)) || (rc = parse_body(p, ends, &s->body, &ended)) ||
                (rc = end_block(p)))
                return rc;
        }
    } else if (!strcmp(name, "macro") || !strcmp(name, "call")) {
        int call = name[0] == 'c';
        if (!(s = snode(p, call ? S_CALL : S_MACRO, line)) ||
            !(s->macro = arena_alloc(p->ar, sizeof(*s->macro))))
            return oom(p);
        if (call) {
            s->macro->name = "caller";
            if (is_op(p, "(")) {
                if ((rc = parse_params(p, s->macro)))
                    return rc;
            } else if (!(s->macro->params = arena_alloc(p->ar, sizeof(char *))) ||
                       !(s->macro->defaults = arena_alloc(p->ar, sizeof(void *))))
                return oom(p);
            if ((rc = parse_expr(p, &s->e)))
                return rc;
            if (s->e->k != E_CALL)
                return fail(p, line, "a call block needs a call expression");
        } else {
            if (cur(p)->k != K_NAME)
                return fail(p, line, "expected a macro name");
            if (!(s->macro->name = dupn(p, cur(p)->s, cur(p)->n)))
                return oom(p);
            p->at++;
            if ((rc = parse_params(p, s->macro)))
                return rc;
        }
        const char *const ends[] = {call ? "endcall" : "endmacro", NULL};
        if ((rc = end_block(p)) || (rc = parse_body(p, ends, &s->macro->body, &ended)))
            return rc;
        if (!call && cur(p)->k == K_NAME)
            p->at++; /* {% endmacro name %} */
        if ((rc = end_block(p)))
            return rc;
    } else if (!strcmp(name, "filter")) {
        if (!(s = snode(p, S_FILTER, line)))
            return oom(p);
        rc = parse_filter(p, &s->e);
        while (!rc && is_op(p, "|")) {
            p->at++;
            rc = parse_filter(p, &s->e);
        }
        static const char *const ends[] = {"endfilter", NULL};
        if (rc || (rc = end_block(p)) || (rc = parse_body(p, ends, &s->body, &ended)) ||
            (rc = end_block(p)))
            return rc;
    } else if (!strcmp(name, "break") || !strcmp(name, "continue")) {
        if (!(s = snode(p, name[0] == 'b' ? S_BREAK : S_CONTINUE, line)))
            return oom(p);
        if ((rc = end_block(p)))
            return rc;
    } else if (!strcmp(name, "generation")) {
        if (!(s = snode(p, S_BODY, line)))
            return oom(p);
        static const char *const ends[] = {"endgeneration", NULL};
        if ((rc = end_block(p)) || (rc = parse_body(p, ends, &s->body, &ended)) ||
            (rc = end_block(p)))
            return rc;
    } else if (!strcmp(name, "include") || !strcmp(name, "extends") || !strcmp(name, "import") ||
               !strcmp(name, "from")) {
        return fail(p, line, "'%s' is not supported: a chat template has no files to load", name);
    } else
        return fail(p, line, "unknown or unsupported tag '%s'", name);
    *out = s;
    return 0;
}

/*
 * Statements until one of ends (a NULL-terminated list of tag names) or,
 * with ends NULL, the end of the template.  *ended names the end tag found
 * (its name token consumed, its block end not).
 */
static int parse_body(struct ps *p, const char *const *ends, const struct stmt **out,
                      const char **ended)
{
    const struct stmt *head = NULL;
    const struct stmt **tail = &head;
    int rc, open_line = cur(p)->line;
    if ((rc = enter(p)))
        return rc;
    for (;;) {
        const struct tok *t = cur(p);
        const struct stmt *s = NULL;
        if (t->k == K_EOF) {
            if (ends)
                return fail(p, open_line, "unexpected end of template: expected '%s'", ends[0]);
            break;
        }
        if (t->k == K_DATA) {
            struct stmt *d = snode(p, S_TEXT, t->line);
            if (!d)
                return oom(p);
            d->text = t->s;
            d->n = t->n;
            s = d;
            p->at++;
        } else if (t->k == K_VBEGIN) {
            p->at++;
            struct stmt *o = snode(p, S_OUT, t->line);
            if (!o)
                return oom(p);
            if ((rc = parse_tuple(p, &o->e)) ||
                (rc = expect_kind(p, K_VEND, "end of print statement")))
                return rc;
            s = o;
        } else if (t->k == K_BBEGIN) {
            const struct tok *nt = peek(p, 1);
            if (nt->k == K_NAME) {
                for (int i = 0; ends && ends[i]; i++)
                    if (tok_is(nt, K_NAME, ends[i])) {
                        p->at += 2;
                        *ended = ends[i];
                        *out = head;
                        p->depth--;
                        return 0;
                    }
                static const char *const closers[] = {
                    "endif",    "endfor",  "elif",      "else",          "endset",
                    "endmacro", "endcall", "endfilter", "endgeneration", NULL};
                for (int i = 0; closers[i]; i++)
                    if (tok_is(nt, K_NAME, closers[i]))
                        return fail(p, nt->line, "unexpected '%s'%s%s", closers[i],
                                    ends ? ", expected " : "", ends ? ends[0] : "");
            }
            p->at++;
            if ((rc = parse_stmt(p, &s)))
                return rc;
        } else {
            char b[48];
            return fail(p, t->line, "unexpected %s", tok_desc(t, b, sizeof b));
        }
        *tail = s;
        tail = (const struct stmt **)&((struct stmt *)s)->next;
    }
    *out = head;
    p->depth--;
    return 0;
}

int tpl_parse(struct tpl *t, char *err, size_t errlen)
{
    struct ps p = {
        .t = t, .ar = &t->ar, .s = t->src, .n = t->n, .line = 1, .err = err, .errlen = errlen};
    int rc = lex(&p);
    if (!rc)
        rc = parse_body(&p, NULL, &t->body, NULL);
    free(p.toks);
    return rc;
}

int tpl_compile(const char *src, size_t n, struct tpl **out, char *err, size_t errlen)
{
    *out = NULL;
    if (n > TPL_MAX_SOURCE)
        return errmsg(err, errlen, -E2BIG, "the template is %zu bytes; at most %u", n,
                      TPL_MAX_SOURCE);
    struct tpl *t = calloc(1, sizeof(*t));
    if (!t || !(t->src = malloc(n + 1))) {
        free(t);
        return errmsg(err, errlen, -ENOMEM, "out of memory");
    }
    /* newlines as "\n", one trailing newline dropped (keep_trailing_newline off) */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (src[i] == '\r') {
            t->src[k++] = '\n';
            if (i + 1 < n && src[i + 1] == '\n')
                i++;
        } else
            t->src[k++] = src[i];
    }
    if (k && t->src[k - 1] == '\n')
        k--;
    t->src[k] = 0;
    t->n = k;
    if (memchr(t->src, 0, k)) {
        tpl_destroy(t);
        return errmsg(err, errlen, -EINVAL, "the template contains a NUL byte");
    }
    int rc = tpl_parse(t, err, errlen);
    if (rc) {
        tpl_destroy(t);
        return rc;
    }
    *out = t;
    return 0;
}

void tpl_destroy(struct tpl *t)
{
    if (!t)
        return;
    arena_free(&t->ar);
    free(t->src);
    free(t);
}

int tpl_uses(const struct tpl *t, const char *name)
{
    size_t k = strlen(name);
    for (const char *s = t->src; (s = strstr(s, name)); s += k) {
        int before =
            s > t->src && (s[-1] == '_' || (s[-1] >= 'a' && s[-1] <= 'z') ||
                           (s[-1] >= 'A' && s[-1] <= 'Z') || (s[-1] >= '0' && s[-1] <= '9'));
        char a = s[k];
        int after =
            a == '_' || (a >= 'a' && a <= 'z') || (a >= 'A' && a <= 'Z') || (a >= '0' && a <= '9');
        if (!before && !after)
            return 1;
    }
    return 0;
}

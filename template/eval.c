/*
 * template/eval.c - renders a parsed template: statements, expressions, and
 * the filters, tests, globals and string/list/dict methods chat templates
 * use, with jinja2's semantics (Python's, underneath) as Hugging Face's
 * sandboxed environment runs them.
 *
 * Every value made while rendering lives in one arena that is freed when
 * the render ends; nothing is reference counted.  Lists and dicts are never
 * changed after they are made (the immutable sandbox refuses append,
 * update, ...); namespace() objects are the one thing `set ns.x` changes.
 * Each statement and expression node costs a step; steps, output bytes,
 * arena bytes and call depth are bounded by tpl_limits.
 */
#include <ctype.h>
#include <locale.h>
#include <pthread.h>
#include <wctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "template/internal.h"
#include "util/errmsg.h"

struct frame {
    struct tdict vars;
    struct frame *parent;
};

enum { CTL_NONE, CTL_BREAK, CTL_CONTINUE };

struct ctx {
    struct arena ar;
    struct tpl_limits lim;
    uint64_t steps;
    struct tv_walk walk; /* walks over values: steps shared with the render's */
    size_t out_bytes;
    int depth;
    int ctl;
    struct tdict globals;
    struct frame *root;
    char *err;
    size_t errlen;
};

enum fn_id { FN_RANGE, FN_NAMESPACE, FN_RAISE, FN_STRFTIME, FN_DICT };
static const char *const k_fn_names[] = {"range", "namespace", "raise_exception", "strftime_now",
                                         "dict"};

static int rt_fail(struct ctx *c, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int rt_fail(struct ctx *c, int line, const char *fmt, ...)
{
    char msg[240];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return errmsg(c->err, c->errlen, -EINVAL, "line %d: %s", line, msg);
}

static int oom(struct ctx *c, int line)
{
    if (c->ar.over)
        return errmsg(c->err, c->errlen, -E2BIG,
                      "line %d: the template made more than %zu bytes of values", line,
                      c->lim.max_memory);
    return errmsg(c->err, c->errlen, -ENOMEM, "line %d: out of memory", line);
}

/* A walk over a value (c->walk) went past a bound. */
static int walk_fail(struct ctx *c, int line)
{
    if (!strcmp(c->walk.over, "depth"))
        return errmsg(c->err, c->errlen, -E2BIG, "line %d: a value nested over %d deep", line,
                      TV_WALK_DEPTH);
    if (!strcmp(c->walk.over, "bytes"))
        return errmsg(c->err, c->errlen, -E2BIG,
                      "line %d: the template made more than %zu bytes of values", line,
                      c->lim.max_memory);
    return errmsg(c->err, c->errlen, -E2BIG,
                  "line %d: the template ran over its budget of %llu steps", line,
                  (unsigned long long)c->lim.max_steps);
}

/* A failed value.c call (rc < 0) as the render's error. */
static int val_fail(struct ctx *c, int line, int rc)
{
    if (c->walk.over)
        return walk_fail(c, line);
    return rc == -ENOMEM ? oom(c, line) : rc;
}

static int step(struct ctx *c, int line)
{
    if (c->walk.over) /* sticky: a caller that could not say so at once */
        return walk_fail(c, line);
    if (++c->steps > c->lim.max_steps)
        return errmsg(c->err, c->errlen, -E2BIG,
                      "line %d: the template ran over its budget of %llu steps", line,
                      (unsigned long long)c->lim.max_steps);
    return 0;
}

/* Appends to a render buffer, within the output budget. */
static int emit(struct ctx *c, int line, struct buf *out, const char *s, size_t n)
{
    c->out_bytes += n;
    if (c->out_bytes > c->lim.max_output)
        return errmsg(c->err, c->errlen, -E2BIG,
                      "line %d: the template's output went over %zu bytes", line,
                      c->lim.max_output);
    return buf_append(out, s, n) ? oom(c, line) : 0;
}

/* Appends to a buffer that becomes a value, within the memory budget: a join, a replace or a
   format can make far more than its inputs hold. */
static int vbuf_append(struct ctx *c, int line, struct buf *b, const char *s, size_t n)
{
    if (n > c->lim.max_memory - (b->n < c->lim.max_memory ? b->n : c->lim.max_memory))
        return errmsg(c->err, c->errlen, -E2BIG,
                      "line %d: the template made more than %zu bytes of values", line,
                      c->lim.max_memory);
    return buf_append(b, s, n) ? oom(c, line) : 0;
}

/* ---- making values ------------------------------------------------------ */

static char *adup(struct ctx *c, const char *s, size_t n)
{
    char *o = arena_alloc(&c->ar, n + 1);
    if (o && n)
        memcpy(o, s, n);
    return o;
}

/* A string value holding a copy of b's bytes. */
static int str_from_buf(struct ctx *c, int line, const struct buf *b, struct tv *out)
{
    char *s = adup(c, b->p ? b->p : "", b->n);
    if (!s)
        return oom(c, line);
    *out = tv_str(s, b->n);
    return 0;
}

static struct tlist *new_list(struct ctx *c, size_t n)
{
    if (n > SIZE_MAX / sizeof(struct tv)) { /* the size would wrap: over any budget */
        c->ar.over = 1;
        return NULL;
    }
    struct tlist *l = arena_alloc(&c->ar, sizeof(*l));
    if (l && !(l->v = arena_alloc(&c->ar, (n ? n : 1) * sizeof(*l->v))))
        return NULL;
    return l;
}

static struct tv list_val(struct tlist *l)
{
    return (struct tv){.t = TV_LIST, .l = l};
}

static int undef(struct ctx *c, struct tv *out, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int undef(struct ctx *c, struct tv *out, const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof msg)
        n = sizeof msg - 1;
    char *s = adup(c, msg, (size_t)n);
    *out = (struct tv){.t = TV_UNDEF, .s = s ? s : "", .n = s ? (size_t)n : 0};
    return 0;
}

static int undef_error(struct ctx *c, int line, const struct tv *v)
{
    return rt_fail(c, line, "%.*s", (int)v->n, v->n ? v->s : "undefined value");
}

/* str(v) as a value (strings as they are). */
static int to_str(struct ctx *c, int line, const struct tv *v, struct tv *out)
{
    if (v->t == TV_STR) {
        *out = *v;
        return 0;
    }
    struct buf b = {0};
    int rc = tv_str_append(&b, v, &c->walk);
    rc = rc ? val_fail(c, line, rc) : str_from_buf(c, line, &b, out);
    free(b.p);
    return rc;
}

/* str(v) appended to a buffer that becomes a value, within the memory budget. */
static int vbuf_append_str(struct ctx *c, int line, struct buf *b, const struct tv *v)
{
    struct tv s;
    int rc = to_str(c, line, v, &s);
    return rc ? rc : vbuf_append(c, line, b, s.s, s.n);
}

/* ---- variables ---------------------------------------------------------- */

static const struct tv *lookup(struct ctx *c, struct frame *f, const char *name)
{
    size_t n = strlen(name);
    for (; f; f = f->parent) {
        const struct tv *v = tv_dict_get(&f->vars, name, n);
        if (v)
            return v;
    }
    return tv_dict_get(&c->globals, name, n);
}

static int assign(struct ctx *c, int line, struct frame *f, const char *name, const struct tv *v)
{
    struct tv k = tv_str(name, strlen(name));
    int rc = tv_dict_set(&c->ar, &f->vars, &k, v, &c->walk);
    return rc ? val_fail(c, line, rc) : 0;
}

/* ---- UTF-8 -------------------------------------------------------------- */

static uint32_t utf8_next(const char *s, size_t n, size_t *i)
{
    unsigned char b = (unsigned char)s[*i];
    int len = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
    if (*i + (size_t)len > n)
        len = 1;
    uint32_t cp = len == 1 ? b : b & (0x7F >> len);
    for (int k = 1; k < len; k++)
        cp = (cp << 6) | ((unsigned char)s[*i + (size_t)k] & 0x3F);
    *i += (size_t)len;
    return cp;
}

static int py_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

static int in_set(const struct tv *chars, uint32_t cp)
{
    if (!chars)
        return py_space(cp);
    for (size_t j = 0; j < chars->n;)
        if (utf8_next(chars->s, chars->n, &j) == cp)
            return 1;
    return 0;
}

/* s stripped of chars (a set of code points; NULL: whitespace) on the sides asked. */
static struct tv str_strip(const struct tv *s, const struct tv *chars, int left, int right)
{
    size_t a = 0, b = s->n;
    const char *p = s->s;
    if (left)
        while (a < b) {
            size_t j = a;
            if (!in_set(chars, utf8_next(p, b, &j)))
                break;
            a = j;
        }
    if (right)
        while (b > a) {
            size_t st = b - 1;
            while (st > a && ((unsigned char)p[st] & 0xC0) == 0x80)
                st--;
            size_t j = st;
            if (!in_set(chars, utf8_next(p, b, &j)))
                break;
            b = st;
        }
    return tv_str(p + a, b - a);
}

static const char *mem_find(const char *h, size_t hn, const char *n, size_t nn)
{
    if (!nn)
        return h;
    return memmem(h, hn, n, nn);
}

/* ---- iteration ---------------------------------------------------------- */

/* The items a for loop (or a filter) walks: a list's, a dict's keys, a string's characters. */
static int iter_items(struct ctx *c, int line, const struct tv *v, struct tlist **out)
{
    struct tlist *l;
    switch (v->t) {
    case TV_LIST:
        *out = v->l;
        return 0;
    case TV_UNDEF:
        if (!(l = new_list(c, 0)))
            return oom(c, line);
        *out = l;
        return 0;
    case TV_DICT:
    case TV_NS:
        if (!(l = new_list(c, v->d->n)))
            return oom(c, line);
        for (size_t i = 0; i < v->d->n; i++)
            l->v[l->n++] = v->d->k[i];
        *out = l;
        return 0;
    case TV_STR: {
        size_t n = tv_utf8_len(v->s, v->n);
        if (!(l = new_list(c, n)))
            return oom(c, line);
        for (size_t i = 0; i < v->n;) {
            size_t st = i;
            utf8_next(v->s, v->n, &i);
            l->v[l->n++] = tv_str(v->s + st, i - st);
        }
        *out = l;
        return 0;
    }
    default:
        return rt_fail(c, line, "'%s' object is not iterable", tv_type_name(v));
    }
}

/* ---- attributes and items ----------------------------------------------- */

static const char *const k_str_methods[] = {
    "strip",   "lstrip",  "rstrip",  "split",      "rsplit",   "startswith", "endswith",
    "lower",   "upper",   "title",   "capitalize", "replace",  "find",       "rfind",
    "index",   "count",   "join",    "splitlines", "isdigit",  "isalpha",    "isalnum",
    "isspace", "isupper", "islower", "format",     "swapcase", NULL};
static const char *const k_dict_methods[] = {"items", "keys", "values", "get", "copy", NULL};
static const char *const k_list_methods[] = {"index", "count", "copy", NULL};
static const char *const k_unsafe[] = {"append", "extend",     "insert",  "pop",
                                       "remove", "sort",       "reverse", "clear",
                                       "update", "setdefault", "popitem", NULL};

static int in_names(const char *const *names, const char *s)
{
    for (int i = 0; names[i]; i++)
        if (!strcmp(names[i], s))
            return 1;
    return 0;
}

static int bind_method(struct ctx *c, int line, const struct tv *self, const char *name,
                       struct tv *out)
{
    struct tv *s = arena_alloc(&c->ar, sizeof(*s));
    if (!s)
        return oom(c, line);
    *s = *self;
    *out = (struct tv){.t = TV_METHOD, .s = name, .n = strlen(name), .self = s};
    return 0;
}

static int loop_attr(struct ctx *c, int line, const struct tv *v, const char *name, struct tv *out)
{
    const struct tloop *lp = v->loop;
    if (!strcmp(name, "index"))
        *out = tv_int(lp->index0 + 1);
    else if (!strcmp(name, "index0"))
        *out = tv_int(lp->index0);
    else if (!strcmp(name, "revindex"))
        *out = tv_int(lp->length - lp->index0);
    else if (!strcmp(name, "revindex0"))
        *out = tv_int(lp->length - lp->index0 - 1);
    else if (!strcmp(name, "first"))
        *out = tv_bool(lp->index0 == 0);
    else if (!strcmp(name, "last"))
        *out = tv_bool(lp->index0 == lp->length - 1);
    else if (!strcmp(name, "length"))
        *out = tv_int(lp->length);
    else if (!strcmp(name, "depth"))
        *out = tv_int(lp->depth);
    else if (!strcmp(name, "depth0"))
        *out = tv_int(lp->depth - 1);
    else if (!strcmp(name, "previtem")) {
        if (lp->index0 > 0)
            *out = lp->items[lp->index0 - 1];
        else
            return undef(c, out, "there is no previous item");
    } else if (!strcmp(name, "nextitem")) {
        if (lp->index0 + 1 < lp->length)
            *out = lp->items[lp->index0 + 1];
        else
            return undef(c, out, "there is no next item");
    } else if (!strcmp(name, "cycle"))
        return bind_method(c, line, v, "cycle", out);
    else
        return undef(c, out, "'LoopContext' object has no attribute '%.60s'", name);
    return 0;
}

/* obj.name: a method or member first, then an item (jinja2's getattr). */
static int get_attr(struct ctx *c, int line, const struct tv *v, const char *name, struct tv *out)
{
    switch (v->t) {
    case TV_UNDEF:
        return undef_error(c, line, v);
    case TV_DICT:
        if (in_names(k_dict_methods, name) || in_names(k_unsafe, name))
            return bind_method(c, line, v, name, out);
        /* fall through */
    case TV_NS: {
        const struct tv *m = tv_dict_get(v->d, name, strlen(name));
        if (m) {
            *out = *m;
            return 0;
        }
        return undef(c, out, "'%s object' has no attribute '%.60s'",
                     v->t == TV_NS ? "Namespace" : "dict", name);
    }
    case TV_STR:
        if (in_names(k_str_methods, name))
            return bind_method(c, line, v, name, out);
        break;
    case TV_LIST:
        if (in_names(k_list_methods, name) || in_names(k_unsafe, name))
            return bind_method(c, line, v, name, out);
        break;
    case TV_LOOP:
        return loop_attr(c, line, v, name, out);
    default:
        break;
    }
    return undef(c, out, "'%s object' has no attribute '%.60s'", tv_type_name(v), name);
}

static int index_of(int64_t i, size_t n, size_t *out)
{
    if (i < 0)
        i += (int64_t)n;
    if (i < 0 || (uint64_t)i >= n)
        return -1;
    *out = (size_t)i;
    return 0;
}

/* obj[key]: an item first, then for a string key an attribute (jinja2's getitem). */
static int get_item(struct ctx *c, int line, const struct tv *v, const struct tv *k, struct tv *out)
{
    size_t i;
    switch (v->t) {
    case TV_UNDEF:
        return undef_error(c, line, v);
    case TV_LIST:
        if (k->t == TV_INT || k->t == TV_BOOL) {
            if (!index_of(k->t == TV_INT ? k->i : k->b, v->l->n, &i)) {
                *out = v->l->v[i];
                return 0;
            }
            return undef(c, out, "list index %lld out of range",
                         (long long)(k->t == TV_INT ? k->i : k->b));
        }
        break;
    case TV_STR:
        if (k->t == TV_INT) {
            size_t len = tv_utf8_len(v->s, v->n);
            if (!index_of(k->i, len, &i)) {
                size_t a = tv_utf8_off(v->s, v->n, i), b = tv_utf8_off(v->s, v->n, i + 1);
                *out = tv_str(v->s + a, b - a);
                return 0;
            }
            return undef(c, out, "string index %lld out of range", (long long)k->i);
        }
        break;
    case TV_DICT:
    case TV_NS: {
        const struct tv *m = tv_dict_find(v->d, k, &c->walk);
        if (c->walk.over)
            return walk_fail(c, line);
        if (m) {
            *out = *m;
            return 0;
        }
        break;
    }
    default:
        break;
    }
    if (k->t == TV_STR) {
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)(k->n < 127 ? k->n : 127), k->s);
        if (v->t == TV_DICT || v->t == TV_NS)
            return undef(c, out, "'dict object' has no attribute '%s'", name);
        return get_attr(c, line, v, name, out);
    }
    return undef(c, out, "'%s object' has no item of that key", tv_type_name(v));
}

static int64_t clamp_slice(int64_t x, int64_t n, int step_neg)
{
    if (x < 0) {
        x += n;
        if (x < 0)
            x = step_neg ? -1 : 0;
    } else if (x >= n)
        x = step_neg ? n - 1 : n;
    return x;
}

static int get_slice(struct ctx *c, int line, const struct tv *v, const struct tv *a,
                     const struct tv *b, const struct tv *s, struct tv *out)
{
    const struct tv *parts[3] = {a, b, s};
    for (int i = 0; i < 3; i++)
        if (parts[i]->t != TV_NONE && parts[i]->t != TV_INT)
            return rt_fail(c, line, "slice indices must be integers or None");
    int64_t st = s->t == TV_INT ? s->i : 1;
    if (!st)
        return rt_fail(c, line, "slice step cannot be zero");
    int is_str = v->t == TV_STR;
    if (!is_str && v->t != TV_LIST) {
        if (v->t == TV_UNDEF)
            return undef_error(c, line, v);
        return rt_fail(c, line, "'%s' object cannot be sliced", tv_type_name(v));
    }
    int64_t n = is_str ? (int64_t)tv_utf8_len(v->s, v->n) : (int64_t)v->l->n;
    int64_t lo = a->t == TV_INT ? clamp_slice(a->i, n, st < 0) : st > 0 ? 0 : n - 1;
    int64_t hi = b->t == TV_INT ? clamp_slice(b->i, n, st < 0) : st > 0 ? n : -1;
    size_t cnt = 0;
    /* in uint64_t: the step may be as big as INT64_MAX or INT64_MIN */
    if (st > 0 && hi > lo)
        cnt = (size_t)((uint64_t)(hi - lo - 1) / (uint64_t)st + 1);
    else if (st < 0 && lo > hi)
        cnt = (size_t)((uint64_t)(lo - hi - 1) / (0 - (uint64_t)st) + 1);
    if (is_str) {
        /* code point offsets once, then the bytes of each chosen one */
        size_t *off = malloc(((size_t)n + 1) * sizeof(*off));
        if (!off)
            return oom(c, line);
        size_t k = 0;
        for (size_t i = 0; i < v->n; i++)
            if (((unsigned char)v->s[i] & 0xC0) != 0x80)
                off[k++] = i;
        off[k] = v->n;
        struct buf o = {0};
        int rc = 0;
        for (size_t j = 0; j < cnt && !rc; j++) {
            int64_t idx = lo + (int64_t)j * st;
            rc = buf_append(&o, v->s + off[idx], off[idx + 1] - off[idx]) ? oom(c, line) : 0;
        }
        if (!rc)
            rc = str_from_buf(c, line, &o, out);
        free(o.p);
        free(off);
        return rc;
    }
    struct tlist *l = new_list(c, cnt);
    if (!l)
        return oom(c, line);
    for (size_t j = 0; j < cnt; j++)
        l->v[l->n++] = v->l->v[lo + (int64_t)j * st];
    l->tuple = v->l->tuple;
    *out = list_val(l);
    return 0;
}

/* ---- arithmetic ---------------------------------------------------------- */

static int is_num(const struct tv *v)
{
    return v->t == TV_BOOL || v->t == TV_INT || v->t == TV_FLOAT;
}
static int is_int(const struct tv *v)
{
    return v->t == TV_BOOL || v->t == TV_INT;
}
static double fnum(const struct tv *v)
{
    return v->t == TV_FLOAT ? v->f : v->t == TV_INT ? (double)v->i : (double)v->b;
}
static int64_t inum(const struct tv *v)
{
    return v->t == TV_INT ? v->i : v->b;
}

static const char *k_op_names[] = {"+", "-", "*", "/", "//", "%", "**"};

static int repeat(struct ctx *c, int line, const struct tv *seq, int64_t times, struct tv *out)
{
    if (times < 0)
        times = 0;
    size_t unit = seq->t == TV_STR ? seq->n : seq->l->n * sizeof(struct tv);
    if (unit && (uint64_t)times > (c->lim.max_memory ? c->lim.max_memory : SIZE_MAX) / unit)
        return errmsg(c->err, c->errlen, -E2BIG,
                      "line %d: repeating a %s %lld times goes over the memory budget", line,
                      tv_type_name(seq), (long long)times);
    if (seq->t == TV_STR) {
        char *s = arena_alloc(&c->ar, seq->n * (size_t)times + 1);
        if (!s)
            return oom(c, line);
        for (int64_t i = 0; i < times; i++)
            memcpy(s + (size_t)i * seq->n, seq->s, seq->n);
        *out = tv_str(s, seq->n * (size_t)times);
        return 0;
    }
    struct tlist *l = new_list(c, seq->l->n * (size_t)times);
    if (!l)
        return oom(c, line);
    for (int64_t i = 0; i < times; i++)
        for (size_t j = 0; j < seq->l->n; j++)
            l->v[l->n++] = seq->l->v[j];
    *out = list_val(l);
    return 0;
}

static int binop(struct ctx *c, int line, int op, const struct tv *a, const struct tv *b,
                 struct tv *out)
{
    if (a->t == TV_UNDEF)
        return undef_error(c, line, a);
    if (b->t == TV_UNDEF)
        return undef_error(c, line, b);
    if (is_num(a) && is_num(b)) {
        int ints = is_int(a) && is_int(b);
        int64_t x = inum(a), y = inum(b), r;
        double fx = fnum(a), fy = fnum(b);
        switch (op) {
        case OP_ADD:
            if (ints) {
                if (__builtin_add_overflow(x, y, &r))
                    goto overflow;
                *out = tv_int(r);
            } else
                *out = tv_float(fx + fy);
            return 0;
        case OP_SUB:
            if (ints) {
                if (__builtin_sub_overflow(x, y, &r))
                    goto overflow;
                *out = tv_int(r);
            } else
                *out = tv_float(fx - fy);
            return 0;
        case OP_MUL:
            if (ints) {
                if (__builtin_mul_overflow(x, y, &r))
                    goto overflow;
                *out = tv_int(r);
            } else
                *out = tv_float(fx * fy);
            return 0;
        case OP_DIV:
            if (fy == 0)
                return rt_fail(c, line, "division by zero");
            *out = tv_float(fx / fy);
            return 0;
        case OP_FLOORDIV:
        case OP_MOD:
            if (ints) {
                if (!y)
                    return rt_fail(c, line, "integer division or modulo by zero");
                if (x == INT64_MIN && y == -1)
                    goto overflow;
                int64_t q = x / y, m = x % y;
                if (m && ((m < 0) != (y < 0))) {
                    q--;
                    m += y;
                }
                *out = tv_int(op == OP_MOD ? m : q);
            } else {
                if (fy == 0)
                    return rt_fail(c, line, "float division by zero");
                double m = fmod(fx, fy);
                if (m && ((m < 0) != (fy < 0)))
                    m += fy;
                *out = tv_float(op == OP_MOD ? m : floor(fx / fy));
            }
            return 0;
        case OP_POW:
            if (ints && y >= 0) {
                int64_t acc = 1, base = x;
                for (int64_t e = y; e; e >>= 1) {
                    if ((e & 1) && __builtin_mul_overflow(acc, base, &acc))
                        goto overflow;
                    if (e > 1 && __builtin_mul_overflow(base, base, &base))
                        goto overflow;
                }
                *out = tv_int(acc);
            } else
                *out = tv_float(pow(fx, fy));
            return 0;
        }
    }
    if (op == OP_ADD && a->t == TV_STR && b->t == TV_STR) {
        char *s = arena_alloc(&c->ar, a->n + b->n + 1);
        if (!s)
            return oom(c, line);
        memcpy(s, a->s, a->n);
        memcpy(s + a->n, b->s, b->n);
        *out = tv_str(s, a->n + b->n);
        return 0;
    }
    if (op == OP_ADD && a->t == TV_LIST && b->t == TV_LIST) {
        struct tlist *l = new_list(c, a->l->n + b->l->n);
        if (!l)
            return oom(c, line);
        memcpy(l->v, a->l->v, a->l->n * sizeof(*l->v));
        memcpy(l->v + a->l->n, b->l->v, b->l->n * sizeof(*l->v));
        l->n = a->l->n + b->l->n;
        l->tuple = a->l->tuple && b->l->tuple;
        *out = list_val(l);
        return 0;
    }
    if (op == OP_MUL && (a->t == TV_STR || a->t == TV_LIST) && is_int(b))
        return repeat(c, line, a, inum(b), out);
    if (op == OP_MUL && (b->t == TV_STR || b->t == TV_LIST) && is_int(a))
        return repeat(c, line, b, inum(a), out);
    if (op == OP_MOD && a->t == TV_STR)
        return rt_fail(c, line, "printf-style '%%' formatting of strings is not supported");
    if (op == OP_ADD && (a->t == TV_STR || a->t == TV_LIST))
        return rt_fail(c, line, "can only concatenate %s (not \"%s\") to %s", tv_type_name(a),
                       tv_type_name(b), tv_type_name(a));
    return rt_fail(c, line, "unsupported operand type(s) for %s: '%s' and '%s'", k_op_names[op],
                   tv_type_name(a), tv_type_name(b));
overflow:
    return rt_fail(c, line, "integer overflow in '%s'", k_op_names[op]);
}

static int contains(struct ctx *c, int line, const struct tv *item, const struct tv *seq, int *out)
{
    switch (seq->t) {
    case TV_STR:
        if (item->t != TV_STR)
            return rt_fail(c, line, "'in <string>' requires string as left operand, not %s",
                           tv_type_name(item));
        *out = mem_find(seq->s, seq->n, item->s, item->n) != NULL;
        return 0;
    case TV_LIST:
        *out = 0;
        for (size_t i = 0; i < seq->l->n && !*out; i++)
            *out = tv_equal(&seq->l->v[i], item, &c->walk);
        return c->walk.over ? walk_fail(c, line) : 0;
    case TV_DICT:
    case TV_NS:
        *out = tv_dict_find(seq->d, item, &c->walk) != NULL;
        return c->walk.over ? walk_fail(c, line) : 0;
    case TV_UNDEF:
        *out = 0;
        return 0;
    default:
        return rt_fail(c, line, "argument of type '%s' is not iterable", tv_type_name(seq));
    }
}

static int compare(struct ctx *c, int line, int op, const struct tv *a, const struct tv *b,
                   int *res)
{
    int k;
    switch (op) {
    case OP_EQ:
    case OP_NE:
        *res = tv_equal(a, b, &c->walk) == (op == OP_EQ);
        return c->walk.over ? walk_fail(c, line) : 0;
    case OP_IN:
        return contains(c, line, a, b, res);
    case OP_NOTIN: {
        int rc = contains(c, line, a, b, res);
        *res = !*res;
        return rc;
    }
    default:
        if (a->t == TV_UNDEF)
            return undef_error(c, line, a);
        if (b->t == TV_UNDEF)
            return undef_error(c, line, b);
        int rc = tv_compare(a, b, &k, &c->walk);
        if (rc == -E2BIG)
            return walk_fail(c, line);
        if (rc)
            return rt_fail(c, line, "'%s' not supported between instances of '%s' and '%s'",
                           op == OP_LT   ? "<"
                           : op == OP_LE ? "<="
                           : op == OP_GT ? ">"
                                         : ">=",
                           tv_type_name(a), tv_type_name(b));
        *res = op == OP_LT ? k < 0 : op == OP_LE ? k <= 0 : op == OP_GT ? k > 0 : k >= 0;
        return 0;
    }
}

/* ---- calls --------------------------------------------------------------- */

struct args {
    int n, nkw;
    struct tv *v;
    const char **kwn;
    struct tv *kw;
};

/* positional i or keyword name; NULL when neither was given */
static const struct tv *arg(const struct args *a, int i, const char *name)
{
    if (i >= 0 && i < a->n)
        return &a->v[i];
    for (int k = 0; name && k < a->nkw; k++)
        if (!strcmp(a->kwn[k], name))
            return &a->kw[k];
    return NULL;
}

static int eval(struct ctx *c, struct frame *f, const struct expr *e, struct tv *out);
static int exec_body(struct ctx *c, struct frame *f, const struct stmt *s, struct buf *out);
static int exec_loop(struct ctx *c, struct frame *f, const struct stmt *s, const struct tv *it,
                     int depth, struct buf *out);

static int eval_args(struct ctx *c, struct frame *f, const struct expr *e, struct args *a)
{
    a->n = e->nargs;
    a->nkw = e->nkw;
    a->kwn = e->kwnames;
    if (!(a->v = arena_alloc(&c->ar, (size_t)(e->nargs + 1) * sizeof(*a->v))) ||
        !(a->kw = arena_alloc(&c->ar, (size_t)(e->nkw + 1) * sizeof(*a->kw))))
        return oom(c, e->line);
    int rc;
    for (int i = 0; i < e->nargs; i++)
        if ((rc = eval(c, f, e->args[i], &a->v[i])))
            return rc;
    for (int i = 0; i < e->nkw; i++)
        if ((rc = eval(c, f, e->kwargs[i], &a->kw[i])))
            return rc;
    return 0;
}

static int call_macro(struct ctx *c, int line, const struct tmacro *m, const struct args *a,
                      const struct tv *caller, struct tv *out)
{
    if (a->n > m->nparams)
        return rt_fail(c, line, "macro '%s' takes not more than %d argument(s)", m->name,
                       m->nparams);
    if (c->depth >= c->lim.max_depth)
        return errmsg(c->err, c->errlen, -E2BIG, "line %d: macro calls nested over %d deep", line,
                      c->lim.max_depth);
    struct frame *fr = arena_alloc(&c->ar, sizeof(*fr));
    if (!fr)
        return oom(c, line);
    fr->parent = m->closure;
    int rc;
    for (int k = 0; k < a->nkw; k++) {
        int found = 0;
        for (int i = 0; i < m->nparams && !found; i++)
            found = !strcmp(m->params[i], a->kwn[k]);
        if (!found)
            return rt_fail(c, line, "macro '%s' takes no keyword argument '%s'", m->name,
                           a->kwn[k]);
    }
    for (int i = 0; i < m->nparams; i++) {
        const struct tv *v = arg(a, i, m->params[i]);
        struct tv val;
        if (v)
            val = *v;
        else if (m->defaults[i]) {
            if ((rc = eval(c, fr, m->defaults[i], &val)))
                return rc;
        } else if ((rc = undef(c, &val, "'%s' is undefined", m->params[i])))
            return rc;
        if ((rc = assign(c, line, fr, m->params[i], &val)))
            return rc;
    }
    if (caller && (rc = assign(c, line, fr, "caller", caller)))
        return rc;
    struct buf b = {0};
    int saved = c->ctl;
    c->depth++;
    rc = exec_body(c, fr, m->body, &b);
    c->depth--;
    c->ctl = saved;
    if (!rc)
        rc = str_from_buf(c, line, &b, out);
    free(b.p);
    return rc;
}

static int call_method(struct ctx *c, int line, const struct tv *self, const char *name,
                       const struct args *a, struct tv *out);
static int call_global(struct ctx *c, int line, int fn, const struct args *a, struct tv *out);

static int call_value(struct ctx *c, int line, const struct tv *fnv, const struct args *a,
                      const struct tv *caller, struct tv *out)
{
    switch (fnv->t) {
    case TV_MACRO:
        return call_macro(c, line, fnv->m, a, caller, out);
    case TV_METHOD:
        return call_method(c, line, fnv->self, fnv->s, a, out);
    case TV_FUNC:
        return call_global(c, line, fnv->fn, a, out);
    case TV_LOOP: {
        const struct tloop *lp = fnv->loop;
        if (!lp->s)
            return rt_fail(c, line, "the loop was not declared recursive");
        if (a->n != 1)
            return rt_fail(c, line, "loop() takes one iterable");
        struct buf b = {0};
        int saved = c->ctl;
        c->depth++;
        int rc = exec_loop(c, lp->f, lp->s, &a->v[0], lp->depth + 1, &b);
        c->depth--;
        c->ctl = saved;
        if (!rc)
            rc = str_from_buf(c, line, &b, out);
        free(b.p);
        return rc;
    }
    case TV_UNDEF:
        return undef_error(c, line, fnv);
    default:
        return rt_fail(c, line, "'%s' object is not callable", tv_type_name(fnv));
    }
}

/* ---- filters ------------------------------------------------------------- */

static int need_str(struct ctx *c, int line, const struct tv *v, const char *what)
{
    if (v->t == TV_STR)
        return 0;
    return rt_fail(c, line, "%s expects a string, got %s", what, tv_type_name(v));
}

static locale_t g_utf8_locale;
static pthread_once_t g_locale_once = PTHREAD_ONCE_INIT;
static void locale_init(void)
{
    g_utf8_locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
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

static uint32_t cp_case(uint32_t cp, int up)
{
    if (cp < 0x80)
        return (uint32_t)(up ? toupper((int)cp) : tolower((int)cp));
    if (!g_utf8_locale)
        return cp;
    wint_t r = up ? towupper_l((wint_t)cp, g_utf8_locale) : towlower_l((wint_t)cp, g_utf8_locale);
    return r > 0x10FFFF ? cp : (uint32_t)r;
}

static int cp_alpha(uint32_t cp)
{
    if (cp < 0x80)
        return isalpha((int)cp);
    return g_utf8_locale && iswalpha_l((wint_t)cp, g_utf8_locale);
}

/*
 * Case changes by code point (the C.UTF-8 locale's simple mappings, so no
 * "ß" -> "SS"): mode 0 lower, 1 upper, 2 capitalize, 3 jinja's title
 * filter (words start after whitespace or -({[<), 4 str.title() (words
 * start after a non-letter), 5 swapcase.
 */
static int ascii_case(struct ctx *c, int line, const struct tv *s, int mode, struct tv *out)
{
    pthread_once(&g_locale_once, locale_init);
    char *o = arena_alloc(&c->ar, s->n * 4 + 1);
    if (!o)
        return oom(c, line);
    size_t k = 0;
    int word_start = 1, first = 1;
    for (size_t i = 0; i < s->n;) {
        uint32_t cp = utf8_next(s->s, s->n, &i);
        int up;
        if (mode == 0)
            up = 0;
        else if (mode == 1)
            up = 1;
        else if (mode == 2)
            up = first;
        else if (mode == 5)
            up = cp_case(cp, 0) == cp;
        else
            up = word_start;
        if (cp == 0xDF && up && mode != 5) { /* Python's full mapping: "ß".upper() == "SS" */
            o[k++] = 'S';
            o[k++] = mode == 1 ? 'S' : 's';
        } else if (cp == 0x130 && !up) { /* "İ".lower() == "i̇" */
            o[k++] = 'i';
            k += (size_t)utf8_put(o + k, 0x307);
        } else
            k += (size_t)utf8_put(o + k, cp_case(cp, up));
        first = 0;
        if (mode == 3)
            word_start =
                py_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
        else if (mode == 4)
            word_start = !cp_alpha(cp);
    }
    *out = tv_str(o, k);
    return 0;
}

/* value.attribute or value["a"]["b"] for a dotted attribute path (jinja2's make_attrgetter). */
static int attr_path(struct ctx *c, int line, const struct tv *v, const struct tv *path,
                     struct tv *out)
{
    if (path->t == TV_INT)
        return get_item(c, line, v, path, out);
    if (path->t != TV_STR)
        return rt_fail(c, line, "an attribute name must be a string");
    struct tv cur = *v;
    const char *p = path->s, *end = path->s + path->n;
    while (p <= end) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        size_t n = dot ? (size_t)(dot - p) : (size_t)(end - p);
        struct tv k = tv_str(p, n), nx;
        char *endp;
        char num[24];
        snprintf(num, sizeof num, "%.*s", (int)(n < 23 ? n : 23), p);
        long long iv = strtoll(num, &endp, 10);
        if (n && !*endp && n < 23)
            k = tv_int(iv);
        int rc = get_item(c, line, &cur, &k, &nx);
        if (rc)
            return rc;
        cur = nx;
        if (!dot)
            break;
        p = dot + 1;
    }
    *out = cur;
    return 0;
}

static int apply_test(struct ctx *c, int line, const char *name, const struct tv *v,
                      const struct args *a, int *res);
static int apply_filter(struct ctx *c, int line, const char *name, const struct tv *v,
                        const struct args *a, struct tv *out);

/* Key for sort/min/max/unique: the attribute if asked, lowercased unless case_sensitive. */
static int sort_key(struct ctx *c, int line, const struct tv *v, const struct tv *attr, int cs,
                    struct tv *out)
{
    struct tv k = *v;
    int rc;
    if (attr && attr->t != TV_NONE && (rc = attr_path(c, line, v, attr, &k)))
        return rc;
    if (!cs && k.t == TV_STR)
        return ascii_case(c, line, &k, 0, out);
    *out = k;
    return 0;
}

struct sort_item {
    struct tv key, val;
    size_t idx;
};
static _Thread_local int t_sort_failed;
static _Thread_local struct tv_walk *t_sort_walk;
static int sort_cmp(const void *x, const void *y)
{
    const struct sort_item *a = x, *b = y;
    int k = 0;
    if (tv_compare(&a->key, &b->key, &k, t_sort_walk))
        t_sort_failed = 1;
    return k ? k : (a->idx > b->idx) - (a->idx < b->idx);
}

static int sorted(struct ctx *c, int line, struct tlist *l, const struct tv *attr, int cs, int rev,
                  struct tlist **out)
{
    struct sort_item *it = malloc((l->n ? l->n : 1) * sizeof(*it));
    if (!it)
        return oom(c, line);
    int rc = 0;
    for (size_t i = 0; i < l->n && !rc; i++) {
        it[i].val = l->v[i];
        it[i].idx = i;
        rc = sort_key(c, line, &l->v[i], attr, cs, &it[i].key);
    }
    t_sort_failed = 0;
    t_sort_walk = &c->walk;
    if (!rc)
        qsort(it, l->n, sizeof(*it), sort_cmp);
    if (!rc && c->walk.over)
        rc = walk_fail(c, line);
    if (!rc && t_sort_failed)
        rc = rt_fail(c, line, "sort: the values cannot be ordered");
    struct tlist *o = rc ? NULL : new_list(c, l->n);
    if (!rc && !o)
        rc = oom(c, line);
    for (size_t i = 0; !rc && i < l->n; i++)
        o->v[o->n++] = it[rev ? l->n - 1 - i : i].val;
    free(it);
    if (!rc)
        *out = o;
    return rc;
}

static int kw_bool(const struct args *a, int i, const char *name, int def)
{
    const struct tv *v = arg(a, i, name);
    return v ? tv_truthy(v) : def;
}

static int filter_join(struct ctx *c, int line, const struct tv *v, const struct args *a,
                       struct tv *out)
{
    const struct tv *sep = arg(a, 0, "d"), *attr = arg(a, 1, "attribute");
    struct tlist *l;
    int rc = iter_items(c, line, v, &l);
    if (rc)
        return rc;
    struct tv sv = tv_str("", 0);
    if (sep && (rc = to_str(c, line, sep, &sv)))
        return rc;
    struct buf b = {0};
    for (size_t i = 0; i < l->n && !rc; i++) {
        struct tv item = l->v[i], s;
        if (attr && (rc = attr_path(c, line, &l->v[i], attr, &item)))
            break;
        if (i)
            rc = vbuf_append(c, line, &b, sv.s, sv.n);
        if (!rc && !(rc = to_str(c, line, &item, &s)))
            rc = vbuf_append(c, line, &b, s.s, s.n);
    }
    if (!rc)
        rc = str_from_buf(c, line, &b, out);
    free(b.p);
    return rc;
}

/* select/reject/selectattr/rejectattr; attr_mode: the first argument names an attribute */
static int filter_select(struct ctx *c, int line, const struct tv *v, const struct args *a,
                         int keep, int attr_mode, struct tv *out)
{
    struct tlist *l, *o;
    int rc = iter_items(c, line, v, &l);
    if (rc)
        return rc;
    int first = attr_mode ? 1 : 0;
    const struct tv *attr = attr_mode ? arg(a, 0, NULL) : NULL;
    if (attr_mode && !attr)
        return rt_fail(c, line, "selectattr/rejectattr need an attribute name");
    const struct tv *test = arg(a, first, NULL);
    if (test && test->t != TV_STR)
        return rt_fail(c, line, "the test name must be a string");
    char tname[64] = "";
    if (test)
        snprintf(tname, sizeof tname, "%.*s", (int)(test->n < 63 ? test->n : 63), test->s);
    struct args ta = {.n = a->n > first + 1 ? a->n - first - 1 : 0,
                      .v = a->v + first + 1,
                      .nkw = a->nkw,
                      .kwn = a->kwn,
                      .kw = a->kw};
    if (!(o = new_list(c, l->n)))
        return oom(c, line);
    for (size_t i = 0; i < l->n; i++) {
        struct tv item = l->v[i];
        if (attr && (rc = attr_path(c, line, &l->v[i], attr, &item)))
            return rc;
        int r;
        if (test) {
            if ((rc = apply_test(c, line, tname, &item, &ta, &r)))
                return rc;
        } else
            r = tv_truthy(&item);
        if (r == keep)
            o->v[o->n++] = l->v[i];
    }
    *out = list_val(o);
    return 0;
}

static int filter_map(struct ctx *c, int line, const struct tv *v, const struct args *a,
                      struct tv *out)
{
    struct tlist *l, *o;
    int rc = iter_items(c, line, v, &l);
    if (rc)
        return rc;
    const struct tv *attr = arg(a, -1, "attribute"), *def = arg(a, -1, "default");
    const struct tv *fname = attr ? NULL : arg(a, 0, NULL);
    if (!attr && (!fname || fname->t != TV_STR))
        return rt_fail(c, line, "map needs a filter name or attribute=");
    char name[64] = "";
    if (fname)
        snprintf(name, sizeof name, "%.*s", (int)(fname->n < 63 ? fname->n : 63), fname->s);
    struct args fa = {.n = a->n > 1 ? a->n - 1 : 0, .v = a->v + 1};
    if (!(o = new_list(c, l->n)))
        return oom(c, line);
    for (size_t i = 0; i < l->n; i++) {
        struct tv r;
        if (attr) {
            if ((rc = attr_path(c, line, &l->v[i], attr, &r)))
                return rc;
            if (r.t == TV_UNDEF && def)
                r = *def;
        } else if ((rc = apply_filter(c, line, name, &l->v[i], &fa, &r)))
            return rc;
        o->v[o->n++] = r;
    }
    *out = list_val(o);
    return 0;
}

static int filter_tojson(struct ctx *c, int line, const struct tv *v, const struct args *a,
                         struct tv *out)
{
    const struct tv *ind = arg(a, 1, "indent"), *seps = arg(a, 2, "separators"),
                    *sk = arg(a, 3, "sort_keys"), *ea = arg(a, 0, "ensure_ascii");
    int indent = -1;
    if (ind && ind->t != TV_NONE) {
        if (ind->t != TV_INT || ind->i < 0 || ind->i > 64)
            return rt_fail(c, line, "tojson: indent must be an integer from 0 to 64");
        indent = (int)ind->i;
    }
    char isep[16] = "", ksep[16] = "";
    const char *ip = NULL, *kp = NULL;
    if (seps && seps->t != TV_NONE) {
        if (seps->t != TV_LIST || seps->l->n != 2 || seps->l->v[0].t != TV_STR ||
            seps->l->v[1].t != TV_STR || seps->l->v[0].n >= sizeof isep ||
            seps->l->v[1].n >= sizeof ksep)
            return rt_fail(c, line, "tojson: separators must be two short strings");
        memcpy(isep, seps->l->v[0].s, seps->l->v[0].n);
        memcpy(ksep, seps->l->v[1].s, seps->l->v[1].n);
        ip = isep;
        kp = ksep;
    }
    struct buf b = {0};
    const char *bad = NULL;
    int rc = tv_json_append(&b, v, indent, ip, kp, sk && tv_truthy(sk), ea && tv_truthy(ea), &bad,
                            &c->walk);
    if (rc == -EINVAL)
        rc = rt_fail(c, line, "Object of type %s is not JSON serializable", bad);
    else if (rc)
        rc = val_fail(c, line, rc);
    if (!rc)
        rc = str_from_buf(c, line, &b, out);
    free(b.p);
    return rc;
}

static int filter_indent(struct ctx *c, int line, const struct tv *s, const struct args *a,
                         struct tv *out)
{
    const struct tv *w = arg(a, 0, "width");
    int first = kw_bool(a, 1, "first", 0), blank = kw_bool(a, 2, "blank", 0);
    struct tv ind = tv_str("    ", 4);
    char sp[257];
    if (w && w->t == TV_STR)
        ind = *w;
    else if (w && w->t == TV_INT) {
        if (w->i < 0 || w->i > 256)
            return rt_fail(c, line, "indent: width from 0 to 256");
        memset(sp, ' ', (size_t)w->i);
        ind = tv_str(sp, (size_t)w->i);
    }
    /* s + "\n", split into lines (splitlines), joined back with the indent */
    struct buf b = {0};
    int rc = 0;
    size_t i = 0, nline = 0;
    while (i < s->n + 1 && !rc) {
        const char *p = s->s + i;
        size_t left = s->n - i;
        const char *nl = i < s->n ? memchr(p, '\n', left) : NULL;
        size_t len = nl ? (size_t)(nl - p) : left;
        if (!nl && i >= s->n)
            break; /* the "\n" appended ends the last line */
        int ind_this = (nline > 0 || first) && (blank || len > 0);
        if (nline)
            rc = vbuf_append(c, line, &b, "\n", 1);
        if (!rc && ind_this) /* a string indent may be long, and the lines many */
            rc = vbuf_append(c, line, &b, ind.s, ind.n);
        if (!rc)
            rc = vbuf_append(c, line, &b, p, len);
        nline++;
        i += len + 1;
        if (!nl)
            break;
    }
    if (!nline && first && buf_append(&b, ind.s, ind.n))
        rc = oom(c, line);
    if (!rc)
        rc = str_from_buf(c, line, &b, out);
    free(b.p);
    return rc;
}

static int to_int(const struct tv *v, int64_t def, int64_t *out)
{
    if (v->t == TV_INT || v->t == TV_BOOL) {
        *out = inum(v);
        return 0;
    }
    if (v->t == TV_FLOAT) {
        *out = isfinite(v->f) && fabs(v->f) < 9.2e18 ? (int64_t)v->f : def;
        return 0;
    }
    if (v->t == TV_STR) {
        char b[64];
        snprintf(b, sizeof b, "%.*s", (int)(v->n < 63 ? v->n : 63), v->s);
        char *e;
        errno = 0;
        long long x = strtoll(b, &e, 10);
        while (*e == ' ')
            e++;
        if (!errno && e != b && !*e) {
            *out = x;
            return 0;
        }
        double f = strtod(b, &e);
        *out = e != b && !*e && isfinite(f) && fabs(f) < 9.2e18 ? (int64_t)f : def;
        return 0;
    }
    *out = def;
    return 0;
}

static int apply_filter(struct ctx *c, int line, const char *name, const struct tv *v,
                        const struct args *a, struct tv *out)
{
    int rc;
    struct tlist *l;
    struct tv s;
    if ((rc = step(c, line)))
        return rc;
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        const struct tv *d = arg(a, 0, "default_value");
        int boolean = kw_bool(a, 1, "boolean", 0);
        if (v->t == TV_UNDEF || (boolean && !tv_truthy(v)))
            *out = d ? *d : tv_str("", 0);
        else
            *out = *v;
        return 0;
    }
    if (!strcmp(name, "tojson"))
        return filter_tojson(c, line, v, a, out);
    if (!strcmp(name, "safe")) {
        *out = *v;
        return 0;
    }
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        switch (v->t) {
        case TV_STR:
            *out = tv_int((int64_t)tv_utf8_len(v->s, v->n));
            return 0;
        case TV_LIST:
            *out = tv_int((int64_t)v->l->n);
            return 0;
        case TV_DICT:
        case TV_NS:
            *out = tv_int((int64_t)v->d->n);
            return 0;
        case TV_UNDEF:
            *out = tv_int(0);
            return 0;
        default:
            return rt_fail(c, line, "object of type '%s' has no len()", tv_type_name(v));
        }
    }
    if (!strcmp(name, "string"))
        return to_str(c, line, v, out);
    if (!strcmp(name, "trim")) {
        const struct tv *chars = arg(a, 0, "chars");
        if ((rc = to_str(c, line, v, &s)))
            return rc;
        if (chars && chars->t != TV_NONE && (rc = need_str(c, line, chars, "trim")))
            return rc;
        *out = str_strip(&s, chars && chars->t == TV_STR ? chars : NULL, 1, 1);
        return 0;
    }
    if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "capitalize") ||
        !strcmp(name, "title")) {
        if ((rc = to_str(c, line, v, &s)))
            return rc;
        return ascii_case(c, line, &s,
                          name[0] == 'l'   ? 0
                          : name[0] == 'u' ? 1
                          : name[0] == 'c' ? 2
                                           : 3,
                          out);
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        if ((rc = iter_items(c, line, v, &l)))
            return rc;
        if (!l->n)
            return undef(c, out, "No %s item, sequence was empty.", name);
        *out = l->v[name[0] == 'f' ? 0 : l->n - 1];
        return 0;
    }
    if (!strcmp(name, "join"))
        return filter_join(c, line, v, a, out);
    if (!strcmp(name, "replace")) {
        const struct tv *old = arg(a, 0, "old"), *nw = arg(a, 1, "new"), *cnt = arg(a, 2, "count");
        if ((rc = to_str(c, line, v, &s)))
            return rc;
        if (!old || !nw || old->t != TV_STR || nw->t != TV_STR)
            return rt_fail(c, line, "replace needs two strings");
        struct args ma = {.n = cnt ? 3 : 2, .v = (struct tv[3]){*old, *nw, cnt ? *cnt : tv_none()}};
        return call_method(c, line, &s, "replace", &ma, out);
    }
    if (!strcmp(name, "list")) {
        if ((rc = iter_items(c, line, v, &l)))
            return rc;
        struct tlist *o = new_list(c, l->n);
        if (!o)
            return oom(c, line);
        memcpy(o->v, l->v, l->n * sizeof(*o->v));
        o->n = l->n;
        *out = list_val(o);
        return 0;
    }
    if (!strcmp(name, "items")) {
        if (v->t == TV_UNDEF) {
            if (!(l = new_list(c, 0)))
                return oom(c, line);
            *out = list_val(l);
            return 0;
        }
        if (v->t != TV_DICT && v->t != TV_NS)
            return rt_fail(c, line, "items expects a mapping, got %s", tv_type_name(v));
        return call_method(c, line, v, "items", &(struct args){0}, out);
    }
    if (!strcmp(name, "reverse")) {
        if (v->t == TV_STR) {
            struct tv st = tv_int(-1), none = tv_none();
            return get_slice(c, line, v, &none, &none, &st, out);
        }
        if ((rc = iter_items(c, line, v, &l)))
            return rc;
        struct tlist *o = new_list(c, l->n);
        if (!o)
            return oom(c, line);
        for (size_t i = 0; i < l->n; i++)
            o->v[o->n++] = l->v[l->n - 1 - i];
        *out = list_val(o);
        return 0;
    }
    if (!strcmp(name, "sort")) {
        if ((rc = iter_items(c, line, v, &l)) ||
            (rc = sorted(c, line, l, arg(a, 2, "attribute"), kw_bool(a, 1, "case_sensitive", 0),
                         kw_bool(a, 0, "reverse", 0), &l)))
            return rc;
        *out = list_val(l);
        return 0;
    }
    if (!strcmp(name, "dictsort")) {
        if (v->t != TV_DICT && v->t != TV_NS)
            return rt_fail(c, line, "dictsort expects a mapping");
        const struct tv *by = arg(a, 1, "by");
        int by_value = by && by->t == TV_STR && by->n == 5 && !memcmp(by->s, "value", 5);
        struct tv items;
        if ((rc = call_method(c, line, v, "items", &(struct args){0}, &items)))
            return rc;
        struct tv idx = tv_int(by_value ? 1 : 0);
        if ((rc = sorted(c, line, items.l, &idx, kw_bool(a, 0, "case_sensitive", 0),
                         kw_bool(a, 2, "reverse", 0), &l)))
            return rc;
        *out = list_val(l);
        return 0;
    }
    if (!strcmp(name, "unique")) {
        const struct tv *attr = arg(a, 1, "attribute");
        int cs = kw_bool(a, 0, "case_sensitive", 0);
        if ((rc = iter_items(c, line, v, &l)))
            return rc;
        struct tlist *o = new_list(c, l->n), *keys = new_list(c, l->n);
        if (!o || !keys)
            return oom(c, line);
        for (size_t i = 0; i < l->n; i++) {
            struct tv k;
            if ((rc = sort_key(c, line, &l->v[i], attr, cs, &k)))
                return rc;
            int seen = 0;
            for (size_t j = 0; j < keys->n && !seen; j++)
                seen = tv_equal(&keys->v[j], &k, &c->walk);
            if (c->walk.over)
                return walk_fail(c, line);
            if (!seen) {
                keys->v[keys->n++] = k;
                o->v[o->n++] = l->v[i];
            }
        }
        *out = list_val(o);
        return 0;
    }
    if (!strcmp(name, "min") || !strcmp(name, "max")) {
        const struct tv *attr = arg(a, 1, "attribute");
        if ((rc = iter_items(c, line, v, &l)))
            return rc;
        if (!l->n)
            return undef(c, out, "No aggregated item, sequence was empty.");
        if ((rc = sorted(c, line, l, attr, kw_bool(a, 0, "case_sensitive", 0), 0, &l)))
            return rc;
        *out = l->v[name[1] == 'i' ? 0 : l->n - 1];
        return 0;
    }
    if (!strcmp(name, "sum")) {
        const struct tv *attr = arg(a, 0, "attribute"), *start = arg(a, 1, "start");
        if ((rc = iter_items(c, line, v, &l)))
            return rc;
        struct tv acc = start ? *start : tv_int(0);
        for (size_t i = 0; i < l->n; i++) {
            struct tv item = l->v[i];
            if (attr && (rc = attr_path(c, line, &l->v[i], attr, &item)))
                return rc;
            if ((rc = binop(c, line, OP_ADD, &acc, &item, &acc)))
                return rc;
        }
        *out = acc;
        return 0;
    }
    if (!strcmp(name, "map"))
        return filter_map(c, line, v, a, out);
    if (!strcmp(name, "select") || !strcmp(name, "reject"))
        return filter_select(c, line, v, a, name[0] == 's', 0, out);
    if (!strcmp(name, "selectattr") || !strcmp(name, "rejectattr"))
        return filter_select(c, line, v, a, name[0] == 's', 1, out);
    if (!strcmp(name, "attr")) {
        const struct tv *n = arg(a, 0, "name");
        if (!n || n->t != TV_STR)
            return rt_fail(c, line, "attr needs a name");
        char nm[128];
        snprintf(nm, sizeof nm, "%.*s", (int)(n->n < 127 ? n->n : 127), n->s);
        return get_attr(c, line, v, nm, out);
    }
    if (!strcmp(name, "int")) {
        const struct tv *d = arg(a, 0, "default");
        int64_t x;
        to_int(v, d && is_int(d) ? inum(d) : 0, &x);
        *out = tv_int(x);
        return 0;
    }
    if (!strcmp(name, "float")) {
        const struct tv *d = arg(a, 0, "default");
        double def = d ? fnum(d) : 0.0;
        if (is_num(v))
            *out = tv_float(fnum(v));
        else if (v->t == TV_STR) {
            char b[64], *e;
            snprintf(b, sizeof b, "%.*s", (int)(v->n < 63 ? v->n : 63), v->s);
            double f = strtod(b, &e);
            *out = tv_float(e != b && !*e ? f : def);
        } else
            *out = tv_float(def);
        return 0;
    }
    if (!strcmp(name, "abs")) {
        if (v->t == TV_FLOAT)
            *out = tv_float(fabs(v->f));
        else if (is_int(v) && inum(v) == INT64_MIN)
            return rt_fail(c, line, "integer overflow in 'abs'");
        else if (is_int(v))
            *out = tv_int(inum(v) < 0 ? -inum(v) : inum(v));
        else
            return rt_fail(c, line, "bad operand type for abs(): '%s'", tv_type_name(v));
        return 0;
    }
    if (!strcmp(name, "round")) {
        const struct tv *pr = arg(a, 0, "precision"), *method = arg(a, 1, "method");
        int p = pr && is_int(pr) ? (int)inum(pr) : 0;
        if (!is_num(v))
            return rt_fail(c, line, "round expects a number");
        if (p < 0 || p > 15)
            return rt_fail(c, line, "round: precision from 0 to 15");
        if (is_int(v) && !method) { /* Python's round(int, n) is the int itself */
            *out = tv_int(inum(v));
            return 0;
        }
        double x = fnum(v), m = pow(10, p), r;
        if (!method || (method->t == TV_STR && method->n == 6 && !memcmp(method->s, "common", 6))) {
            char b[400];
            snprintf(b, sizeof b, "%.*f", p, x);
            r = strtod(b, NULL);
        } else if (method->t == TV_STR && method->n == 4 && !memcmp(method->s, "ceil", 4))
            r = ceil(x * m) / m;
        else if (method->t == TV_STR && method->n == 5 && !memcmp(method->s, "floor", 5))
            r = floor(x * m) / m;
        else
            return rt_fail(c, line, "round: method must be common, ceil or floor");
        *out = tv_float(r);
        return 0;
    }
    if (!strcmp(name, "indent")) {
        if ((rc = to_str(c, line, v, &s)))
            return rc;
        return filter_indent(c, line, &s, a, out);
    }
    if (!strcmp(name, "wordcount")) {
        if ((rc = to_str(c, line, v, &s)))
            return rc;
        int64_t n = 0;
        int in = 0;
        pthread_once(&g_locale_once, locale_init);
        for (size_t i = 0; i < s.n;) {
            uint32_t cp = utf8_next(s.s, s.n, &i);
            int w =
                cp == '_' || (cp < 0x80 ? isalnum((int)cp) != 0
                                        : g_utf8_locale && iswalnum_l((wint_t)cp, g_utf8_locale));
            n += w && !in;
            in = w;
        }
        *out = tv_int(n);
        return 0;
    }
    if (!strcmp(name, "batch")) {
        const struct tv *sz = arg(a, 0, "linecount"), *fill = arg(a, 1, "fill_with");
        if (!sz || !is_int(sz) || inum(sz) <= 0)
            return rt_fail(c, line, "batch needs a positive size");
        if ((rc = iter_items(c, line, v, &l)))
            return rc;
        size_t k = (size_t)inum(sz), nb = (l->n + k - 1) / k;
        struct tlist *o = new_list(c, nb);
        if (!o)
            return oom(c, line);
        for (size_t i = 0; i < nb; i++) {
            struct tlist *b = new_list(c, k);
            if (!b)
                return oom(c, line);
            for (size_t j = 0; j < k; j++) {
                if (i * k + j < l->n)
                    b->v[b->n++] = l->v[i * k + j];
                else if (fill && fill->t != TV_NONE)
                    b->v[b->n++] = *fill;
            }
            o->v[o->n++] = list_val(b);
        }
        *out = list_val(o);
        return 0;
    }
    if (!strcmp(name, "escape") || !strcmp(name, "e") || !strcmp(name, "forceescape")) {
        if ((rc = to_str(c, line, v, &s)))
            return rc;
        struct buf b = {0};
        for (size_t i = 0; i < s.n && !rc; i++) {
            const char *r = s.s[i] == '&'    ? "&amp;"
                            : s.s[i] == '<'  ? "&lt;"
                            : s.s[i] == '>'  ? "&gt;"
                            : s.s[i] == '"'  ? "&#34;"
                            : s.s[i] == '\'' ? "&#39;"
                                             : NULL;
            if (r ? buf_append(&b, r, strlen(r)) : buf_append(&b, &s.s[i], 1))
                rc = oom(c, line);
        }
        if (!rc)
            rc = str_from_buf(c, line, &b, out);
        free(b.p);
        return rc;
    }
    if (!strcmp(name, "pprint")) {
        struct buf b = {0};
        rc = tv_repr_append(&b, v, &c->walk);
        rc = rc ? val_fail(c, line, rc) : str_from_buf(c, line, &b, out);
        free(b.p);
        return rc;
    }
    if (!strcmp(name, "center")) {
        const struct tv *w = arg(a, 0, "width");
        int64_t width = w && is_int(w) ? inum(w) : 80;
        if ((rc = to_str(c, line, v, &s)))
            return rc;
        int64_t len = (int64_t)tv_utf8_len(s.s, s.n);
        if (width > 4096)
            return rt_fail(c, line, "center: width over 4096");
        if (width <= len) {
            *out = s;
            return 0;
        }
        int64_t pad = width - len, left = pad / 2 + (pad & width & 1);
        char *o = arena_alloc(&c->ar, s.n + (size_t)pad + 1);
        if (!o)
            return oom(c, line);
        memset(o, ' ', (size_t)left);
        memcpy(o + left, s.s, s.n);
        memset(o + left + (int64_t)s.n, ' ', (size_t)(pad - left));
        *out = tv_str(o, s.n + (size_t)pad);
        return 0;
    }
    return rt_fail(c, line, "no filter named '%s'", name);
}

/* ---- tests --------------------------------------------------------------- */

static int apply_test(struct ctx *c, int line, const char *name, const struct tv *v,
                      const struct args *a, int *res)
{
    const struct tv *x = arg(a, 0, NULL);
    int rc;
    if ((rc = step(c, line)))
        return rc;
    if (!strcmp(name, "defined"))
        *res = v->t != TV_UNDEF;
    else if (!strcmp(name, "undefined"))
        *res = v->t == TV_UNDEF;
    else if (!strcmp(name, "none"))
        *res = v->t == TV_NONE;
    else if (!strcmp(name, "string"))
        *res = v->t == TV_STR;
    else if (!strcmp(name, "mapping"))
        *res = v->t == TV_DICT;
    else if (!strcmp(name, "sequence"))
        *res = v->t == TV_STR || v->t == TV_LIST || v->t == TV_DICT;
    else if (!strcmp(name, "iterable"))
        *res = v->t == TV_STR || v->t == TV_LIST || v->t == TV_DICT || v->t == TV_NS ||
               v->t == TV_UNDEF;
    else if (!strcmp(name, "number"))
        *res = is_num(v);
    else if (!strcmp(name, "integer"))
        *res = v->t == TV_INT;
    else if (!strcmp(name, "float"))
        *res = v->t == TV_FLOAT;
    else if (!strcmp(name, "boolean"))
        *res = v->t == TV_BOOL;
    else if (!strcmp(name, "true"))
        *res = v->t == TV_BOOL && v->b;
    else if (!strcmp(name, "false"))
        *res = v->t == TV_BOOL && !v->b;
    else if (!strcmp(name, "callable"))
        *res = v->t == TV_MACRO || v->t == TV_FUNC || v->t == TV_METHOD;
    else if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        if (!is_int(v))
            return rt_fail(c, line, "the %s test needs an integer", name);
        *res = (inum(v) & 1) == (name[0] == 'o');
    } else if (!strcmp(name, "divisibleby")) {
        if (!is_int(v) || !x || !is_int(x) || !inum(x))
            return rt_fail(c, line, "divisibleby needs two integers, the second not zero");
        /* INT64_MIN % -1 traps; every number is divisible by -1 */
        *res = inum(x) == -1 || inum(v) % inum(x) == 0;
    } else if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        int any = 0, ok = v->t == TV_STR;
        for (size_t i = 0; ok && i < v->n; i++) {
            unsigned char ch = (unsigned char)v->s[i];
            if (isalpha(ch)) {
                any = 1;
                ok = name[0] == 'l' ? !isupper(ch) : !islower(ch);
            }
        }
        *res = ok && any;
    } else {
        static const struct {
            const char *n;
            int op;
        } cmp[] = {{"eq", OP_EQ}, {"equalto", OP_EQ}, {"==", OP_EQ},       {"ne", OP_NE},
                   {"!=", OP_NE}, {"lt", OP_LT},      {"lessthan", OP_LT}, {"<", OP_LT},
                   {"le", OP_LE}, {"<=", OP_LE},      {"gt", OP_GT},       {"greaterthan", OP_GT},
                   {">", OP_GT},  {"ge", OP_GE},      {">=", OP_GE},       {"in", OP_IN}};
        for (size_t i = 0; i < sizeof cmp / sizeof *cmp; i++)
            if (!strcmp(name, cmp[i].n)) {
                if (!x)
                    return rt_fail(c, line, "the %s test needs an argument", name);
                return compare(c, line, cmp[i].op, v, x, res);
            }
        if (!strcmp(name, "sameas")) {
            if (!x)
                return rt_fail(c, line, "sameas needs an argument");
            *res = (v->t == x->t && (v->t == TV_NONE || v->t == TV_UNDEF)) ||
                   (v->t == TV_BOOL && x->t == TV_BOOL && v->b == x->b) ||
                   (v->t == x->t && v->t == TV_LIST && v->l == x->l) ||
                   (v->t == x->t && (v->t == TV_DICT || v->t == TV_NS) && v->d == x->d);
            return 0;
        }
        return rt_fail(c, line, "no test named '%s'", name);
    }
    return 0;
}

/* ---- methods ------------------------------------------------------------- */

static int str_split(struct ctx *c, int line, const struct tv *s, const struct tv *sep,
                     int64_t maxsplit, struct tv *out)
{
    struct tlist *l = new_list(c, s->n + 1);
    if (!l)
        return oom(c, line);
    if (sep && sep->t != TV_NONE) {
        if (sep->t != TV_STR)
            return rt_fail(c, line, "split: the separator must be a string");
        if (!sep->n)
            return rt_fail(c, line, "empty separator");
        size_t i = 0;
        for (;;) {
            const char *hit = maxsplit != 0 ? mem_find(s->s + i, s->n - i, sep->s, sep->n) : NULL;
            if (!hit) {
                l->v[l->n++] = tv_str(s->s + i, s->n - i);
                break;
            }
            l->v[l->n++] = tv_str(s->s + i, (size_t)(hit - (s->s + i)));
            i = (size_t)(hit - s->s) + sep->n;
            if (maxsplit > 0)
                maxsplit--;
        }
    } else {
        size_t i = 0;
        for (;;) {
            while (i < s->n) { /* skip whitespace */
                size_t j = i;
                if (!py_space(utf8_next(s->s, s->n, &j)))
                    break;
                i = j;
            }
            if (i >= s->n)
                break;
            if (maxsplit == 0) {
                struct tv rest =
                    str_strip(&(struct tv){.t = TV_STR, .s = s->s + i, .n = s->n - i}, NULL, 0, 1);
                l->v[l->n++] = rest;
                break;
            }
            size_t st = i;
            while (i < s->n) {
                size_t j = i;
                if (py_space(utf8_next(s->s, s->n, &j)))
                    break;
                i = j;
            }
            l->v[l->n++] = tv_str(s->s + st, i - st);
            if (maxsplit > 0)
                maxsplit--;
        }
    }
    *out = list_val(l);
    return 0;
}

static int affix(const struct tv *s, const struct tv *p, int end)
{
    if (p->t != TV_STR || p->n > s->n)
        return 0;
    return !memcmp(end ? s->s + s->n - p->n : s->s, p->s, p->n);
}

static int str_method(struct ctx *c, int line, const struct tv *s, const char *name,
                      const struct args *a, struct tv *out)
{
    const struct tv *x = arg(a, 0, NULL), *y = arg(a, 1, NULL);
    int rc;
    if (!strcmp(name, "strip") || !strcmp(name, "lstrip") || !strcmp(name, "rstrip")) {
        if (x && x->t != TV_NONE && (rc = need_str(c, line, x, name)))
            return rc;
        *out = str_strip(s, x && x->t == TV_STR ? x : NULL, name[0] != 'r', name[0] != 'l');
        return 0;
    }
    if (!strcmp(name, "split") || !strcmp(name, "rsplit")) {
        const struct tv *ms = arg(a, 1, "maxsplit");
        int64_t maxsplit = ms && is_int(ms) ? inum(ms) : -1;
        if (name[0] == 'r' && maxsplit >= 0)
            return rt_fail(c, line, "rsplit with maxsplit is not supported");
        return str_split(c, line, s, arg(a, 0, "sep"), maxsplit, out);
    }
    if (!strcmp(name, "startswith") || !strcmp(name, "endswith")) {
        if (!x)
            return rt_fail(c, line, "%s needs an argument", name);
        int r = 0, end = name[0] == 'e';
        if (x->t == TV_LIST)
            for (size_t i = 0; i < x->l->n && !r; i++)
                r = affix(s, &x->l->v[i], end);
        else if (x->t == TV_STR)
            r = affix(s, x, end);
        else
            return rt_fail(c, line, "%s arg must be str or a tuple of str", name);
        *out = tv_bool(r);
        return 0;
    }
    if (!strcmp(name, "lower"))
        return ascii_case(c, line, s, 0, out);
    if (!strcmp(name, "upper"))
        return ascii_case(c, line, s, 1, out);
    if (!strcmp(name, "capitalize"))
        return ascii_case(c, line, s, 2, out);
    if (!strcmp(name, "title"))
        return ascii_case(c, line, s, 4, out);
    if (!strcmp(name, "swapcase"))
        return ascii_case(c, line, s, 5, out);
    if (!strcmp(name, "replace")) {
        const struct tv *cnt = arg(a, 2, "count");
        if (!x || !y || x->t != TV_STR || y->t != TV_STR)
            return rt_fail(c, line, "replace needs two strings");
        int64_t left = cnt && is_int(cnt) ? inum(cnt) : -1;
        struct buf b = {0};
        size_t i = 0;
        rc = 0;
        if (!x->n) { /* "ab".replace("", "-") == "-a-b-" */
            for (size_t k = 0; k <= s->n && !rc; k++) {
                if (left != 0 && (k == s->n || ((unsigned char)s->s[k] & 0xC0) != 0x80)) {
                    rc = vbuf_append(c, line, &b, y->s, y->n);
                    if (left > 0)
                        left--;
                }
                if (!rc && k < s->n)
                    rc = vbuf_append(c, line, &b, &s->s[k], 1);
            }
        } else {
            while (!rc) {
                const char *hit = left != 0 ? mem_find(s->s + i, s->n - i, x->s, x->n) : NULL;
                if (!hit) {
                    rc = vbuf_append(c, line, &b, s->s + i, s->n - i);
                    break;
                }
                rc = vbuf_append(c, line, &b, s->s + i, (size_t)(hit - s->s) - i);
                if (!rc)
                    rc = vbuf_append(c, line, &b, y->s, y->n);
                i = (size_t)(hit - s->s) + x->n;
                if (left > 0)
                    left--;
            }
        }
        if (!rc)
            rc = str_from_buf(c, line, &b, out);
        free(b.p);
        return rc;
    }
    if (!strcmp(name, "find") || !strcmp(name, "rfind") || !strcmp(name, "index") ||
        !strcmp(name, "count")) {
        if (!x || x->t != TV_STR)
            return rt_fail(c, line, "%s needs a string", name);
        if (!strcmp(name, "count")) {
            int64_t n = 0;
            if (!x->n)
                n = (int64_t)tv_utf8_len(s->s, s->n) + 1;
            else
                for (const char *p = s->s; (p = mem_find(p, (size_t)(s->s + s->n - p), x->s, x->n));
                     p += x->n)
                    n++;
            *out = tv_int(n);
            return 0;
        }
        const char *hit = NULL;
        if (name[0] == 'r') {
            for (size_t i = s->n + 1; i-- > 0 && !hit;)
                if (i + x->n <= s->n && !memcmp(s->s + i, x->s, x->n))
                    hit = s->s + i;
        } else
            hit = mem_find(s->s, s->n, x->s, x->n);
        if (!hit && name[0] == 'i')
            return rt_fail(c, line, "substring not found");
        *out = tv_int(hit ? (int64_t)tv_utf8_len(s->s, (size_t)(hit - s->s)) : -1);
        return 0;
    }
    if (!strcmp(name, "join")) {
        struct tlist *l;
        if (!x)
            return rt_fail(c, line, "join needs an iterable");
        if ((rc = iter_items(c, line, x, &l)))
            return rc;
        struct buf b = {0};
        for (size_t i = 0; i < l->n && !rc; i++) {
            if (l->v[i].t != TV_STR)
                rc = rt_fail(c, line, "sequence item %zu: expected str instance, %s found", i,
                             tv_type_name(&l->v[i]));
            else if (!i || !(rc = vbuf_append(c, line, &b, s->s, s->n)))
                rc = vbuf_append(c, line, &b, l->v[i].s, l->v[i].n);
        }
        if (!rc)
            rc = str_from_buf(c, line, &b, out);
        free(b.p);
        return rc;
    }
    if (!strcmp(name, "splitlines")) {
        struct tlist *l = new_list(c, s->n + 1);
        if (!l)
            return oom(c, line);
        size_t i = 0;
        while (i < s->n) {
            size_t st = i;
            while (i < s->n && s->s[i] != '\n' && s->s[i] != '\r')
                i++;
            l->v[l->n++] = tv_str(s->s + st, i - st);
            if (i < s->n)
                i += (s->s[i] == '\r' && i + 1 < s->n && s->s[i + 1] == '\n') ? 2 : 1;
        }
        *out = list_val(l);
        return 0;
    }
    if (!strncmp(name, "is", 2)) {
        int r = s->n > 0, cased = 0;
        for (size_t i = 0; i < s->n && r; i++) {
            unsigned char ch = (unsigned char)s->s[i];
            if (!strcmp(name, "isdigit"))
                r = isdigit(ch);
            else if (!strcmp(name, "isalpha"))
                r = isalpha(ch);
            else if (!strcmp(name, "isalnum"))
                r = isalnum(ch);
            else if (!strcmp(name, "isspace"))
                r = isspace(ch);
            else if (!strcmp(name, "isupper")) {
                r = !islower(ch);
                cased |= isupper(ch);
            } else {
                r = !isupper(ch);
                cased |= islower(ch);
            }
        }
        if (!strcmp(name, "isupper") || !strcmp(name, "islower"))
            r = r && cased;
        *out = tv_bool(r);
        return 0;
    }
    if (!strcmp(name, "format")) {
        struct buf b = {0};
        int next = 0;
        rc = 0;
        for (size_t i = 0; i < s->n && !rc; i++) {
            char ch = s->s[i];
            if ((ch == '{' || ch == '}') && i + 1 < s->n && s->s[i + 1] == ch) {
                rc = buf_append(&b, &ch, 1);
                i++;
            } else if (ch == '{') {
                const char *close = memchr(s->s + i, '}', s->n - i);
                if (!close) {
                    rc = rt_fail(c, line, "format: a '{' is not closed");
                    break;
                }
                size_t fl = (size_t)(close - s->s) - i - 1;
                int idx = next++;
                if (fl) {
                    char f[16];
                    snprintf(f, sizeof f, "%.*s", (int)(fl < 15 ? fl : 15), s->s + i + 1);
                    char *e;
                    idx = (int)strtol(f, &e, 10);
                    if (*e) {
                        const struct tv *kv = arg(a, -1, f);
                        if (!kv) {
                            rc = rt_fail(c, line, "format: no argument '%s'", f);
                            break;
                        }
                        rc = vbuf_append_str(c, line, &b, kv);
                        i = (size_t)(close - s->s);
                        continue;
                    }
                }
                const struct tv *av = arg(a, idx, NULL);
                if (!av) {
                    rc = rt_fail(c, line, "format: replacement index %d out of range", idx);
                    break;
                }
                rc = vbuf_append_str(c, line, &b, av);
                i = (size_t)(close - s->s);
            } else
                rc = buf_append(&b, &ch, 1) ? oom(c, line) : 0;
        }
        if (!rc)
            rc = str_from_buf(c, line, &b, out);
        free(b.p);
        return rc;
    }
    return rt_fail(c, line, "'str' object has no method '%s'", name);
}

static int call_method(struct ctx *c, int line, const struct tv *self, const char *name,
                       const struct args *a, struct tv *out)
{
    if (in_names(k_unsafe, name))
        return rt_fail(c, line, "access to attribute '%s' of '%s' object is unsafe.", name,
                       tv_type_name(self));
    if (self->t == TV_STR)
        return str_method(c, line, self, name, a, out);
    const struct tv *x = arg(a, 0, NULL);
    if (self->t == TV_DICT) {
        const struct tdict *d = self->d;
        if (!strcmp(name, "get")) {
            const struct tv *def = arg(a, 1, "default");
            const struct tv *v = x ? tv_dict_find(d, x, &c->walk) : NULL;
            if (c->walk.over)
                return walk_fail(c, line);
            *out = v ? *v : def ? *def : tv_none();
            return 0;
        }
        if (!strcmp(name, "copy")) {
            *out = *self;
            return 0;
        }
        struct tlist *l = new_list(c, d->n);
        if (!l)
            return oom(c, line);
        for (size_t i = 0; i < d->n; i++) {
            if (!strcmp(name, "keys"))
                l->v[i] = d->k[i];
            else if (!strcmp(name, "values"))
                l->v[i] = d->v[i];
            else {
                struct tlist *pair = new_list(c, 2);
                if (!pair)
                    return oom(c, line);
                pair->v[0] = d->k[i];
                pair->v[1] = d->v[i];
                pair->n = 2;
                pair->tuple = 1;
                l->v[i] = list_val(pair);
            }
        }
        l->n = d->n;
        *out = list_val(l);
        return 0;
    }
    if (self->t == TV_LIST) {
        if (!strcmp(name, "copy")) {
            *out = *self;
            return 0;
        }
        if (!x)
            return rt_fail(c, line, "%s needs an argument", name);
        int64_t n = 0, first = -1;
        for (size_t i = 0; i < self->l->n; i++)
            if (tv_equal(&self->l->v[i], x, &c->walk)) {
                n++;
                if (first < 0)
                    first = (int64_t)i;
            }
        if (c->walk.over)
            return walk_fail(c, line);
        if (!strcmp(name, "index") && first < 0)
            return rt_fail(c, line, "the value is not in the list");
        *out = tv_int(name[0] == 'i' ? first : n);
        return 0;
    }
    if (self->t == TV_LOOP && !strcmp(name, "cycle")) {
        if (!a->n)
            return rt_fail(c, line, "no items for cycling given");
        *out = a->v[self->loop->index0 % a->n];
        return 0;
    }
    return rt_fail(c, line, "'%s' object has no method '%s'", tv_type_name(self), name);
}

/* ---- globals ------------------------------------------------------------- */

static int call_global(struct ctx *c, int line, int fn, const struct args *a, struct tv *out)
{
    switch (fn) {
    case FN_RANGE: {
        int64_t v[3] = {0, 0, 1};
        if (a->n < 1 || a->n > 3 || a->nkw)
            return rt_fail(c, line, "range expects 1 to 3 integer arguments");
        for (int i = 0; i < a->n; i++) {
            if (!is_int(&a->v[i]))
                return rt_fail(c, line, "range: '%s' object cannot be interpreted as an integer",
                               tv_type_name(&a->v[i]));
        }
        if (a->n == 1)
            v[1] = inum(&a->v[0]);
        else {
            v[0] = inum(&a->v[0]);
            v[1] = inum(&a->v[1]);
            if (a->n == 3)
                v[2] = inum(&a->v[2]);
        }
        if (!v[2])
            return rt_fail(c, line, "range() arg 3 must not be zero");
        /* the exact count, in uint64_t: the bounds may be INT64_MIN and INT64_MAX */
        uint64_t cnt = 0;
        if (v[2] > 0 && v[1] > v[0])
            cnt = ((uint64_t)v[1] - (uint64_t)v[0] - 1) / (uint64_t)v[2] + 1;
        else if (v[2] < 0 && v[0] > v[1])
            cnt = ((uint64_t)v[0] - (uint64_t)v[1] - 1) / (0 - (uint64_t)v[2]) + 1;
        if (cnt > c->lim.max_steps)
            return errmsg(c->err, c->errlen, -E2BIG,
                          "line %d: range of %llu items is over the step budget", line,
                          (unsigned long long)cnt);
        struct tlist *l = new_list(c, (size_t)cnt);
        if (!l)
            return oom(c, line);
        int64_t x = v[0];
        for (uint64_t i = 0; i < cnt; i++) {
            l->v[l->n++] = tv_int(x);
            if (i + 1 < cnt)
                x += v[2]; /* the next item: within the bounds, no overflow */
        }
        *out = list_val(l);
        return 0;
    }
    case FN_NAMESPACE:
    case FN_DICT: {
        struct tdict *d = arena_alloc(&c->ar, sizeof(*d));
        if (!d)
            return oom(c, line);
        if (a->n > 1 || (a->n == 1 && a->v[0].t != TV_DICT && a->v[0].t != TV_NS))
            return rt_fail(c, line, "%s() takes a mapping and keyword arguments",
                           fn == FN_DICT ? "dict" : "namespace");
        int rc = 0;
        for (size_t i = 0; a->n && i < a->v[0].d->n && !rc; i++)
            rc = tv_dict_set(&c->ar, d, &a->v[0].d->k[i], &a->v[0].d->v[i], &c->walk);
        for (int i = 0; i < a->nkw && !rc; i++) {
            struct tv k = tv_str(a->kwn[i], strlen(a->kwn[i]));
            rc = tv_dict_set(&c->ar, d, &k, &a->kw[i], &c->walk);
        }
        if (rc)
            return val_fail(c, line, rc);
        *out = (struct tv){.t = fn == FN_DICT ? TV_DICT : TV_NS, .d = d};
        return 0;
    }
    case FN_RAISE: {
        struct tv m = tv_str("", 0);
        int rc;
        if (a->n && (rc = to_str(c, line, &a->v[0], &m)))
            return rc;
        return errmsg(c->err, c->errlen, -EPERM, "%.*s", (int)(m.n > 400 ? 400 : m.n), m.s);
    }
    case FN_STRFTIME: {
        if (a->n != 1 || a->v[0].t != TV_STR)
            return rt_fail(c, line, "strftime_now expects a format string");
        char fmt[128], o[256];
        snprintf(fmt, sizeof fmt, "%.*s", (int)(a->v[0].n < 127 ? a->v[0].n : 127), a->v[0].s);
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t n = strftime(o, sizeof o, fmt, &tm);
        char *s = adup(c, o, n);
        if (!s)
            return oom(c, line);
        *out = tv_str(s, n);
        return 0;
    }
    }
    return rt_fail(c, line, "unknown function");
}

/* ---- expressions --------------------------------------------------------- */

static int eval(struct ctx *c, struct frame *f, const struct expr *e, struct tv *out)
{
    int rc, line = e->line;
    struct tv a, b, d;
    if ((rc = step(c, line)))
        return rc;
    if (++c->depth > c->lim.max_depth + 400) {
        c->depth--;
        return errmsg(c->err, c->errlen, -E2BIG, "line %d: expression nested too deep", line);
    }
    switch (e->k) {
    case E_LIT:
        *out = e->lit;
        break;
    case E_NAME: {
        const struct tv *v = lookup(c, f, e->name);
        if (v)
            *out = *v;
        else {
            int fn = -1;
            for (size_t i = 0; i < sizeof k_fn_names / sizeof *k_fn_names; i++)
                if (!strcmp(e->name, k_fn_names[i]))
                    fn = (int)i;
            if (fn >= 0)
                *out = (struct tv){.t = TV_FUNC, .fn = fn};
            else
                rc = undef(c, out, "'%s' is undefined", e->name);
        }
        break;
    }
    case E_ATTR:
        if (!(rc = eval(c, f, e->a, &a)))
            rc = get_attr(c, line, &a, e->name, out);
        break;
    case E_ITEM:
        if (!(rc = eval(c, f, e->a, &a)) && !(rc = eval(c, f, e->b, &b)))
            rc = get_item(c, line, &a, &b, out);
        break;
    case E_SLICE: {
        struct tv lo = tv_none(), hi = tv_none(), st = tv_none();
        if (!(rc = eval(c, f, e->a, &a)) && (!e->b || !(rc = eval(c, f, e->b, &lo))) &&
            (!e->c || !(rc = eval(c, f, e->c, &hi))) && (!e->d || !(rc = eval(c, f, e->d, &st))))
            rc = get_slice(c, line, &a, &lo, &hi, &st, out);
        break;
    }
    case E_CALL: {
        struct args args;
        if (!(rc = eval(c, f, e->a, &a)) && !(rc = eval_args(c, f, e, &args)))
            rc = call_value(c, line, &a, &args, NULL, out);
        break;
    }
    case E_FILTER: {
        struct args args;
        if (!(rc = eval(c, f, e->a, &a)) && !(rc = eval_args(c, f, e, &args)))
            rc = apply_filter(c, line, e->name, &a, &args, out);
        break;
    }
    case E_TEST: {
        struct args args;
        int r;
        if (!(rc = eval(c, f, e->a, &a)) && !(rc = eval_args(c, f, e, &args)) &&
            !(rc = apply_test(c, line, e->name, &a, &args, &r)))
            *out = tv_bool(e->op ? !r : r);
        break;
    }
    case E_BIN:
        if (!(rc = eval(c, f, e->a, &a)) && !(rc = eval(c, f, e->b, &b)))
            rc = binop(c, line, e->op, &a, &b, out);
        break;
    case E_CMP: {
        int r = 1;
        if ((rc = eval(c, f, e->args[0], &a)))
            break;
        for (int i = 1; i < e->nargs && r && !rc; i++) {
            if (!(rc = eval(c, f, e->args[i], &b)) &&
                !(rc = compare(c, line, e->ops[i - 1], &a, &b, &r)))
                a = b;
        }
        *out = tv_bool(r);
        break;
    }
    case E_NEG:
    case E_POS:
        if ((rc = eval(c, f, e->a, &a)))
            break;
        if (a.t == TV_FLOAT)
            *out = tv_float(e->k == E_NEG ? -a.f : a.f);
        else if (is_int(&a)) {
            if (e->k == E_NEG && inum(&a) == INT64_MIN)
                rc = rt_fail(c, line, "integer overflow in '-'");
            else
                *out = tv_int(e->k == E_NEG ? -inum(&a) : inum(&a));
        } else if (a.t == TV_UNDEF)
            rc = undef_error(c, line, &a);
        else
            rc = rt_fail(c, line, "bad operand type for unary %c: '%s'", e->k == E_NEG ? '-' : '+',
                         tv_type_name(&a));
        break;
    case E_NOT:
        if (!(rc = eval(c, f, e->a, &a)))
            *out = tv_bool(!tv_truthy(&a));
        break;
    case E_AND:
    case E_OR:
        if ((rc = eval(c, f, e->a, &a)))
            break;
        if (tv_truthy(&a) == (e->k == E_OR))
            *out = a;
        else
            rc = eval(c, f, e->b, out);
        break;
    case E_COND:
        if ((rc = eval(c, f, e->a, &a)))
            break;
        if (tv_truthy(&a))
            rc = eval(c, f, e->b, out);
        else if (e->c)
            rc = eval(c, f, e->c, out);
        else
            rc = undef(c, out, "the inline if had no else");
        break;
    case E_LIST:
    case E_TUPLE: {
        struct tlist *l = new_list(c, (size_t)e->nargs);
        if (!l) {
            rc = oom(c, line);
            break;
        }
        l->tuple = e->k == E_TUPLE;
        for (int i = 0; i < e->nargs && !rc; i++)
            if (!(rc = eval(c, f, e->args[i], &l->v[l->n])))
                l->n++;
        *out = list_val(l);
        break;
    }
    case E_DICT: {
        struct tdict *dd = arena_alloc(&c->ar, sizeof(*dd));
        if (!dd) {
            rc = oom(c, line);
            break;
        }
        for (int i = 0; i + 1 < e->nargs && !rc; i += 2)
            if (!(rc = eval(c, f, e->args[i], &a)) && !(rc = eval(c, f, e->args[i + 1], &b)) &&
                (rc = tv_dict_set(&c->ar, dd, &a, &b, &c->walk)))
                rc = val_fail(c, line, rc);
        *out = (struct tv){.t = TV_DICT, .d = dd};
        break;
    }
    case E_CONCAT: {
        struct buf cb = {0};
        if (!(rc = eval(c, f, e->a, &a)) && !(rc = eval(c, f, e->b, &b))) {
            if ((rc = tv_str_append(&cb, &a, &c->walk)) || (rc = tv_str_append(&cb, &b, &c->walk)))
                rc = val_fail(c, line, rc);
            else
                rc = str_from_buf(c, line, &cb, out);
        }
        free(cb.p);
        break;
    }
    }
    (void)d;
    c->depth--;
    return rc;
}

/* ---- statements ---------------------------------------------------------- */

/* Applies a filter chain whose innermost base is NULL to v (filter and set blocks). */
static int apply_chain(struct ctx *c, struct frame *f, const struct expr *e, const struct tv *v,
                       struct tv *out)
{
    if (!e) {
        *out = *v;
        return 0;
    }
    struct tv in;
    struct args args;
    int rc = apply_chain(c, f, e->a, v, &in);
    if (!rc && !(rc = eval_args(c, f, e, &args)))
        rc = apply_filter(c, e->line, e->name, &in, &args, out);
    return rc;
}

static int unpack(struct ctx *c, int line, struct frame *f, int n, const char **names,
                  const struct tv *v)
{
    if (n == 1)
        return assign(c, line, f, names[0], v);
    struct tlist *l;
    int rc;
    if (v->t == TV_LIST)
        l = v->l;
    else if ((rc = iter_items(c, line, v, &l)))
        return rc;
    if ((int)l->n != n)
        return rt_fail(c, line, "cannot unpack %zu values into %d names", l->n, n);
    for (int i = 0; i < n; i++)
        if ((rc = assign(c, line, f, names[i], &l->v[i])))
            return rc;
    return 0;
}

/* The body of for statement s over the items of it, at loop depth `depth`. */
static int exec_loop(struct ctx *c, struct frame *f, const struct stmt *s, const struct tv *it,
                     int depth, struct buf *out)
{
    struct tlist *l;
    int rc = iter_items(c, s->line, it, &l);
    if (rc)
        return rc;
    if (depth > c->lim.max_depth)
        return errmsg(c->err, c->errlen, -E2BIG, "line %d: recursive loop over %d deep", s->line,
                      c->lim.max_depth);
    struct frame *fr = arena_alloc(&c->ar, sizeof(*fr));
    if (!fr)
        return oom(c, s->line);
    fr->parent = f;
    if (s->cond) { /* the loop filter runs first; loop.length counts what it keeps */
        struct tlist *kept = new_list(c, l->n);
        if (!kept)
            return oom(c, s->line);
        for (size_t i = 0; i < l->n; i++) {
            struct tv r;
            if ((rc = unpack(c, s->line, fr, s->ntargets, s->targets, &l->v[i])) ||
                (rc = eval(c, fr, s->cond, &r)))
                return rc;
            if (tv_truthy(&r))
                kept->v[kept->n++] = l->v[i];
        }
        l = kept;
    }
    struct tloop *lp = arena_alloc(&c->ar, sizeof(*lp));
    if (!lp)
        return oom(c, s->line);
    lp->length = (int64_t)l->n;
    lp->items = l->v;
    lp->depth = depth;
    if (s->recursive) {
        lp->s = s;
        lp->f = f;
    }
    struct tv lv = {.t = TV_LOOP, .loop = lp};
    if ((rc = assign(c, s->line, fr, "loop", &lv)))
        return rc;
    for (size_t i = 0; i < l->n; i++) {
        lp->index0 = (int64_t)i;
        if ((rc = step(c, s->line)) ||
            (rc = unpack(c, s->line, fr, s->ntargets, s->targets, &l->v[i])) ||
            (rc = exec_body(c, fr, s->body, out)))
            return rc;
        int ctl = c->ctl;
        c->ctl = CTL_NONE;
        if (ctl == CTL_BREAK)
            break;
    }
    if (!l->n && s->else_body)
        return exec_body(c, f, s->else_body, out);
    return 0;
}

static int exec_for(struct ctx *c, struct frame *f, const struct stmt *s, struct buf *out)
{
    struct tv it;
    int rc = eval(c, f, s->e, &it);
    return rc ? rc : exec_loop(c, f, s, &it, 1, out);
}

static int exec_stmt(struct ctx *c, struct frame *f, const struct stmt *s, struct buf *out)
{
    struct tv v, r;
    int rc;
    if ((rc = step(c, s->line)))
        return rc;
    switch (s->k) {
    case S_TEXT:
        return emit(c, s->line, out, s->text, s->n);
    case S_OUT: {
        if ((rc = eval(c, f, s->e, &v)))
            return rc;
        if (v.t == TV_STR)
            return emit(c, s->line, out, v.s, v.n);
        struct buf b = {0};
        rc = tv_str_append(&b, &v, &c->walk);
        rc = rc ? val_fail(c, s->line, rc) : emit(c, s->line, out, b.p ? b.p : "", b.n);
        free(b.p);
        return rc;
    }
    case S_IF:
        if ((rc = eval(c, f, s->e, &v)))
            return rc;
        return exec_body(c, f, tv_truthy(&v) ? s->body : s->else_body, out);
    case S_FOR:
        return exec_for(c, f, s, out);
    case S_SET:
        if ((rc = eval(c, f, s->e, &v)))
            return rc;
        if (s->attr) {
            const struct tv *ns = lookup(c, f, s->targets[0]);
            if (!ns || ns->t != TV_NS)
                return rt_fail(c, s->line, "cannot assign attribute on non-namespace object");
            struct tv k = tv_str(s->attr, strlen(s->attr));
            rc = tv_dict_set(&c->ar, ns->d, &k, &v, NULL); /* a string key */
            return rc ? val_fail(c, s->line, rc) : 0;
        }
        return unpack(c, s->line, f, s->ntargets, s->targets, &v);
    case S_SETBLK:
    case S_FILTER: {
        struct buf b = {0};
        rc = exec_body(c, f, s->body, &b);
        if (!rc)
            rc = str_from_buf(c, s->line, &b, &v);
        free(b.p);
        if (rc || (rc = apply_chain(c, f, s->e, &v, &r)))
            return rc;
        if (s->k == S_SETBLK)
            return assign(c, s->line, f, s->targets[0], &r);
        if ((rc = to_str(c, s->line, &r, &v)))
            return rc;
        return emit(c, s->line, out, v.s, v.n);
    }
    case S_MACRO: {
        struct tmacro *m = arena_alloc(&c->ar, sizeof(*m));
        if (!m)
            return oom(c, s->line);
        *m = *s->macro;
        m->closure = f;
        v = (struct tv){.t = TV_MACRO, .m = m};
        return assign(c, s->line, f, m->name, &v);
    }
    case S_CALL: {
        struct tmacro *m = arena_alloc(&c->ar, sizeof(*m));
        struct tv *caller = arena_alloc(&c->ar, sizeof(*caller));
        if (!m || !caller)
            return oom(c, s->line);
        *m = *s->macro;
        m->closure = f;
        *caller = (struct tv){.t = TV_MACRO, .m = m};
        struct tv fn;
        struct args args;
        if ((rc = eval(c, f, s->e->a, &fn)) || (rc = eval_args(c, f, s->e, &args)))
            return rc;
        if (fn.t != TV_MACRO)
            return rt_fail(c, s->line, "a call block must call a macro");
        if ((rc = call_macro(c, s->line, fn.m, &args, caller, &v)))
            return rc;
        return emit(c, s->line, out, v.s, v.n);
    }
    case S_BREAK:
        c->ctl = CTL_BREAK;
        return 0;
    case S_CONTINUE:
        c->ctl = CTL_CONTINUE;
        return 0;
    case S_BODY:
        return exec_body(c, f, s->body, out);
    }
    return 0;
}

static int exec_body(struct ctx *c, struct frame *f, const struct stmt *s, struct buf *out)
{
    for (; s && !c->ctl; s = s->next) {
        int rc = exec_stmt(c, f, s, out);
        if (rc)
            return rc;
    }
    return 0;
}

int tpl_render(const struct tpl *t, const cJSON *ctxj, const struct tpl_limits *lim,
               struct buf *out, char *err, size_t errlen)
{
    struct ctx c = {.err = err, .errlen = errlen};
    if (lim)
        c.lim = *lim;
    if (!c.lim.max_steps)
        c.lim.max_steps = 10u * 1000 * 1000;
    if (!c.lim.max_output)
        c.lim.max_output = 16u << 20;
    if (!c.lim.max_memory)
        c.lim.max_memory = 256u << 20;
    if (!c.lim.max_depth)
        c.lim.max_depth = 200;
    c.ar.limit = c.lim.max_memory;
    c.walk = (struct tv_walk){
        .steps = &c.steps, .max_steps = c.lim.max_steps, .max_bytes = c.lim.max_memory};
    if (ctxj && !cJSON_IsObject(ctxj))
        return errmsg(err, errlen, -EINVAL, "the template's variables must be a JSON object");
    int rc = 0;
    for (const cJSON *j = ctxj ? ctxj->child : NULL; j && !rc; j = j->next) {
        struct tv k = tv_str(j->string, strlen(j->string)), v;
        if (tv_from_json(&c.ar, j, &v) || tv_dict_set(&c.ar, &c.globals, &k, &v, NULL))
            rc = oom(&c, 0);
    }
    struct frame root = {0};
    c.root = &root;
    if (!rc)
        rc = exec_body(&c, &root, t->body, out);
    arena_free(&c.ar);
    return rc;
}

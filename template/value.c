/*
 * template/value.c - the interpreter's values: an arena they live in, and
 * Python's meaning of truth, equality, order, str(), repr() and
 * json.dumps() for them, so output matches jinja2's byte for byte.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template/internal.h"

struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

void *arena_alloc(struct arena *a, size_t n)
{
    if (n > SIZE_MAX - 15 - sizeof(struct arena_chunk)) { /* rounding up would wrap */
        a->over = a->limit != 0;
        return NULL;
    }
    n = (n + 15) & ~(size_t)15;
    if (!n)
        n = 16;
    if (a->limit && (a->used + n > a->limit || a->used + n < a->used)) {
        a->over = 1;
        return NULL;
    }
    struct arena_chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > 65536 - sizeof(*c) ? n : 65536 - sizeof(*c);
        if (!(c = malloc(sizeof(*c) + cap)))
            return NULL;
        c->used = 0;
        c->cap = cap;
        c->next = a->head;
        a->head = c;
    }
    void *p = c->data + c->used;
    c->used += n;
    a->used += n;
    memset(p, 0, n);
    return p;
}

void arena_free(struct arena *a)
{
    for (struct arena_chunk *c = a->head, *nx; c; c = nx) {
        nx = c->next;
        free(c);
    }
    a->head = NULL;
    a->used = 0;
}

int tv_truthy(const struct tv *v)
{
    switch (v->t) {
    case TV_UNDEF:
    case TV_NONE:
        return 0;
    case TV_BOOL:
        return v->b;
    case TV_INT:
        return v->i != 0;
    case TV_FLOAT:
        return v->f != 0;
    case TV_STR:
        return v->n != 0;
    case TV_LIST:
        return v->l->n != 0;
    case TV_DICT:
        return v->d->n != 0;
    default:
        return 1;
    }
}

static int is_num(const struct tv *v)
{
    return v->t == TV_BOOL || v->t == TV_INT || v->t == TV_FLOAT;
}
static double num(const struct tv *v)
{
    return v->t == TV_FLOAT ? v->f : v->t == TV_INT ? (double)v->i : (double)v->b;
}
static int64_t inum(const struct tv *v)
{
    return v->t == TV_INT ? v->i : v->b;
}

/* One element reached by a walk at depth; 0, or -E2BIG with w->over set past a bound (out: the
   text written so far, or NULL). */
static int walk_step(struct tv_walk *w, const struct buf *out, int depth)
{
    if (!w)
        return 0;
    if (!w->over && ++*w->steps > w->max_steps)
        w->over = "steps";
    if (!w->over && depth > TV_WALK_DEPTH)
        w->over = "depth";
    if (!w->over && out && out->n > w->max_bytes)
        w->over = "bytes";
    return w->over ? -E2BIG : 0;
}

static struct tv *dict_find(const struct tdict *d, const struct tv *key, struct tv_walk *w,
                            int depth);

static int equal(const struct tv *a, const struct tv *b, struct tv_walk *w, int depth)
{
    if (walk_step(w, NULL, depth))
        return 0;
    if (is_num(a) && is_num(b)) {
        if (a->t != TV_FLOAT && b->t != TV_FLOAT)
            return inum(a) == inum(b);
        return num(a) == num(b);
    }
    if (a->t != b->t)
        return 0;
    switch (a->t) {
    case TV_UNDEF:
    case TV_NONE:
        return 1;
    case TV_STR:
        return a->n == b->n && memcmp(a->s, b->s, a->n) == 0;
    case TV_LIST:
        if (a->l->n != b->l->n || a->l->tuple != b->l->tuple)
            return 0;
        for (size_t i = 0; i < a->l->n; i++)
            if (!equal(&a->l->v[i], &b->l->v[i], w, depth + 1))
                return 0;
        return 1;
    case TV_DICT:
    case TV_NS:
        if (a->d->n != b->d->n)
            return 0;
        for (size_t i = 0; i < a->d->n; i++) {
            const struct tv *o = dict_find(b->d, &a->d->k[i], w, depth + 1);
            if (!o || !equal(&a->d->v[i], o, w, depth + 1))
                return 0;
        }
        return 1;
    case TV_MACRO:
        return a->m == b->m;
    case TV_FUNC:
        return a->fn == b->fn;
    default:
        return a == b;
    }
}

int tv_equal(const struct tv *a, const struct tv *b, struct tv_walk *w)
{
    return equal(a, b, w, 0);
}

static int compare(const struct tv *a, const struct tv *b, int *out, struct tv_walk *w, int depth)
{
    if (walk_step(w, NULL, depth))
        return -E2BIG;
    if (is_num(a) && is_num(b)) {
        if (a->t != TV_FLOAT && b->t != TV_FLOAT)
            *out = (inum(a) > inum(b)) - (inum(a) < inum(b));
        else
            *out = (num(a) > num(b)) - (num(a) < num(b));
        return 0;
    }
    if (a->t == TV_STR && b->t == TV_STR) {
        size_t n = a->n < b->n ? a->n : b->n;
        int c = memcmp(a->s, b->s, n);
        *out = c ? (c > 0) - (c < 0) : (a->n > b->n) - (a->n < b->n);
        return 0;
    }
    if (a->t == TV_LIST && b->t == TV_LIST) {
        for (size_t i = 0; i < a->l->n && i < b->l->n; i++) {
            if (equal(&a->l->v[i], &b->l->v[i], w, depth + 1))
                continue;
            if (w && w->over)
                return -E2BIG;
            return compare(&a->l->v[i], &b->l->v[i], out, w, depth + 1);
        }
        *out = (a->l->n > b->l->n) - (a->l->n < b->l->n);
        return 0;
    }
    return -EINVAL;
}

int tv_compare(const struct tv *a, const struct tv *b, int *out, struct tv_walk *w)
{
    return compare(a, b, out, w, 0);
}

const char *tv_type_name(const struct tv *v)
{
    switch (v->t) {
    case TV_UNDEF:
        return "Undefined";
    case TV_NONE:
        return "NoneType";
    case TV_BOOL:
        return "bool";
    case TV_INT:
        return "int";
    case TV_FLOAT:
        return "float";
    case TV_STR:
        return "str";
    case TV_LIST:
        return v->l->tuple ? "tuple" : "list";
    case TV_DICT:
        return "dict";
    case TV_NS:
        return "Namespace";
    case TV_MACRO:
        return "Macro";
    case TV_FUNC:
        return "function";
    case TV_METHOD:
        return "method";
    case TV_LOOP:
        return "LoopContext";
    }
    return "?";
}

/* Python's float repr: the shortest digits that read back the same. */
int tv_float_append(struct buf *b, double f)
{
    if (isnan(f))
        return buf_append(b, "nan", 3);
    if (isinf(f))
        return f > 0 ? buf_append(b, "inf", 3) : buf_append(b, "-inf", 4);
    if (f == 0)
        return signbit(f) ? buf_append(b, "-0.0", 4) : buf_append(b, "0.0", 3);
    char d[40];
    int prec = 1;
    for (; prec <= 17; prec++) {
        snprintf(d, sizeof d, "%.*e", prec - 1, f);
        if (strtod(d, NULL) == f)
            break;
    }
    /* d is [-]D[.DDD]e[+-]XX: the digits and the exponent */
    char digits[24];
    int nd = 0, neg = d[0] == '-';
    const char *q = d + neg;
    for (; *q && *q != 'e'; q++)
        if (*q != '.')
            digits[nd++] = *q;
    int exp = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    char o[64];
    int k = 0;
    if (neg)
        o[k++] = '-';
    if (exp >= -5 + 1 && exp < 16) {
        if (exp < 0) {
            o[k++] = '0';
            o[k++] = '.';
            for (int i = 0; i < -exp - 1; i++)
                o[k++] = '0';
            for (int i = 0; i < nd; i++)
                o[k++] = digits[i];
        } else {
            for (int i = 0; i <= exp; i++)
                o[k++] = i < nd ? digits[i] : '0';
            o[k++] = '.';
            if (nd > exp + 1)
                for (int i = exp + 1; i < nd; i++)
                    o[k++] = digits[i];
            else
                o[k++] = '0';
        }
    } else {
        o[k++] = digits[0];
        if (nd > 1) {
            o[k++] = '.';
            for (int i = 1; i < nd; i++)
                o[k++] = digits[i];
        }
        k += snprintf(o + k, sizeof o - (size_t)k, "e%c%02d", exp < 0 ? '-' : '+', abs(exp));
    }
    return buf_append(b, o, (size_t)k);
}

static int put(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

/* repr() of a str: single quotes unless it holds ' and no ". */
static int str_repr(struct buf *b, const char *s, size_t n)
{
    int sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char q = sq && !dq ? '"' : '\'';
    if (buf_append(b, &q, 1))
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[8];
        int rc;
        if (c == '\\')
            rc = put(b, "\\\\");
        else if (c == (unsigned char)q)
            rc = q == '\'' ? put(b, "\\'") : put(b, "\\\"");
        else if (c == '\n')
            rc = put(b, "\\n");
        else if (c == '\r')
            rc = put(b, "\\r");
        else if (c == '\t')
            rc = put(b, "\\t");
        else if (c < 0x20 || c == 0x7f) {
            snprintf(e, sizeof e, "\\x%02x", c);
            rc = put(b, e);
        } else if (c == 0xC2 && i + 1 < n && (unsigned char)s[i + 1] < 0xA0) {
            snprintf(e, sizeof e, "\\x%02x", (unsigned char)s[i + 1]); /* C1 controls */
            rc = put(b, e);
            i++;
        } else
            rc = buf_append(b, &s[i], 1);
        if (rc)
            return -ENOMEM;
    }
    return buf_append(b, &q, 1);
}

static int str_append(struct buf *b, const struct tv *v, struct tv_walk *w, int depth);

static int repr_append(struct buf *b, const struct tv *v, struct tv_walk *w, int depth)
{
    int rc = walk_step(w, b, depth);
    if (rc)
        return rc;
    switch (v->t) {
    case TV_STR:
        return str_repr(b, v->s, v->n);
    case TV_LIST: {
        rc = put(b, v->l->tuple ? "(" : "[");
        for (size_t i = 0; !rc && i < v->l->n; i++) {
            if (i)
                rc = put(b, ", ");
            if (!rc)
                rc = repr_append(b, &v->l->v[i], w, depth + 1);
        }
        if (!rc && v->l->tuple && v->l->n == 1)
            rc = put(b, ",");
        return rc ? rc : put(b, v->l->tuple ? ")" : "]");
    }
    case TV_DICT:
    case TV_NS: {
        rc = put(b, v->t == TV_NS ? "<Namespace {" : "{");
        for (size_t i = 0; !rc && i < v->d->n; i++) {
            if (i)
                rc = put(b, ", ");
            if (!rc)
                rc = repr_append(b, &v->d->k[i], w, depth + 1);
            if (!rc)
                rc = put(b, ": ");
            if (!rc)
                rc = repr_append(b, &v->d->v[i], w, depth + 1);
        }
        return rc ? rc : put(b, v->t == TV_NS ? "}>" : "}");
    }
    default:
        return str_append(b, v, w, depth);
    }
}

int tv_repr_append(struct buf *b, const struct tv *v, struct tv_walk *w)
{
    return repr_append(b, v, w, 0);
}

static int str_append(struct buf *b, const struct tv *v, struct tv_walk *w, int depth)
{
    char n[32];
    switch (v->t) {
    case TV_UNDEF:
        return 0;
    case TV_NONE:
        return put(b, "None");
    case TV_BOOL:
        return put(b, v->b ? "True" : "False");
    case TV_INT:
        snprintf(n, sizeof n, "%lld", (long long)v->i);
        return put(b, n);
    case TV_FLOAT:
        return tv_float_append(b, v->f);
    case TV_STR:
        return buf_append(b, v->s, v->n);
    case TV_LIST:
    case TV_DICT:
    case TV_NS:
        return repr_append(b, v, w, depth);
    case TV_MACRO:
        return put(b, "<Macro>");
    case TV_FUNC:
        return put(b, "<built-in function>");
    case TV_METHOD:
        return put(b, "<built-in method>");
    case TV_LOOP:
        return put(b, "<LoopContext>");
    }
    return 0;
}

int tv_str_append(struct buf *b, const struct tv *v, struct tv_walk *w)
{
    return str_append(b, v, w, 0);
}

static int json_str(struct buf *b, const char *s, size_t n, int ascii)
{
    if (buf_append(b, "\"", 1))
        return -ENOMEM;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *e = NULL;
        char u[8];
        if (c == '"')
            e = "\\\"";
        else if (c == '\\')
            e = "\\\\";
        else if (c == '\n')
            e = "\\n";
        else if (c == '\r')
            e = "\\r";
        else if (c == '\t')
            e = "\\t";
        else if (c == '\b')
            e = "\\b";
        else if (c == '\f')
            e = "\\f";
        else if (c < 0x20) {
            snprintf(u, sizeof u, "\\u%04x", c);
            e = u;
        } else if (c >= 0x80 && ascii) { /* \\uXXXX, a surrogate pair past U+FFFF */
            int len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
            if (i + (size_t)len > n)
                len = 1;
            uint32_t cp = len == 1 ? 0xFFFD : c & (0x7F >> len);
            for (int k = 1; k < len; k++)
                cp = (cp << 6) | ((unsigned char)s[i + (size_t)k] & 0x3F);
            if (buf_append(b, s + run, i - run))
                return -ENOMEM;
            char w[16];
            if (cp >= 0x10000)
                snprintf(w, sizeof w, "\\u%04x\\u%04x", 0xD800 + ((cp - 0x10000) >> 10),
                         0xDC00 + ((cp - 0x10000) & 0x3FF));
            else
                snprintf(w, sizeof w, "\\u%04x", cp);
            if (put(b, w))
                return -ENOMEM;
            i += (size_t)len - 1;
            run = i + 1;
            continue;
        }
        if (!e)
            continue;
        if (buf_append(b, s + run, i - run) || put(b, e))
            return -ENOMEM;
        run = i + 1;
    }
    if (buf_append(b, s + run, n - run))
        return -ENOMEM;
    return buf_append(b, "\"", 1);
}

static int json_nl(struct buf *b, int indent, int level)
{
    if (indent < 0)
        return 0;
    if (buf_append(b, "\n", 1))
        return -ENOMEM;
    for (int i = 0; i < indent * level; i++)
        if (buf_append(b, " ", 1))
            return -ENOMEM;
    return 0;
}

static int key_cmp(const void *x, const void *y)
{
    const struct tv *a = *(const struct tv *const *)x, *b = *(const struct tv *const *)y;
    int c = 0;
    tv_compare(a, b, &c, NULL); /* string keys: no walk to bound */
    return c;
}

static int json_value(struct buf *b, const struct tv *v, int indent, const char *isep,
                      const char *ksep, int sort, int ascii, const char **bad, int level,
                      struct tv_walk *w)
{
    char n[32];
    int rc = 0;
    if (level > 1000) {
        *bad = "a value nested over 1000 deep";
        return -EINVAL;
    }
    if ((rc = walk_step(w, b, level)))
        return rc;
    switch (v->t) {
    case TV_NONE:
        return put(b, "null");
    case TV_BOOL:
        return put(b, v->b ? "true" : "false");
    case TV_INT:
        snprintf(n, sizeof n, "%lld", (long long)v->i);
        return put(b, n);
    case TV_FLOAT:
        if (isnan(v->f))
            return put(b, "NaN");
        if (isinf(v->f))
            return put(b, v->f > 0 ? "Infinity" : "-Infinity");
        return tv_float_append(b, v->f);
    case TV_STR:
        return json_str(b, v->s, v->n, ascii);
    case TV_LIST:
        if (!v->l->n)
            return put(b, "[]");
        rc = put(b, "[");
        for (size_t i = 0; !rc && i < v->l->n; i++) {
            if (i)
                rc = put(b, isep);
            if (!rc)
                rc = json_nl(b, indent, level + 1);
            if (!rc)
                rc = json_value(b, &v->l->v[i], indent, isep, ksep, sort, ascii, bad, level + 1, w);
        }
        if (!rc)
            rc = json_nl(b, indent, level);
        return rc ? rc : put(b, "]");
    case TV_DICT:
    case TV_NS: {
        if (!v->d->n)
            return put(b, "{}");
        const struct tv **keys = malloc(v->d->n * sizeof(*keys));
        if (!keys)
            return -ENOMEM;
        for (size_t i = 0; i < v->d->n; i++) {
            keys[i] = &v->d->k[i];
            if (keys[i]->t != TV_STR && sort) {
                free(keys);
                *bad = "a dict with keys that are not strings (sort_keys)";
                return -EINVAL;
            }
        }
        if (sort)
            qsort(keys, v->d->n, sizeof(*keys), key_cmp);
        rc = put(b, "{");
        for (size_t i = 0; !rc && i < v->d->n; i++) {
            const struct tv *k = keys[i];
            const struct tv *val = &v->d->v[k - v->d->k];
            if (i)
                rc = put(b, isep);
            if (!rc)
                rc = json_nl(b, indent, level + 1);
            if (rc)
                break;
            if (k->t == TV_STR)
                rc = json_str(b, k->s, k->n, ascii);
            else if (k->t == TV_INT || k->t == TV_FLOAT || k->t == TV_BOOL || k->t == TV_NONE) {
                struct buf kb = {0};
                rc = json_value(&kb, k, -1, isep, ksep, sort, ascii, bad, level + 1, w);
                if (!rc)
                    rc = json_str(b, kb.p ? kb.p : "", kb.n, ascii);
                free(kb.p);
            } else {
                *bad = "a dict with keys of a type JSON cannot hold";
                rc = -EINVAL;
            }
            if (!rc)
                rc = put(b, ksep);
            if (!rc)
                rc = json_value(b, val, indent, isep, ksep, sort, ascii, bad, level + 1, w);
        }
        free(keys);
        if (!rc)
            rc = json_nl(b, indent, level);
        return rc ? rc : put(b, "}");
    }
    default:
        *bad = tv_type_name(v);
        return -EINVAL;
    }
}

int tv_json_append(struct buf *b, const struct tv *v, int indent, const char *item_sep,
                   const char *key_sep, int sort_keys, int ascii, const char **bad,
                   struct tv_walk *w)
{
    if (!item_sep)
        item_sep = indent >= 0 ? "," : ", ";
    if (!key_sep)
        key_sep = ": ";
    return json_value(b, v, indent, item_sep, key_sep, sort_keys, ascii, bad, 0, w);
}

struct tv *tv_dict_get(const struct tdict *d, const char *key, size_t n)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == TV_STR && d->k[i].n == n && memcmp(d->k[i].s, key, n) == 0)
            return &d->v[i];
    return NULL;
}

static struct tv *dict_find(const struct tdict *d, const struct tv *key, struct tv_walk *w,
                            int depth)
{
    if (key->t == TV_STR)
        return tv_dict_get(d, key->s, key->n);
    for (size_t i = 0; i < d->n && !(w && w->over); i++)
        if (equal(&d->k[i], key, w, depth))
            return &d->v[i];
    return NULL;
}

struct tv *tv_dict_find(const struct tdict *d, const struct tv *key, struct tv_walk *w)
{
    return dict_find(d, key, w, 0);
}

int tv_dict_set(struct arena *a, struct tdict *d, const struct tv *key, const struct tv *v,
                struct tv_walk *w)
{
    struct tv *old = tv_dict_find(d, key, w);
    if (w && w->over)
        return -E2BIG;
    if (old) {
        *old = *v;
        return 0;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        struct tv *nk = arena_alloc(a, cap * sizeof(*nk)), *nv = arena_alloc(a, cap * sizeof(*nv));
        if (!nk || !nv)
            return -ENOMEM;
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof(*nk));
            memcpy(nv, d->v, d->n * sizeof(*nv));
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = *key;
    d->v[d->n++] = *v;
    return 0;
}

int tv_from_json(struct arena *a, const cJSON *j, struct tv *out)
{
    if (cJSON_IsNull(j) || !j) {
        *out = tv_none();
    } else if (cJSON_IsBool(j)) {
        *out = tv_bool(cJSON_IsTrue(j));
    } else if (cJSON_IsNumber(j)) {
        double f = j->valuedouble;
        /* JSON does not say int or float; integral values within int64 read as ints */
        if (f == floor(f) && fabs(f) < 9.2e18)
            *out = tv_int((int64_t)f);
        else
            *out = tv_float(f);
    } else if (cJSON_IsString(j)) {
        *out = tv_str(j->valuestring, strlen(j->valuestring));
    } else if (cJSON_IsArray(j)) {
        struct tlist *l = arena_alloc(a, sizeof(*l));
        int n = cJSON_GetArraySize(j);
        if (!l || !(l->v = arena_alloc(a, (size_t)(n ? n : 1) * sizeof(*l->v))))
            return -ENOMEM;
        for (const cJSON *c = j->child; c; c = c->next) {
            int rc = tv_from_json(a, c, &l->v[l->n]);
            if (rc)
                return rc;
            l->n++;
        }
        *out = (struct tv){.t = TV_LIST, .l = l};
    } else if (cJSON_IsObject(j)) {
        struct tdict *d = arena_alloc(a, sizeof(*d));
        if (!d)
            return -ENOMEM;
        for (const cJSON *c = j->child; c; c = c->next) {
            struct tv k = tv_str(c->string, strlen(c->string)), v;
            int rc = tv_from_json(a, c, &v);
            if (!rc)
                rc = tv_dict_set(a, d, &k, &v, NULL); /* string keys */
            if (rc)
                return rc;
        }
        *out = (struct tv){.t = TV_DICT, .d = d};
    } else
        *out = tv_none();
    return 0;
}

size_t tv_utf8_len(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

size_t tv_utf8_off(const char *s, size_t n, size_t i)
{
    size_t k = 0, c = 0;
    for (; k < n; k++) {
        if (((unsigned char)s[k] & 0xC0) != 0x80) {
            if (c == i)
                return k;
            c++;
        }
    }
    return n;
}

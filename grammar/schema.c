/*
 * grammar/schema.c - a JSON schema as a grammar for the JSON text that
 * satisfies it, written the way models write JSON:
 *  - whitespace between tokens: none, one space, or one or two newlines and
 *    up to 20 spaces or tabs (what json.dumps writes, compact or indented);
 *    none around the whole document;
 *  - object properties in the order the schema lists them; optional ones
 *    may be left out; extra ones only when additionalProperties allows them
 *    (after the listed ones), and, as in OpenAI's strict mode and XGrammar,
 *    not when "properties" is given without additionalProperties; an extra
 *    property's name is any string but the listed names (as written raw:
 *    a listed name spelled with \u escapes is not recognised);
 *  - integers as -?(0|[1-9][0-9]*), numbers as JSON numbers;
 *  - oneOf as anyOf (exclusivity is not enforced);
 *  - string lengths in characters, an escape counting as one.
 * Every keyword is either honoured, a known annotation (ignored: title,
 * description, default, examples...), or refused with its name and the
 * JSON pointer of the schema that holds it.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "grammar/internal.h"

struct sref {
    char *ref;
    int rule;
};

struct sc {
    struct gb *b;
    cJSON *doc;
    char *path; /* the JSON pointer of the schema being compiled */
    size_t n_path, cap_path;
    int depth;
    struct sref *refs;
    int n_refs, cap_refs;
    /* shared rules, made on first use (-1 before) */
    int r_value, r_object, r_array, r_string, r_chars, r_number, r_integer;
};

static int sfail(struct sc *s, const char *kw, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int sfail(struct sc *s, const char *kw, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    return gb_fail(s->b, -EINVAL, "json_schema: keyword '%s' at '%.*s': %s", kw,
                   (int)(s->n_path > 200 ? 200 : s->n_path), s->path ? s->path : "", why);
}

/* Appends /seg (escaped as a JSON pointer) to the path; returns the old length. */
static size_t path_push(struct sc *s, const char *seg)
{
    size_t old = s->n_path;
    size_t need = s->n_path + 2 * strlen(seg) + 2;
    if (need > s->cap_path) {
        size_t cap = need * 2 + 64;
        char *n = realloc(s->path, cap);
        if (!n) {
            gb_fail(s->b, -ENOMEM, "out of memory compiling the schema");
            return old;
        }
        s->path = n;
        s->cap_path = cap;
    }
    s->path[s->n_path++] = '/';
    for (const char *c = seg; *c; c++) {
        if (*c == '~' || *c == '/') {
            s->path[s->n_path++] = '~';
            s->path[s->n_path++] = *c == '~' ? '0' : '1';
        } else
            s->path[s->n_path++] = *c;
    }
    s->path[s->n_path] = 0;
    return old;
}

static void path_pop(struct sc *s, size_t old)
{
    s->n_path = old;
    if (s->path)
        s->path[old] = 0;
}

/* ---- building blocks ---- */

/* Whitespace between tokens: made afresh at each place, so that what may follow it is exact. */
static struct gx *ws(struct sc *s)
{
    struct gb *b = s->b;
    struct gx *nl = gx_seq(b);
    gx_add(b, nl, gx_byte(b, '\n'));
    gx_add(b, nl, gx_opt(b, gx_byte(b, '\n')));
    uint8_t set[32] = {0};
    gset_add(set, ' ');
    gset_add(set, '\t');
    gx_add(b, nl, gx_rep(b, gx_set(b, set), 0, 20));
    struct gx *alt = gx_alt(b);
    gx_add(b, alt, gx_empty(b));
    gx_add(b, alt, gx_byte(b, ' '));
    gx_add(b, alt, nl);
    return alt;
}

/* A JSON string escape: \" \\ \/ \b \f \n \r \t or \uXXXX. */
static struct gx *json_escape_x(struct sc *s)
{
    struct gb *b = s->b;
    uint8_t esc[32] = {0};
    for (const char *c = "\"\\/bfnrt"; *c; c++)
        gset_add(esc, (unsigned char)*c);
    uint8_t hex[32] = {0};
    for (const char *c = "0123456789abcdefABCDEF"; *c; c++)
        gset_add(hex, (unsigned char)*c);
    struct gx *u = gx_lit(b, "\\u", 2);
    for (int i = 0; i < 4; i++)
        gx_add(b, u, gx_set(b, hex));
    return gx_alt2(b, gx_seq2(b, gx_byte(b, '\\'), gx_set(b, esc)), u);
}

/* One character inside a JSON string. */
static struct gx *json_char(struct sc *s)
{
    struct gcp_range raw[3] = {{0x20, 0x21}, {0x23, 0x5B}, {0x5D, 0x10FFFF}};
    struct gx *alt = gx_cps(s->b, raw, 3, 0);
    gx_add(s->b, alt, json_escape_x(s));
    return alt;
}

static struct gx *digits(struct gb *b, int min, int max)
{
    return gx_rep(b, gx_range(b, '0', '9'), min, max);
}

static int shared(struct sc *s, int *rule, const char *name)
{
    if (*rule < 0)
        *rule = gb_rule(s->b, name, strlen(name));
    return *rule;
}

static struct gx *sv(struct sc *s, const cJSON *node);

static struct gx *any_value(struct sc *s);

/* x as a rule of its own, for an expression used more than once (lowering copies expressions). */
static struct gx *share(struct sc *s, struct gx *x, const char *what)
{
    if (x->kind == GX_REF || x->kind == GX_BYTES || x->kind == GX_EMPTY)
        return x;
    int r = gb_rule_new(s->b, what);
    gb_define(s->b, r, x);
    return r < 0 ? gx_empty(s->b) : gx_ref(s->b, r);
}

static struct gx *string_chars(struct sc *s)
{
    struct gb *b = s->b;
    if (s->r_chars < 0) {
        if (shared(s, &s->r_chars, "json-chars") < 0)
            return gx_empty(b);
        gb_define(b, s->r_chars, gx_rep(b, json_char(s), 0, -1));
    }
    return gx_ref(b, s->r_chars);
}

static struct gx *any_string(struct sc *s)
{
    struct gb *b = s->b;
    if (s->r_string < 0) {
        if (shared(s, &s->r_string, "json-string") < 0)
            return gx_empty(b);
        struct gx *x = gx_byte(b, '"');
        x = gx_seq2(b, x, string_chars(s));
        gx_add(b, x, gx_byte(b, '"'));
        gb_define(b, s->r_string, x);
    }
    return gx_ref(b, s->r_string);
}

/* -?(0|[1-9][0-9]*) */
static struct gx *int_body(struct sc *s)
{
    struct gb *b = s->b;
    return gx_seq2(
        b, gx_opt(b, gx_byte(b, '-')),
        gx_alt2(b, gx_byte(b, '0'), gx_seq2(b, gx_range(b, '1', '9'), digits(b, 0, -1))));
}

static struct gx *any_integer(struct sc *s)
{
    struct gb *b = s->b;
    if (s->r_integer < 0) {
        if (shared(s, &s->r_integer, "json-integer") < 0)
            return gx_empty(b);
        gb_define(s->b, s->r_integer, int_body(s));
    }
    return gx_ref(s->b, s->r_integer);
}

static struct gx *any_number(struct sc *s)
{
    struct gb *b = s->b;
    if (s->r_number < 0) {
        if (shared(s, &s->r_number, "json-number") < 0)
            return gx_empty(b);
        struct gx *x =
            gx_seq2(b, int_body(s), gx_opt(b, gx_seq2(b, gx_byte(b, '.'), digits(b, 1, -1))));
        uint8_t e[32] = {0}, sign[32] = {0};
        gset_add(e, 'e');
        gset_add(e, 'E');
        gset_add(sign, '+');
        gset_add(sign, '-');
        struct gx *ex = gx_seq2(b, gx_set(b, e), gx_opt(b, gx_set(b, sign)));
        gx_add(b, ex, digits(b, 1, -1));
        gx_add(b, x, gx_opt(b, ex));
        gb_define(b, s->r_number, x);
    }
    return gx_ref(b, s->r_number);
}

/* "[" ws (item ("," ws item)*)? "]" with item = x ws */
static struct gx *list_of(struct sc *s, struct gx *(*item)(struct sc *))
{
    struct gb *b = s->b;
    struct gx *it = gx_seq2(b, item(s), ws(s));
    struct gx *more = gx_seq2(b, gx_byte(b, ','), ws(s));
    gx_add(b, more, gx_seq2(b, item(s), ws(s)));
    return gx_opt(b, gx_seq2(b, it, gx_rep(b, more, 0, -1)));
}

static struct gx *kv_any(struct sc *s)
{
    struct gb *b = s->b;
    struct gx *x = gx_seq2(b, any_string(s), ws(s));
    gx_add(b, x, gx_byte(b, ':'));
    gx_add(b, x, ws(s));
    gx_add(b, x, any_value(s));
    return x;
}

static struct gx *any_object(struct sc *s)
{
    struct gb *b = s->b;
    if (s->r_object < 0) {
        if (shared(s, &s->r_object, "json-object") < 0)
            return gx_empty(b);
        struct gx *x = gx_seq2(b, gx_byte(b, '{'), ws(s));
        gx_add(b, x, list_of(s, kv_any));
        gx_add(b, x, gx_byte(b, '}'));
        gb_define(b, s->r_object, x);
    }
    return gx_ref(b, s->r_object);
}

static struct gx *any_array(struct sc *s)
{
    struct gb *b = s->b;
    if (s->r_array < 0) {
        if (shared(s, &s->r_array, "json-array") < 0)
            return gx_empty(b);
        struct gx *x = gx_seq2(b, gx_byte(b, '['), ws(s));
        gx_add(b, x, list_of(s, any_value));
        gx_add(b, x, gx_byte(b, ']'));
        gb_define(b, s->r_array, x);
    }
    return gx_ref(b, s->r_array);
}

static struct gx *any_value(struct sc *s)
{
    struct gb *b = s->b;
    if (s->r_value < 0) {
        if (shared(s, &s->r_value, "json-value") < 0)
            return gx_empty(b);
        struct gx *alt = gx_alt(b);
        gx_add(b, alt, any_object(s));
        gx_add(b, alt, any_array(s));
        gx_add(b, alt, any_string(s));
        gx_add(b, alt, any_number(s));
        gx_add(b, alt, gx_str(b, "true"));
        gx_add(b, alt, gx_str(b, "false"));
        gx_add(b, alt, gx_str(b, "null"));
        gb_define(b, s->r_value, alt);
    }
    return gx_ref(b, s->r_value);
}

/* A JSON string literal's text, as JSON writes it (UTF-8 kept). */
static struct gx *string_lit(struct sc *s, const char *str)
{
    struct gb *b = s->b;
    struct gx *x = gx_seq(b);
    gx_add(b, x, gx_byte(b, '"'));
    for (const unsigned char *c = (const unsigned char *)str; *c; c++) {
        char e[8];
        int n = 0;
        if (*c == '"' || *c == '\\') {
            e[0] = '\\';
            e[1] = (char)*c;
            n = 2;
        } else if (*c < 0x20) {
            const char *sh = *c == '\n'   ? "\\n"
                             : *c == '\t' ? "\\t"
                             : *c == '\r' ? "\\r"
                             : *c == '\b' ? "\\b"
                             : *c == '\f' ? "\\f"
                                          : NULL;
            n = sh ? (memcpy(e, sh, 2), 2) : snprintf(e, sizeof(e), "\\u%04x", *c);
        } else {
            e[0] = (char)*c;
            n = 1;
        }
        gx_add(b, x, gx_lit(b, e, (size_t)n));
    }
    gx_add(b, x, gx_byte(b, '"'));
    return x;
}

/* The shortest text that reads back as d. */
static void number_text(double d, char *o, size_t cap)
{
    if (d == floor(d) && fabs(d) < 1e17) {
        snprintf(o, cap, "%.0f", d);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(o, cap, "%.*g", prec, d);
        if (strtod(o, NULL) == d)
            return;
    }
}

/* A constant: the value as JSON text, whitespace allowed where JSON allows it. */
static struct gx *const_value(struct sc *s, const cJSON *v)
{
    struct gb *b = s->b;
    if (++s->depth > b->lim->max_depth) {
        sfail(s, "const", "the value is nested more than %d deep", b->lim->max_depth);
        return gx_empty(b);
    }
    struct gx *x;
    if (cJSON_IsNull(v))
        x = gx_str(b, "null");
    else if (cJSON_IsTrue(v))
        x = gx_str(b, "true");
    else if (cJSON_IsFalse(v))
        x = gx_str(b, "false");
    else if (cJSON_IsNumber(v)) {
        char t[40];
        number_text(v->valuedouble, t, sizeof(t));
        x = gx_str(b, t);
    } else if (cJSON_IsString(v))
        x = string_lit(s, v->valuestring);
    else {
        int obj = cJSON_IsObject(v);
        x = gx_seq2(b, gx_byte(b, obj ? '{' : '['), ws(s));
        int i = 0;
        for (const cJSON *k = v->child; k; k = k->next, i++) {
            if (i)
                gx_add(b, x, gx_seq2(b, gx_byte(b, ','), ws(s)));
            if (obj) {
                gx_add(b, x, string_lit(s, k->string));
                gx_add(b, x, ws(s));
                gx_add(b, x, gx_byte(b, ':'));
                gx_add(b, x, ws(s));
            }
            gx_add(b, x, const_value(s, k));
            gx_add(b, x, ws(s));
        }
        gx_add(b, x, gx_byte(b, obj ? '}' : ']'));
    }
    s->depth--;
    return x;
}

/* ---- integers in a range ---- */

static struct gx *any_digits(struct gb *b, int n)
{
    return n ? digits(b, n, n) : gx_empty(b);
}

/* n-digit strings (leading zeros allowed) >= lo (n = strlen(lo)). */
static struct gx *digits_ge(struct gb *b, const char *lo)
{
    int n = (int)strlen(lo);
    if (!n)
        return gx_empty(b);
    struct gx *alt = gx_alt(b);
    gx_add(b, alt, gx_seq2(b, gx_byte(b, (uint8_t)lo[0]), digits_ge(b, lo + 1)));
    if (lo[0] < '9')
        gx_add(b, alt, gx_seq2(b, gx_range(b, (uint8_t)(lo[0] + 1), '9'), any_digits(b, n - 1)));
    return alt;
}

static struct gx *digits_le(struct gb *b, const char *hi)
{
    int n = (int)strlen(hi);
    if (!n)
        return gx_empty(b);
    struct gx *alt = gx_alt(b);
    gx_add(b, alt, gx_seq2(b, gx_byte(b, (uint8_t)hi[0]), digits_le(b, hi + 1)));
    if (hi[0] > '0')
        gx_add(b, alt, gx_seq2(b, gx_range(b, '0', (uint8_t)(hi[0] - 1)), any_digits(b, n - 1)));
    return alt;
}

/* Same-length digit strings between lo and hi (lo <= hi). */
static struct gx *digits_between(struct gb *b, const char *lo, const char *hi)
{
    int n = (int)strlen(lo);
    if (!n)
        return gx_empty(b);
    if (lo[0] == hi[0])
        return gx_seq2(b, gx_byte(b, (uint8_t)lo[0]), digits_between(b, lo + 1, hi + 1));
    struct gx *alt = gx_alt(b);
    gx_add(b, alt, gx_seq2(b, gx_byte(b, (uint8_t)lo[0]), digits_ge(b, lo + 1)));
    if (hi[0] - lo[0] > 1)
        gx_add(b, alt,
               gx_seq2(b, gx_range(b, (uint8_t)(lo[0] + 1), (uint8_t)(hi[0] - 1)),
                       any_digits(b, n - 1)));
    gx_add(b, alt, gx_seq2(b, gx_byte(b, (uint8_t)hi[0]), digits_le(b, hi + 1)));
    return alt;
}

/* Canonical decimal numbers in [lo, hi], lo >= 0; hi < 0: no upper bound. */
static struct gx *naturals(struct gb *b, long long lo, long long hi)
{
    struct gx *alt = gx_alt(b);
    char a[24], z[24];
    int la = snprintf(a, sizeof(a), "%lld", lo);
    int lz = hi < 0 ? la : snprintf(z, sizeof(z), "%lld", hi);
    if (hi < 0) /* no upper bound: any longer number too */
        gx_add(b, alt, gx_seq2(b, gx_range(b, '1', '9'), digits(b, la, -1)));
    if (lz < la)
        lz = la;
    for (int len = la; len <= lz; len++) {
        char x[24], y[24];
        if (len == la)
            memcpy(x, a, (size_t)la + 1);
        else {
            memset(x, '0', (size_t)len);
            x[0] = '1';
            x[len] = 0;
        }
        if (hi >= 0 && len == lz)
            memcpy(y, z, (size_t)lz + 1);
        else {
            memset(y, '9', (size_t)len);
            y[len] = 0;
        }
        if (len == 1 && x[0] == '0' && hi >= 0 && y[0] == '0') {
            gx_add(b, alt, gx_byte(b, '0'));
            continue;
        }
        gx_add(b, alt, digits_between(b, x, y));
    }
    return alt;
}

static struct gx *integer_range(struct sc *s, int has_lo, long long lo, int has_hi, long long hi)
{
    struct gb *b = s->b;
    struct gx *alt = gx_alt(b);
    /* negative part: -(1..) */
    if (!has_lo || lo < 0) {
        long long nlo = has_hi && hi < 0 ? -hi : 1; /* magnitudes */
        long long nhi = has_lo ? -lo : -1;
        gx_add(b, alt, gx_seq2(b, gx_byte(b, '-'), naturals(b, nlo, nhi)));
    }
    if (!has_hi || hi >= 0)
        gx_add(b, alt, naturals(b, has_lo && lo > 0 ? lo : 0, has_hi ? hi : -1));
    return alt;
}

/* ---- schemas ---- */

static const char *const k_annotations[] = {
    "title",         "description", "default",          "examples",        "$schema",
    "$id",           "$comment",    "deprecated",       "readOnly",        "writeOnly",
    "discriminator", "$anchor",     "contentMediaType", "contentEncoding", "strict",
    "$defs",         "definitions",
};

static const char *const k_supported[] = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "const",
    "items",
    "prefixItems",
    "additionalItems",
    "minItems",
    "maxItems",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "nullable",
    "uniqueItems",
};

static int in_list(const char *k, const char *const *l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(k, l[i]))
            return 1;
    return 0;
}

static int check_keywords(struct sc *s, const cJSON *node)
{
    for (const cJSON *k = node->child; k; k = k->next) {
        if (in_list(k->string, k_annotations, sizeof k_annotations / sizeof *k_annotations))
            continue;
        if (!in_list(k->string, k_supported, sizeof k_supported / sizeof *k_supported))
            return sfail(s, k->string, "this keyword is not supported");
        if (!strcmp(k->string, "uniqueItems") && cJSON_IsTrue(k))
            return sfail(s, k->string, "unique items cannot be enforced while generating");
    }
    return 0;
}

static const cJSON *get(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

/* Resolves a local reference ("#", "#/$defs/x"); NULL with an error otherwise. */
static const cJSON *resolve(struct sc *s, const char *ref)
{
    if (ref[0] != '#')
        return sfail(s, "$ref", "only local references (#/...) are supported, not '%.80s'", ref),
               NULL;
    const cJSON *cur = s->doc;
    const char *p = ref + 1;
    while (*p) {
        if (*p != '/')
            return sfail(s, "$ref", "'%.80s' is not a JSON pointer", ref), NULL;
        p++;
        char seg[256];
        size_t n = 0;
        while (*p && *p != '/') {
            char c = *p++;
            if (c == '~' && (*p == '0' || *p == '1'))
                c = *p++ == '0' ? '~' : '/';
            else if (c == '%' && p[0] && p[1]) {
                char h[3] = {p[0], p[1], 0};
                c = (char)strtol(h, NULL, 16);
                p += 2;
            }
            if (n + 1 >= sizeof(seg))
                return sfail(s, "$ref", "a segment of '%.80s' is too long", ref), NULL;
            seg[n++] = c;
        }
        seg[n] = 0;
        if (cJSON_IsArray(cur)) {
            char *end;
            long i = strtol(seg, &end, 10);
            cur = *end || i < 0 ? NULL : cJSON_GetArrayItem(cur, (int)i);
        } else
            cur = cJSON_IsObject(cur) ? get(cur, seg) : NULL;
        if (!cur)
            return sfail(s, "$ref", "'%.80s' points to nothing in the schema", ref), NULL;
    }
    return cur;
}

static struct gx *ref_rule(struct sc *s, const char *ref)
{
    struct gb *b = s->b;
    for (int i = 0; i < s->n_refs; i++)
        if (!strcmp(s->refs[i].ref, ref))
            return gx_ref(b, s->refs[i].rule);
    const cJSON *target = resolve(s, ref);
    if (!target)
        return gx_empty(b);
    if (s->n_refs == s->cap_refs) {
        int cap = s->cap_refs ? 2 * s->cap_refs : 16;
        struct sref *n = realloc(s->refs, sizeof(*n) * (size_t)cap);
        if (!n) {
            gb_fail(b, -ENOMEM, "out of memory compiling the schema");
            return gx_empty(b);
        }
        s->refs = n;
        s->cap_refs = cap;
    }
    int r = gb_rule_new(b, "ref");
    char *copy = strdup(ref);
    if (r < 0 || !copy) {
        free(copy);
        gb_fail(b, -ENOMEM, "out of memory compiling the schema");
        return gx_empty(b);
    }
    s->refs[s->n_refs++] = (struct sref){copy, r};
    /* the target's path, for errors inside it */
    char *saved = s->path ? strndup(s->path, s->n_path) : NULL;
    size_t saved_n = s->n_path;
    s->n_path = 0;
    if (s->path)
        s->path[0] = 0;
    const char *q = ref + 1;
    size_t qn = strlen(q);
    if (qn + 1 > s->cap_path) {
        char *n = realloc(s->path, qn + 64);
        if (n) {
            s->path = n;
            s->cap_path = qn + 64;
        }
    }
    if (s->path && qn + 1 <= s->cap_path) {
        memcpy(s->path, q, qn + 1);
        s->n_path = qn;
    }
    gb_define(b, r, sv(s, target));
    if (saved) {
        memcpy(s->path, saved, saved_n + 1);
        free(saved);
    } else if (s->path)
        s->path[0] = 0;
    s->n_path = saved ? saved_n : 0;
    return gx_ref(b, r);
}

/* allOf: the members' keywords merged into one object schema (new tree, caller frees). */
static cJSON *merge_all(struct sc *s, const cJSON *node, const cJSON *all)
{
    cJSON *m = cJSON_CreateObject();
    cJSON *props = cJSON_CreateObject(), *req = cJSON_CreateArray();
    if (!m || !props || !req) {
        cJSON_Delete(m);
        cJSON_Delete(props);
        cJSON_Delete(req);
        gb_fail(s->b, -ENOMEM, "out of memory compiling the schema");
        return NULL;
    }
    const cJSON *parts[64];
    int n = 0;
    parts[n++] = node;
    const cJSON *own = get(node, "$ref");
    if (own) {
        const cJSON *t = cJSON_IsString(own) ? resolve(s, own->valuestring) : NULL;
        if (!t || !cJSON_IsObject(t)) {
            if (!s->b->rc)
                sfail(s, "$ref", "must be a local reference to an object schema");
            cJSON_Delete(m);
            cJSON_Delete(props);
            cJSON_Delete(req);
            return NULL;
        }
        parts[n++] = t;
    }
    for (const cJSON *k = all->child; k && n < 64; k = k->next) {
        const cJSON *x = k;
        for (int hops = 0; cJSON_IsObject(x) && get(x, "$ref") && hops < 16; hops++) {
            const cJSON *r = get(x, "$ref");
            if (!cJSON_IsString(r)) {
                sfail(s, "$ref", "must be a string");
                break;
            }
            x = resolve(s, r->valuestring);
        }
        if (!x || !cJSON_IsObject(x)) {
            if (!s->b->rc)
                sfail(s, "allOf", "each member must be an object schema");
            break;
        }
        parts[n++] = x;
    }
    if (all->child && n == 64)
        sfail(s, "allOf", "more than 63 members");
    for (int i = 0; i < n && !s->b->rc; i++)
        for (const cJSON *k = parts[i]->child; k && !s->b->rc; k = k->next) {
            if (!strcmp(k->string, "allOf") || !strcmp(k->string, "$ref")) {
                if (i > 0) /* a member's own allOf or $ref would be lost */
                    sfail(s, k->string, "inside an allOf member (%d) is not supported", i);
                continue; /* the node's own: merged */
            }
            if (!strcmp(k->string, "properties") && cJSON_IsObject(k)) {
                for (const cJSON *p = k->child; p; p = p->next) {
                    if (get(props, p->string)) {
                        sfail(s, "allOf", "property '%.60s' is defined by two members", p->string);
                        break;
                    }
                    cJSON_AddItemToObject(props, p->string, cJSON_Duplicate(p, 1));
                }
                continue;
            }
            if (!strcmp(k->string, "required") && cJSON_IsArray(k)) {
                for (const cJSON *r = k->child; r; r = r->next)
                    cJSON_AddItemToArray(req, cJSON_Duplicate(r, 1));
                continue;
            }
            const cJSON *have = get(m, k->string);
            if (have) {
                if (!cJSON_Compare(have, k, 1) &&
                    !in_list(k->string, k_annotations,
                             sizeof k_annotations / sizeof *k_annotations))
                    sfail(s, "allOf", "members disagree on '%.60s'", k->string);
                continue;
            }
            cJSON_AddItemToObject(m, k->string, cJSON_Duplicate(k, 1));
        }
    if (props->child)
        cJSON_AddItemToObject(m, "properties", props);
    else
        cJSON_Delete(props);
    if (req->child)
        cJSON_AddItemToObject(m, "required", req);
    else
        cJSON_Delete(req);
    return m;
}

static int get_count(struct sc *s, const cJSON *node, const char *kw, long long *out)
{
    const cJSON *v = get(node, kw);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble != floor(v->valuedouble))
        return sfail(s, kw, "must be a non-negative integer");
    if (v->valuedouble > s->b->lim->max_positions)
        return gb_fail(s->b, -E2BIG, "json_schema: '%s' at '%s' is %.0f, over the limit of %d", kw,
                       s->path ? s->path : "", v->valuedouble, s->b->lim->max_positions);
    *out = (long long)v->valuedouble;
    return 1;
}

/* A JSON string (quotes included) whose raw text is none of the keys of props. */
static struct gx *not_in_from(struct sc *s, const cJSON *props, const char *prefix, size_t n)
{
    struct gb *b = s->b;
    struct gx *alt = gx_alt(b);
    int terminal = 0;
    /* the next code points the listed names have after this prefix */
    struct gcp_range next[256];
    int n_next = 0;
    for (const cJSON *p = props->child; p && !b->rc; p = p->next) {
        const char *k = p->string;
        if (strlen(k) < n || memcmp(k, prefix, n))
            continue;
        if (!k[n]) {
            terminal = 1;
            continue;
        }
        uint32_t c;
        int len = gram_utf8_get(k + n, strlen(k + n), &c);
        if (!len)
            continue; /* not UTF-8: cannot be written anyway */
        int seen = 0;
        for (int i = 0; i < n_next; i++)
            seen |= next[i].lo == c;
        if (seen)
            continue;
        if (n_next == 256) {
            sfail(s, "properties", "too many names share a prefix");
            return gx_empty(b);
        }
        next[n_next++] = (struct gcp_range){c, c};
        if (++s->depth > b->lim->max_depth * 4) {
            gb_fail(b, -E2BIG, "json_schema: a property name is too long");
            return gx_empty(b);
        }
        gx_add(
            b, alt,
            gx_seq2(b, gx_lit(b, k + n, (size_t)len), not_in_from(s, props, k, n + (size_t)len)));
        s->depth--;
    }
    if (!terminal)
        gx_add(b, alt, gx_byte(b, '"'));
    /* any other character (an escape is another spelling: another name), then anything */
    struct gcp_range ex[3 + 256];
    int ne = 0;
    ex[ne++] = (struct gcp_range){0, 0x1F};
    ex[ne++] = (struct gcp_range){'"', '"'};
    ex[ne++] = (struct gcp_range){'\\', '\\'};
    for (int i = 0; i < n_next; i++)
        ex[ne++] = next[i];
    struct gx *other = gx_cps(b, ex, ne, 1);
    gx_add(b, other, json_escape_x(s));
    struct gx *rest = gx_seq2(b, other, string_chars(s));
    gx_add(b, rest, gx_byte(b, '"'));
    gx_add(b, alt, rest);
    return alt;
}

static struct gx *key_not_in(struct sc *s, const cJSON *props)
{
    struct gb *b = s->b;
    return gx_seq2(b, gx_byte(b, '"'), not_in_from(s, props, "", 0));
}

static struct gx *sv_object(struct sc *s, const cJSON *node)
{
    struct gb *b = s->b;
    const cJSON *props = get(node, "properties"), *req = get(node, "required"),
                *add = get(node, "additionalProperties");
    if (props && !cJSON_IsObject(props))
        return sfail(s, "properties", "must be an object"), gx_empty(b);
    if (req && !cJSON_IsArray(req))
        return sfail(s, "required", "must be an array of names"), gx_empty(b);
    if (add && !cJSON_IsBool(add) && !cJSON_IsObject(add))
        return sfail(s, "additionalProperties", "must be a boolean or a schema"), gx_empty(b);
    for (const cJSON *r = req ? req->child : NULL; r; r = r->next) {
        if (!cJSON_IsString(r))
            return sfail(s, "required", "must be an array of names"), gx_empty(b);
        if (!props || !get(props, r->valuestring)) {
            /* required but not described: any value, listed after the others */
            if (add && cJSON_IsFalse(add))
                return sfail(s, "required",
                             "'%.60s' is required but not in properties, and "
                             "additionalProperties is false",
                             r->valuestring),
                       gx_empty(b);
            return sfail(s, "required", "'%.60s' is required but not in properties (list it there)",
                         r->valuestring),
                   gx_empty(b);
        }
    }
    /* extra properties: when "additionalProperties" allows them, or no "properties" is given */
    int extra = add ? !cJSON_IsFalse(add) : !props;
    int n = props ? cJSON_GetArraySize(props) : 0;
    struct gx **kv = malloc(sizeof(*kv) * (size_t)(n + 1));
    uint8_t *must = calloc((size_t)n + 1, 1);
    if (!kv || !must) {
        free(kv);
        free(must);
        gb_fail(b, -ENOMEM, "out of memory compiling the schema");
        return gx_empty(b);
    }
    int i = 0;
    for (const cJSON *p = props ? props->child : NULL; p && !b->rc; p = p->next, i++) {
        size_t old = path_push(s, "properties");
        path_push(s, p->string);
        struct gx *x = gx_seq2(b, string_lit(s, p->string), ws(s));
        gx_add(b, x, gx_byte(b, ':'));
        gx_add(b, x, ws(s));
        gx_add(b, x, sv(s, p));
        gx_add(b, x, ws(s));
        kv[i] = x;
        path_pop(s, old);
        for (const cJSON *r = req ? req->child : NULL; r; r = r->next)
            if (!strcmp(r->valuestring, p->string))
                must[i] = 1;
    }
    struct gx *kv_add = NULL;
    if (extra && !b->rc) {
        size_t old = path_push(s, "additionalProperties");
        kv_add = gx_seq2(b, props ? key_not_in(s, props) : any_string(s), ws(s));
        gx_add(b, kv_add, gx_byte(b, ':'));
        gx_add(b, kv_add, ws(s));
        gx_add(b, kv_add, add && cJSON_IsObject(add) ? sv(s, add) : any_value(s));
        gx_add(b, kv_add, ws(s));
        kv_add = share(s, kv_add, "obj-extra");
        path_pop(s, old);
    }
    /*
     * After[i]: the properties from i on when one came before (each with its comma);
     * first[i]: the same when none did.  Rules, as each is used twice.
     */
    int after = -1, first = -1;
    {
        int ra = gb_rule_new(b, "obj-after"), rf = gb_rule_new(b, "obj-first");
        struct gx *ta = gx_empty(b), *tf = gx_empty(b);
        if (kv_add) {
            struct gx *more = gx_seq2(b, gx_byte(b, ','), ws(s));
            gx_add(b, more, kv_add);
            ta = gx_rep(b, more, 0, -1);
            tf = gx_opt(b, gx_seq2(b, kv_add, gx_rep(b, more, 0, -1)));
        }
        gb_define(b, ra, ta);
        gb_define(b, rf, tf);
        after = ra;
        first = rf;
    }
    for (i = n - 1; i >= 0 && !b->rc; i--) {
        int ra = gb_rule_new(b, "obj-after"), rf = gb_rule_new(b, "obj-first");
        struct gx *with = gx_seq2(b, gx_byte(b, ','), ws(s));
        gx_add(b, with, kv[i]);
        gx_add(b, with, gx_ref(b, after));
        struct gx *fw = gx_seq2(b, kv[i], gx_ref(b, after));
        if (must[i]) {
            gb_define(b, ra, with);
            gb_define(b, rf, fw);
        } else {
            gb_define(b, ra, gx_alt2(b, with, gx_ref(b, after)));
            gb_define(b, rf, gx_alt2(b, fw, gx_ref(b, first)));
        }
        after = ra;
        first = rf;
    }
    free(kv);
    free(must);
    struct gx *x = gx_seq2(b, gx_byte(b, '{'), ws(s));
    gx_add(b, x, gx_ref(b, first));
    gx_add(b, x, gx_byte(b, '}'));
    return x;
}

static struct gx *sv_array(struct sc *s, const cJSON *node)
{
    struct gb *b = s->b;
    const cJSON *prefix = get(node, "prefixItems"), *items = get(node, "items");
    const cJSON *tail = items;
    if (cJSON_IsArray(items)) { /* the older tuple form */
        if (prefix)
            return sfail(s, "items", "an array of schemas together with prefixItems"), gx_empty(b);
        prefix = items;
        tail = get(node, "additionalItems");
    }
    if (prefix && !cJSON_IsArray(prefix))
        return sfail(s, "prefixItems", "must be an array of schemas"), gx_empty(b);
    if (tail && !cJSON_IsBool(tail) && !cJSON_IsObject(tail))
        return sfail(s, prefix == items ? "additionalItems" : "items",
                     "must be a schema or a boolean"),
               gx_empty(b);
    long long min = 0, max = -1;
    if (get_count(s, node, "minItems", &min) < 0 || get_count(s, node, "maxItems", &max) < 0)
        return gx_empty(b);
    int k = prefix ? cJSON_GetArraySize(prefix) : 0;
    int no_tail = tail && cJSON_IsFalse(tail);
    if (no_tail && min > k)
        return sfail(s, "minItems", "is %lld but only %d items are allowed", min, k), gx_empty(b);
    if (max >= 0 && max < min)
        return sfail(s, "maxItems", "is below minItems"), gx_empty(b);
    /* item grammars: prefix ones, then the tail */
    struct gx **it = malloc(sizeof(*it) * (size_t)(k + 1));
    if (!it) {
        gb_fail(b, -ENOMEM, "out of memory compiling the schema");
        return gx_empty(b);
    }
    int i = 0;
    for (const cJSON *p = prefix ? prefix->child : NULL; p; p = p->next, i++) {
        char idx[24];
        snprintf(idx, sizeof(idx), "%d", i);
        size_t old = path_push(s, prefix == items ? "items" : "prefixItems");
        path_push(s, idx);
        it[i] = sv(s, p);
        path_pop(s, old);
    }
    struct gx *tail_item = NULL;
    if (!no_tail) {
        size_t old = path_push(s, prefix == items ? "additionalItems" : "items");
        tail_item = share(s, tail && cJSON_IsObject(tail) ? sv(s, tail) : any_value(s), "item");
        path_pop(s, old);
    }
    /* from the end: list(i) = the items from i on, given i items came before */
    long long fixed = k > min ? k : min; /* positions handled one by one */
    if (max >= 0 && fixed > max)
        fixed = max;
    struct gx *rest;
    if (max >= 0 && fixed >= max)
        rest = gx_empty(b);
    else if (!tail_item)
        rest = gx_empty(b);
    else {
        struct gx *one = gx_seq2(b, tail_item, ws(s));
        if (fixed == 0)
            rest = gx_opt(b, gx_seq2(b, one,
                                     gx_rep(b,
                                            gx_seq2(b, gx_seq2(b, gx_byte(b, ','), ws(s)),
                                                    gx_seq2(b, tail_item, ws(s))),
                                            0, max < 0 ? -1 : (int)(max - 1))));
        else
            rest = gx_rep(
                b, gx_seq2(b, gx_seq2(b, gx_byte(b, ','), ws(s)), gx_seq2(b, tail_item, ws(s))), 0,
                max < 0 ? -1 : (int)(max - fixed));
    }
    for (long long j = fixed - 1; j >= 0 && !b->rc; j--) {
        struct gx *item = j < k ? it[j] : tail_item;
        struct gx *x = gx_seq(b);
        if (j)
            gx_add(b, x, gx_seq2(b, gx_byte(b, ','), ws(s)));
        gx_add(b, x, item);
        gx_add(b, x, ws(s));
        gx_add(b, x, rest);
        rest = j < min ? x : gx_alt2(b, x, gx_empty(b));
        if ((j & 255) == 0)
            gb_check_time(b);
    }
    free(it);
    struct gx *x = gx_seq2(b, gx_byte(b, '['), ws(s));
    gx_add(b, x, rest);
    gx_add(b, x, gx_byte(b, ']'));
    return x;
}

static struct gx *sv_format(struct sc *s, const char *f)
{
    struct gb *b = s->b;
    struct gx *two = NULL;
    struct gx *date = gx_seq(b);
    gx_add(b, date, digits(b, 4, 4));
    gx_add(b, date, gx_byte(b, '-'));
    gx_add(b, date,
           gx_alt2(b, gx_seq2(b, gx_byte(b, '0'), gx_range(b, '1', '9')),
                   gx_seq2(b, gx_byte(b, '1'), gx_range(b, '0', '2'))));
    gx_add(b, date, gx_byte(b, '-'));
    struct gx *day = gx_alt(b);
    gx_add(b, day, gx_seq2(b, gx_byte(b, '0'), gx_range(b, '1', '9')));
    gx_add(b, day, gx_seq2(b, gx_range(b, '1', '2'), gx_range(b, '0', '9')));
    gx_add(b, day, gx_seq2(b, gx_byte(b, '3'), gx_range(b, '0', '1')));
    gx_add(b, date, day);
    struct gx *hour = gx_alt2(b, gx_seq2(b, gx_range(b, '0', '1'), gx_range(b, '0', '9')),
                              gx_seq2(b, gx_byte(b, '2'), gx_range(b, '0', '3')));
    struct gx *time = gx_seq(b);
    gx_add(b, time, hour);
    gx_add(b, time, gx_byte(b, ':'));
    gx_add(b, time, gx_seq2(b, gx_range(b, '0', '5'), gx_range(b, '0', '9')));
    gx_add(b, time, gx_byte(b, ':'));
    gx_add(b, time,
           gx_alt2(b, gx_seq2(b, gx_range(b, '0', '5'), gx_range(b, '0', '9')), gx_str(b, "60")));
    gx_add(b, time, gx_opt(b, gx_seq2(b, gx_byte(b, '.'), digits(b, 1, 9))));
    uint8_t z[32] = {0}, sign[32] = {0};
    gset_add(z, 'Z');
    gset_add(z, 'z');
    gset_add(sign, '+');
    gset_add(sign, '-');
    struct gx *off = gx_seq(b);
    gx_add(b, off, gx_set(b, sign));
    gx_add(b, off,
           gx_alt2(b, gx_seq2(b, gx_range(b, '0', '1'), gx_range(b, '0', '9')),
                   gx_seq2(b, gx_byte(b, '2'), gx_range(b, '0', '3'))));
    gx_add(b, off, gx_byte(b, ':'));
    gx_add(b, off, gx_seq2(b, gx_range(b, '0', '5'), gx_range(b, '0', '9')));
    gx_add(b, time, gx_alt2(b, gx_set(b, z), off));
    if (!strcmp(f, "date"))
        two = date;
    else if (!strcmp(f, "time"))
        two = time;
    else if (!strcmp(f, "date-time")) {
        uint8_t t[32] = {0};
        gset_add(t, 'T');
        gset_add(t, 't');
        two = gx_seq2(b, date, gx_set(b, t));
        gx_add(b, two, time);
    } else if (!strcmp(f, "uuid")) {
        uint8_t hex[32] = {0};
        for (const char *c = "0123456789abcdefABCDEF"; *c; c++)
            gset_add(hex, (unsigned char)*c);
        static const int groups[5] = {8, 4, 4, 4, 12};
        two = gx_seq(b);
        for (int i = 0; i < 5; i++) {
            if (i)
                gx_add(b, two, gx_byte(b, '-'));
            gx_add(b, two, gx_rep(b, gx_set(b, hex), groups[i], groups[i]));
        }
    } else {
        sfail(s, "format", "'%.40s' is not supported (date, time, date-time, uuid are)", f);
        return gx_empty(b);
    }
    return two;
}

static struct gx *sv_string(struct sc *s, const cJSON *node)
{
    struct gb *b = s->b;
    const cJSON *pat = get(node, "pattern"), *fmt = get(node, "format");
    long long min = 0, max = -1;
    int has_min = get_count(s, node, "minLength", &min);
    int has_max = get_count(s, node, "maxLength", &max);
    if (has_min < 0 || has_max < 0)
        return gx_empty(b);
    if (max >= 0 && max < min)
        return sfail(s, "maxLength", "is below minLength"), gx_empty(b);
    if (pat && !cJSON_IsString(pat))
        return sfail(s, "pattern", "must be a string"), gx_empty(b);
    if (fmt && !cJSON_IsString(fmt))
        return sfail(s, "format", "must be a string"), gx_empty(b);
    if ((pat || fmt) && (has_min || has_max))
        return sfail(s, has_min ? "minLength" : "maxLength", "cannot be combined with %s",
                     pat ? "pattern" : "format"),
               gx_empty(b);
    if (pat && fmt)
        return sfail(s, "pattern", "cannot be combined with format"), gx_empty(b);
    struct gx *body;
    if (pat) {
        const char *p = pat->valuestring;
        size_t n = strlen(p);
        int start = n && p[0] == '^';
        int end = n > (size_t)start && p[n - 1] == '$' && (n < 2 || p[n - 2] != '\\');
        body = gx_seq(b);
        if (!start)
            gx_add(b, body, string_chars(s));
        struct gx *re = gram_regex_parse(b, p + start, n - (size_t)start - (size_t)end, 1);
        if (b->rc) { /* name the keyword around the regex's message */
            char msg[256];
            snprintf(msg, sizeof(msg), "%s", b->err ? b->err : "");
            b->rc = 0;
            sfail(s, "pattern", "%s", msg);
            return gx_empty(b);
        }
        gx_add(b, body, re);
        if (!end)
            gx_add(b, body, string_chars(s));
    } else if (fmt)
        body = sv_format(s, fmt->valuestring);
    else if (!has_min && !has_max)
        return any_string(s);
    else
        body = gx_rep(b, json_char(s), (int)min, max < 0 ? -1 : (int)max);
    struct gx *x = gx_seq2(b, gx_byte(b, '"'), body);
    gx_add(b, x, gx_byte(b, '"'));
    return x;
}

static int bound(struct sc *s, const cJSON *node, const char *kw, int upper, int *has, long long *v)
{
    const cJSON *x = get(node, kw);
    if (!x || cJSON_IsFalse(x))
        return 0;
    int excl = !strncmp(kw, "exclusive", 9);
    double d;
    if (excl && cJSON_IsTrue(x)) { /* draft 4: a flag on minimum / maximum */
        const cJSON *m = get(node, upper ? "maximum" : "minimum");
        if (!cJSON_IsNumber(m))
            return sfail(s, kw, "is true without %s", upper ? "maximum" : "minimum");
        d = m->valuedouble;
    } else if (cJSON_IsNumber(x))
        d = x->valuedouble;
    else
        return sfail(s, kw, "must be a number");
    if (fabs(d) > 9007199254740991.0)
        return sfail(s, kw, "is beyond what an integer bound can be (2^53)");
    long long b;
    if (upper)
        b = excl && d == floor(d) ? (long long)d - 1 : (long long)floor(d);
    else
        b = excl && d == floor(d) ? (long long)d + 1 : (long long)ceil(d);
    if (!*has || (upper ? b < *v : b > *v))
        *v = b;
    *has = 1;
    return 0;
}

static struct gx *sv_integer(struct sc *s, const cJSON *node)
{
    struct gb *b = s->b;
    int has_lo = 0, has_hi = 0;
    long long lo = 0, hi = 0;
    if (bound(s, node, "minimum", 0, &has_lo, &lo) ||
        bound(s, node, "exclusiveMinimum", 0, &has_lo, &lo) ||
        bound(s, node, "maximum", 1, &has_hi, &hi) ||
        bound(s, node, "exclusiveMaximum", 1, &has_hi, &hi))
        return gx_empty(b);
    if (!has_lo && !has_hi)
        return any_integer(s);
    if (has_lo && has_hi && hi < lo)
        return sfail(s, "maximum", "no integer lies between the bounds"), gx_empty(b);
    return integer_range(s, has_lo, lo, has_hi, hi);
}

static struct gx *sv_type(struct sc *s, const cJSON *node, const char *t)
{
    struct gb *b = s->b;
    if (!strcmp(t, "string"))
        return sv_string(s, node);
    if (!strcmp(t, "integer"))
        return sv_integer(s, node);
    if (!strcmp(t, "number")) {
        static const char *const k[] = {"minimum", "maximum", "exclusiveMinimum",
                                        "exclusiveMaximum"};
        for (int i = 0; i < 4; i++)
            if (get(node, k[i]) && !cJSON_IsFalse(get(node, k[i])))
                return sfail(s, k[i],
                             "bounds on a number are not supported (on an integer "
                             "they are)"),
                       gx_empty(b);
        return any_number(s);
    }
    if (!strcmp(t, "boolean"))
        return gx_alt2(b, gx_str(b, "true"), gx_str(b, "false"));
    if (!strcmp(t, "null"))
        return gx_str(b, "null");
    if (!strcmp(t, "object"))
        return sv_object(s, node);
    if (!strcmp(t, "array"))
        return sv_array(s, node);
    sfail(s, "type", "'%.40s' is not a JSON type", t);
    return gx_empty(b);
}

/* The type a schema without "type" describes, from its keywords; NULL: any value. */
static const char *implied_type(const cJSON *node)
{
    static const struct {
        const char *kw, *type;
    } k[] = {
        {"properties", "object"},
        {"required", "object"},
        {"additionalProperties", "object"},
        {"items", "array"},
        {"prefixItems", "array"},
        {"minItems", "array"},
        {"maxItems", "array"},
        {"minLength", "string"},
        {"maxLength", "string"},
        {"pattern", "string"},
        {"format", "string"},
        {"minimum", "number"},
        {"maximum", "number"},
        {"exclusiveMinimum", "number"},
        {"exclusiveMaximum", "number"},
    };
    for (size_t i = 0; i < sizeof k / sizeof *k; i++)
        if (get(node, k[i].kw))
            return k[i].type;
    return NULL;
}

static struct gx *sv_inner(struct sc *s, const cJSON *node)
{
    struct gb *b = s->b;
    if (cJSON_IsTrue(node))
        return any_value(s);
    if (cJSON_IsFalse(node))
        return sfail(s, "false", "a false schema admits no value"), gx_empty(b);
    if (!cJSON_IsObject(node))
        return sfail(s, "type", "a schema must be an object or a boolean"), gx_empty(b);
    if (check_keywords(s, node))
        return gx_empty(b);
    const cJSON *ref = get(node, "$ref"), *all = get(node, "allOf");
    const cJSON *any = get(node, "anyOf"), *one = get(node, "oneOf");
    if (all) {
        if (!cJSON_IsArray(all) || !all->child)
            return sfail(s, "allOf", "must be a non-empty array of schemas"), gx_empty(b);
        size_t old = path_push(s, "allOf");
        cJSON *m = merge_all(s, node, all);
        path_pop(s, old);
        if (!m)
            return gx_empty(b);
        struct gx *x = b->rc ? gx_empty(b) : sv(s, m);
        /* the merged tree may still be read by nothing: compiled expressions hold no pointers */
        cJSON_Delete(m);
        return x;
    }
    if (ref) {
        if (!cJSON_IsString(ref))
            return sfail(s, "$ref", "must be a string"), gx_empty(b);
        for (const cJSON *k = node->child; k; k = k->next)
            if (strcmp(k->string, "$ref") &&
                !in_list(k->string, k_annotations, sizeof k_annotations / sizeof *k_annotations))
                return sfail(s, k->string, "next to $ref is not supported (use allOf)"),
                       gx_empty(b);
        return ref_rule(s, ref->valuestring);
    }
    if (any || one) {
        const cJSON *l = any ? any : one;
        const char *kw = any ? "anyOf" : "oneOf";
        if (any && one)
            return sfail(s, "oneOf", "together with anyOf is not supported"), gx_empty(b);
        if (!cJSON_IsArray(l) || !l->child)
            return sfail(s, kw, "must be a non-empty array of schemas"), gx_empty(b);
        /* other keywords next to it apply to each branch */
        int siblings = 0;
        for (const cJSON *k = node->child; k; k = k->next)
            siblings +=
                strcmp(k->string, kw) &&
                !in_list(k->string, k_annotations, sizeof k_annotations / sizeof *k_annotations);
        struct gx *alt = gx_alt(b);
        int i = 0;
        for (const cJSON *k = l->child; k && !b->rc; k = k->next, i++) {
            char idx[24];
            snprintf(idx, sizeof(idx), "%d", i);
            size_t old = path_push(s, kw);
            path_push(s, idx);
            if (!siblings)
                gx_add(b, alt, sv(s, k));
            else {
                cJSON *m = cJSON_CreateObject(), *arr = cJSON_CreateArray();
                for (const cJSON *x = node->child; m && arr && x; x = x->next)
                    if (strcmp(x->string, kw))
                        cJSON_AddItemToObject(m, x->string, cJSON_Duplicate(x, 1));
                cJSON_AddItemToArray(arr, cJSON_Duplicate(k, 1));
                cJSON_AddItemToObject(m, "allOf", arr);
                gx_add(b, alt, sv(s, m));
                cJSON_Delete(m);
            }
            path_pop(s, old);
        }
        return alt;
    }
    const cJSON *cst = get(node, "const"), *en = get(node, "enum");
    if (cst)
        return const_value(s, cst);
    if (en) {
        if (!cJSON_IsArray(en) || !en->child)
            return sfail(s, "enum", "must be a non-empty array"), gx_empty(b);
        struct gx *alt = gx_alt(b);
        for (const cJSON *k = en->child; k; k = k->next)
            gx_add(b, alt, const_value(s, k));
        return alt;
    }
    const cJSON *type = get(node, "type"), *nullable = get(node, "nullable");
    struct gx *x;
    if (!type) {
        const char *t = implied_type(node);
        x = t ? sv_type(s, node, t) : any_value(s);
    } else if (cJSON_IsString(type))
        x = sv_type(s, node, type->valuestring);
    else if (cJSON_IsArray(type) && type->child) {
        x = gx_alt(b);
        for (const cJSON *t = type->child; t && !b->rc; t = t->next) {
            if (!cJSON_IsString(t))
                return sfail(s, "type", "must be a type name or an array of them"), gx_empty(b);
            gx_add(b, x, sv_type(s, node, t->valuestring));
        }
    } else
        return sfail(s, "type", "must be a type name or an array of them"), gx_empty(b);
    if (cJSON_IsTrue(nullable))
        x = gx_alt2(b, x, gx_str(b, "null"));
    return x;
}

static struct gx *sv(struct sc *s, const cJSON *node)
{
    struct gb *b = s->b;
    if (b->rc)
        return gx_empty(b);
    if (++s->depth > b->lim->max_depth) {
        gb_fail(b, -E2BIG, "json_schema: nested more than %d deep at '%.200s'", b->lim->max_depth,
                s->path ? s->path : "");
        return gx_empty(b);
    }
    if (gb_check_time(b))
        return gx_empty(b);
    struct gx *x = sv_inner(s, node);
    s->depth--;
    return x;
}

static void sc_init(struct sc *s, struct gb *b)
{
    memset(s, 0, sizeof(*s));
    s->b = b;
    s->r_value = s->r_object = s->r_array = s->r_string = s->r_chars = s->r_number = s->r_integer =
        -1;
}

static void sc_free(struct sc *s)
{
    for (int i = 0; i < s->n_refs; i++)
        free(s->refs[i].ref);
    free(s->refs);
    free(s->path);
}

int gram_schema_compile(struct gb *b, const char *src, size_t len)
{
    const char *end = NULL;
    cJSON *doc = cJSON_ParseWithLengthOpts(src, len, &end, 0);
    if (!doc) {
        gb_fail(b, -EINVAL, "json_schema: the schema is not valid JSON (near byte %ld)",
                end ? (long)(end - src) : 0L);
        return -1;
    }
    struct sc s;
    sc_init(&s, b);
    s.doc = doc;
    int root = gb_rule(b, "root", 4);
    gb_define(b, root, sv(&s, doc));
    sc_free(&s);
    cJSON_Delete(doc);
    return b->rc ? -1 : root;
}

int gram_json_object(struct gb *b)
{
    struct sc s;
    sc_init(&s, b);
    int root = gb_rule(b, "root", 4);
    gb_define(b, root, any_object(&s));
    sc_free(&s);
    return b->rc ? -1 : root;
}

int gram_choice_compile(struct gb *b, const char *src, size_t len)
{
    cJSON *doc = cJSON_ParseWithLength(src, len);
    if (!cJSON_IsArray(doc) || !doc->child) {
        cJSON_Delete(doc);
        gb_fail(b, -EINVAL, "choice: must be a non-empty array of strings");
        return -1;
    }
    int root = gb_rule(b, "root", 4);
    struct gx *alt = gx_alt(b);
    for (const cJSON *k = doc->child; k; k = k->next) {
        if (!cJSON_IsString(k)) {
            gb_fail(b, -EINVAL, "choice: must be a non-empty array of strings");
            break;
        }
        gx_add(b, alt, gx_str(b, k->valuestring));
    }
    gb_define(b, root, alt);
    cJSON_Delete(doc);
    return b->rc ? -1 : root;
}

/* A string member of the tool-calls spec, or dflt when absent; NULL when it is not a string. */
static const char *spec_str(const cJSON *spec, const char *key, const char *dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(spec, key);
    return !v ? dflt : cJSON_IsString(v) ? v->valuestring : NULL;
}

int gram_tools_compile(struct gb *b, const char *src, size_t len)
{
    cJSON *spec = cJSON_ParseWithLength(src, len);
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(spec, "tools");
    const char *prefix = spec_str(spec, "prefix", ""), *suffix = spec_str(spec, "suffix", "");
    const char *cpre = spec_str(spec, "call_prefix", ""), *csuf = spec_str(spec, "call_suffix", "");
    const char *sep = spec_str(spec, "sep", ""), *nkey = spec_str(spec, "name_key", "name");
    const char *akey = spec_str(spec, "args_key", "arguments");
    const cJSON *jmin = cJSON_GetObjectItemCaseSensitive(spec, "min");
    const cJSON *jmax = cJSON_GetObjectItemCaseSensitive(spec, "max");
    int min = cJSON_IsNumber(jmin) ? jmin->valueint : 1;
    int max = cJSON_IsNumber(jmax) ? jmax->valueint : 1;
    if (!cJSON_IsObject(spec) || !cJSON_IsArray(tools) || !tools->child || !prefix || !suffix ||
        !cpre || !csuf || !sep || !nkey || !akey || min < 1 || (max != -1 && max < min)) {
        cJSON_Delete(spec);
        gb_fail(b, -EINVAL,
                "tool_calls: the spec must be an object with a non-empty tools array, string "
                "markers and 1 <= min <= max (or max -1)");
        return -1;
    }
    struct sc s;
    sc_init(&s, b);
    /* one call: {"<name_key>": "<name>", "<args_key>": <its parameters>} for any of the tools */
    struct gx *alt = gx_alt(b);
    int i = 0;
    for (const cJSON *t = tools->child; t && !b->rc; t = t->next, i++) {
        const char *name = spec_str(t, "name", NULL);
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(t, "parameters");
        if (!name || (params && !cJSON_IsObject(params) && !cJSON_IsBool(params))) {
            gb_fail(b, -EINVAL, "tool_calls: tools[%d] needs a name and an object of parameters",
                    i);
            break;
        }
        struct gx *x = gx_seq(b);
        gx_add(b, x, gx_str(b, "{"));
        gx_add(b, x, string_lit(&s, nkey));
        gx_add(b, x, gx_str(b, ": "));
        gx_add(b, x, string_lit(&s, name));
        gx_add(b, x, gx_str(b, ", "));
        gx_add(b, x, string_lit(&s, akey));
        gx_add(b, x, gx_str(b, ": "));
        /* each tool's schema is a document of its own: its $refs resolve inside it */
        for (int k = 0; k < s.n_refs; k++)
            free(s.refs[k].ref);
        s.n_refs = 0;
        char seg[16];
        snprintf(seg, sizeof seg, "%d", i);
        size_t old = path_push(&s, "tools");
        path_push(&s, seg);
        path_push(&s, "parameters");
        s.doc = (cJSON *)params;
        gx_add(b, x, params ? sv(&s, params) : any_object(&s));
        path_pop(&s, old);
        gx_add(b, x, gx_str(b, "}"));
        gx_add(b, alt, x);
    }
    int call = gb_rule(b, "tool-call", 9);
    struct gx *one = gx_seq(b);
    gx_add(b, one, gx_str(b, cpre));
    gx_add(b, one, alt);
    gx_add(b, one, gx_str(b, csuf));
    gb_define(b, call, one);
    int root = gb_rule(b, "root", 4);
    struct gx *x = gx_seq(b);
    gx_add(b, x, gx_str(b, prefix));
    gx_add(b, x, gx_ref(b, call));
    if (max != 1) {
        struct gx *more = gx_seq2(b, gx_str(b, sep), gx_ref(b, call));
        gx_add(b, x, gx_rep(b, more, min - 1, max < 0 ? -1 : max - 1));
    }
    gx_add(b, x, gx_str(b, suffix));
    gb_define(b, root, x);
    sc_free(&s);
    cJSON_Delete(spec);
    return b->rc ? -1 : root;
}

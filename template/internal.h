/*
 * template/internal.h - what the parser (parse.c), the values (value.c) and
 * the evaluator (eval.c) share: an arena, the value type and the syntax tree.
 */
#ifndef CINFER_TEMPLATE_INTERNAL_H
#define CINFER_TEMPLATE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "template/template.h"
#include "util/buf.h"

/* ---- arena: everything a parse or a render makes, freed at once ---------- */

struct arena {
    struct arena_chunk *head;
    size_t used, limit; /* bytes handed out; 0 limit: none */
    int over;           /* an allocation was refused for the limit */
};
/* n bytes, zeroed and 16-aligned; NULL when out of memory or over the limit. */
void *arena_alloc(struct arena *a, size_t n);
void arena_free(struct arena *a);

/* ---- values ------------------------------------------------------------- */

enum tv_type {
    TV_UNDEF, /* a missing variable or member; s names it */
    TV_NONE,
    TV_BOOL,
    TV_INT,
    TV_FLOAT,
    TV_STR,
    TV_LIST, /* also tuples (l->tuple) */
    TV_DICT,
    TV_NS,     /* namespace(): a dict whose members may be set */
    TV_MACRO,  /* a macro, or the caller of a call block */
    TV_FUNC,   /* a built-in global function (fn) */
    TV_METHOD, /* a method bound to its object (self, s names it) */
    TV_LOOP,   /* the loop variable of a for loop */
};

struct tv {
    enum tv_type t;
    size_t n; /* TV_STR and TV_UNDEF, TV_METHOD: length of s */
    union {
        int b;
        int64_t i;
        double f;
        const char *s;
        struct tlist *l;
        struct tdict *d;
        struct tmacro *m;
        struct tloop *loop;
        int fn;
    };
    struct tv *self; /* TV_METHOD: the object */
};

struct tlist {
    size_t n;
    int tuple;
    struct tv *v;
};

struct tdict {
    size_t n, cap;
    struct tv *k, *v; /* insertion order */
};

struct tloop {
    int64_t index0, length;
    const struct tv *items;
    int depth;
    const struct stmt *s; /* a recursive loop: the for statement loop(x) runs again */
    struct frame *f;      /* and the frame it runs in */
};

struct stmt;
struct expr;
struct tmacro {
    const char *name;
    int nparams;
    const char **params;
    const struct expr **defaults; /* NULL where a parameter has none */
    const struct stmt *body;
    const struct tv *caller; /* the caller() visible inside, or NULL */
    struct frame *closure;
};

static inline struct tv tv_none(void)
{
    return (struct tv){.t = TV_NONE};
}
static inline struct tv tv_bool(int b)
{
    return (struct tv){.t = TV_BOOL, .b = !!b};
}
static inline struct tv tv_int(int64_t i)
{
    return (struct tv){.t = TV_INT, .i = i};
}
static inline struct tv tv_float(double f)
{
    return (struct tv){.t = TV_FLOAT, .f = f};
}
static inline struct tv tv_str(const char *s, size_t n)
{
    return (struct tv){.t = TV_STR, .s = s, .n = n};
}

/*
 * The bounds of one walk over a value (==, <, str(), repr(), tojson, a dict
 * lookup by a key that is not a string).  Values may share elements - each
 * [x, x] doubles what a walk visits - and a namespace may hold itself, so
 * each element a walk reaches is one step of the render (*steps, up to
 * max_steps), a walk goes at most TV_WALK_DEPTH deep, and writes at most
 * about max_bytes.  Past a bound the walk stops: over names the bound and
 * stays set, the function returns -E2BIG (tv_equal: 0, tv_dict_find: NULL).
 * A NULL walk is unbounded: only for string keys and values without lists
 * or dicts in them.
 */
#define TV_WALK_DEPTH 1000
struct tv_walk {
    uint64_t *steps, max_steps;
    size_t max_bytes;
    const char *over; /* "steps", "depth", "bytes", or NULL */
};

/* value.c */
int tv_truthy(const struct tv *v);
/* Python's ==. */
int tv_equal(const struct tv *a, const struct tv *b, struct tv_walk *w);
/* <0, 0, >0 into *out for numbers, strings and lists; -EINVAL for other pairs, -E2BIG. */
int tv_compare(const struct tv *a, const struct tv *b, int *out, struct tv_walk *w);
/* str(v) appended; lists and dicts as Python's repr.  0, -ENOMEM or -E2BIG. */
int tv_str_append(struct buf *b, const struct tv *v, struct tv_walk *w);
int tv_repr_append(struct buf *b, const struct tv *v, struct tv_walk *w);
/* json.dumps(v, ensure_ascii, indent, separators, sort_keys); indent < 0: none.
   -EINVAL (with the type name in *bad) for a value JSON cannot hold; -ENOMEM, -E2BIG. */
int tv_json_append(struct buf *b, const struct tv *v, int indent, const char *item_sep,
                   const char *key_sep, int sort_keys, int ascii, const char **bad,
                   struct tv_walk *w);
const char *tv_type_name(const struct tv *v);
/* Python float repr of f. */
int tv_float_append(struct buf *b, double f);
/* A cJSON value as a value in arena a; -ENOMEM. */
int tv_from_json(struct arena *a, const cJSON *j, struct tv *out);
/* d[key] of a dict or namespace; NULL when absent. */
struct tv *tv_dict_get(const struct tdict *d, const char *key, size_t n);
struct tv *tv_dict_find(const struct tdict *d, const struct tv *key, struct tv_walk *w);
/* d[key] = v (key copied by value); 0, -ENOMEM or -E2BIG. */
int tv_dict_set(struct arena *a, struct tdict *d, const struct tv *key, const struct tv *v,
                struct tv_walk *w);
/* Number of code points in a UTF-8 string (invalid bytes count one each). */
size_t tv_utf8_len(const char *s, size_t n);
/* Byte offset of code point i (i <= len). */
size_t tv_utf8_off(const char *s, size_t n, size_t i);

/* ---- syntax tree -------------------------------------------------------- */

enum expr_kind {
    E_LIT,    /* lit */
    E_NAME,   /* name */
    E_ATTR,   /* a.name */
    E_ITEM,   /* a[b] */
    E_SLICE,  /* a[b:c:d], each may be NULL */
    E_CALL,   /* a(args, kw=...) */
    E_FILTER, /* a | name(args); a NULL inside a filter block */
    E_TEST,   /* a is [not] name(args) */
    E_BIN,    /* a op b */
    E_CMP,    /* a op b op c ... (args, ops) */
    E_NEG,
    E_POS,
    E_NOT,
    E_AND,
    E_OR,
    E_COND, /* b if a else c (c may be NULL) */
    E_LIST,
    E_TUPLE,
    E_DICT, /* args: key, value, key, value ... */
    E_CONCAT,
};

enum bin_op {
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_DIV,
    OP_FLOORDIV,
    OP_MOD,
    OP_POW,
    OP_EQ,
    OP_NE,
    OP_LT,
    OP_LE,
    OP_GT,
    OP_GE,
    OP_IN,
    OP_NOTIN,
};

struct expr {
    enum expr_kind k;
    int line;
    int op; /* enum bin_op; E_TEST: 1 when negated */
    struct tv lit;
    const char *name; /* E_NAME, E_ATTR, E_FILTER, E_TEST (NUL-terminated) */
    const struct expr *a, *b, *c, *d;
    int nargs, nkw;
    const struct expr **args;
    const char **kwnames;
    const struct expr **kwargs;
    int *ops; /* E_CMP: nargs - 1 operators */
};

enum stmt_kind {
    S_TEXT,   /* text, n */
    S_OUT,    /* {{ e }} */
    S_IF,     /* e, body, else_body */
    S_FOR,    /* targets, e (iter), cond, body, else_body */
    S_SET,    /* targets (or ns.attr: targets[0], attr), e */
    S_SETBLK, /* targets[0], body, filter (e may be an E_FILTER chain with a NULL base) */
    S_MACRO,  /* macro */
    S_CALL,   /* e (the call), macro (the caller) */
    S_FILTER, /* e (a filter chain with a NULL base), body */
    S_BREAK,
    S_CONTINUE,
    S_BODY, /* body (generation blocks) */
};

struct stmt {
    enum stmt_kind k;
    int line;
    const struct stmt *next;
    const char *text;
    size_t n;
    const struct expr *e, *cond;
    const struct stmt *body, *else_body;
    int ntargets;
    const char **targets;
    const char *attr; /* S_SET: set ns.attr */
    int recursive;    /* S_FOR: for ... recursive */
    struct tmacro *macro;
};

struct tpl {
    struct arena ar;
    const struct stmt *body;
    char *src; /* the normalised source */
    size_t n;
};

/* parse.c: the tree of src into t (its arena); 0 or -EINVAL/-ENOMEM with a message. */
int tpl_parse(struct tpl *t, char *err, size_t errlen);

#endif

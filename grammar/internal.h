/*
 * grammar/internal.h - private to grammar/: the expression builder the
 * front ends (gbnf.c, regex.c, schema.c) write into, and the compiled form
 * match.c runs.
 *
 * A front end builds expressions (sequences, alternatives, byte sets,
 * references to named rules, bounded repetitions) in an arena; build.c
 * lowers them to flat rules - each an array of alternatives, each a run of
 * elements (a byte set or a rule reference) ended by GE_END - in which an
 * alternative or repetition nested inside a sequence becomes a rule of its
 * own.  Code points are spelled as UTF-8 byte sequences, so the matcher
 * only ever sees bytes.
 */
#ifndef CINFER_GRAMMAR_INTERNAL_H
#define CINFER_GRAMMAR_INTERNAL_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "grammar/gram.h"

/* ---- expressions ---- */

enum gx_kind { GX_EMPTY = 0, GX_BYTES, GX_SEQ, GX_ALT, GX_REF, GX_REP };

struct gx {
    uint8_t kind;
    uint32_t arg; /* GX_BYTES: byte-set index; GX_REF: rule id */
    int min, max; /* GX_REP: bounds, max -1 for none; the repeated expression is kids[0] */
    int n, cap;   /* children (GX_SEQ, GX_ALT, GX_REP) */
    struct gx **kids;
};

struct gb_chunk;
/* The builder: rules by name, expressions and byte sets; the first error sticks. */
struct gb {
    struct gb_chunk *arena;
    int n_rules, cap_rules;
    char **names;
    struct gx **exprs; /* NULL: referenced but not (yet) defined */
    uint8_t (*sets)[32];
    int n_sets, cap_sets;
    uint32_t *set_hash; /* open addressing over set indices + 1 */
    int set_hash_cap;
    const struct gram_limits *lim;
    int n_exprs;
    int *down; /* per rule: chain_rule's link one level down, + 1 (0: none) */
    int cap_down;
    int rc; /* 0, or the first error */
    char *err;
    size_t errlen;
    double t0; /* compile start, for the time limit */
};

void gb_init(struct gb *b, const struct gram_limits *lim, char *err, size_t errlen);
void gb_free(struct gb *b);
/* Records the first error (printf-style message); returns rc. */
int gb_fail(struct gb *b, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* -ETIMEDOUT once the compile has run past its limit (checked by loops that may be long). */
int gb_check_time(struct gb *b);

/* The rule called name (created, undefined, when new); -1 on error. */
int gb_rule(struct gb *b, const char *name, size_t n);
/* A new rule named after prefix ("prefix-N"). */
int gb_rule_new(struct gb *b, const char *prefix);
void gb_define(struct gb *b, int rule, struct gx *x);

struct gx *gx_empty(struct gb *b);
struct gx *gx_set(struct gb *b, const uint8_t set[32]);
struct gx *gx_byte(struct gb *b, uint8_t c);
struct gx *gx_range(struct gb *b, uint8_t lo, uint8_t hi);
struct gx *gx_lit(struct gb *b, const char *s, size_t n); /* these bytes in order */
struct gx *gx_str(struct gb *b, const char *s);           /* gx_lit of a C string */
struct gx *gx_ref(struct gb *b, int rule);
struct gx *gx_seq(struct gb *b);
struct gx *gx_alt(struct gb *b);
/* Appends kid to a GX_SEQ or GX_ALT; returns x. */
struct gx *gx_add(struct gb *b, struct gx *x, struct gx *kid);
struct gx *gx_seq2(struct gb *b, struct gx *a, struct gx *c);
struct gx *gx_alt2(struct gb *b, struct gx *a, struct gx *c);
struct gx *gx_rep(struct gb *b, struct gx *x, int min, int max);
struct gx *gx_opt(struct gb *b, struct gx *x);

/*
 * Code point ranges (inclusive, any order, overlaps fine; negate: their
 * complement in U+0000..U+10FFFF) as UTF-8: an alternative of byte-range
 * sequences, surrogates excluded.  NULL-free: on error an empty expression.
 */
struct gcp_range {
    uint32_t lo, hi;
};
struct gx *gx_cps(struct gb *b, const struct gcp_range *r, int n, int negate);
/* Appends the UTF-8 of code point c to out (>= 4 bytes); returns its length. */
int gram_utf8_put(uint32_t c, char *out);
/* Decodes one UTF-8 character from p (n bytes left): its length, or 0 for a bad sequence. */
int gram_utf8_get(const char *p, size_t n, uint32_t *c);

/* ---- front ends: each defines rules in b and returns the start rule, or -1 ---- */

int gram_gbnf_parse(struct gb *b, const char *src, size_t len);
/*
 * A regular expression as an expression; json_string: spell each
 * character as it appears inside a JSON string (quote, backslash and
 * control characters escaped), for a schema's "pattern".
 */
struct gx *gram_regex_parse(struct gb *b, const char *src, size_t len, int json_string);
int gram_schema_compile(struct gb *b, const char *src, size_t len);
int gram_json_object(struct gb *b);
int gram_choice_compile(struct gb *b, const char *src, size_t len);
/* GRAM_TOOL_CALLS: the spec of gram.h's comment; the calls' arguments by schema.c. */
int gram_tools_compile(struct gb *b, const char *src, size_t len);

/* ---- the compiled grammar ---- */

enum ge_type { GE_END = 0, GE_BYTES = 1, GE_REF = 2 };
struct gel {
    uint32_t type; /* enum ge_type */
    uint32_t arg;  /* GE_BYTES: set index; GE_REF: rule */
};

/* What a BYTES position does with each token, whatever the stack below it holds. */
struct gpos {
    uint32_t n_acc;     /* tokens accepted on its own */
    int32_t *acc;       /* their ids, or NULL when acc_bits holds them */
    uint32_t *acc_bits; /* n_vocab bits, for big sets */
    uint32_t n_unc;     /* uncertain entries, sorted by suffix */
    int32_t *unc_tok;   /* token */
    uint16_t *unc_off;  /* where its suffix starts: the rule may end before that byte */
    uint16_t *unc_lcp;  /* bytes the suffix shares with the previous entry's */
    uint8_t shared;     /* the arrays are another position's (a repetition's twin) */
};

struct gram {
    atomic_int refs;
    int n_rules;
    char **names;
    uint32_t *rule_alt; /* first alternative of rule r: alts[rule_alt[r] .. rule_alt[r+1]) */
    uint32_t *alts;     /* element index where each alternative starts */
    struct gel *els;
    int n_els;
    uint8_t (*sets)[32];
    int n_sets;
    uint32_t root;         /* the start rule */
    uint32_t *rule_of;     /* rule of each element */
    uint8_t (*follow)[32]; /* bytes that may follow each rule */
    /*
     * Per rule: the rule one level down in a chain of repetitions laid
     * out exactly like it (same alternatives and elements, its reference
     * to the next level pointing one level lower), each level consuming a
     * byte at least; -1 when none.  Positions deep enough in such a chain
     * have equal tables (gram_tables_build computes them once).
     */
    int32_t *down;
    const struct gram_vocab *v;
    struct gpos *pos; /* per element (BYTES ones), when v */
    struct gram_limits lim;
    struct gram_stats st;
    struct gram_rt *rt; /* what its matchers share (match.c), made with the first */
};

/* The memory a grammar's matchers may keep in cached masks. */
#define GRAM_MASK_BUDGET ((size_t)32 << 20)

/* Bytes of each token and a trie over them in preorder. */
struct gram_vocab {
    int n_vocab;
    uint32_t *off, *len; /* token i: blob[off[i] .. off[i] + len[i]) */
    char *blob;
    int n_nodes;       /* trie nodes, preorder; a node is a distinct non-empty prefix */
    uint8_t *t_byte;   /* its last byte */
    uint16_t *t_depth; /* its length */
    uint32_t *t_end;   /* index past its subtree */
    uint32_t *t_tok;   /* tokens spelled exactly by it: sorted[t_tok[i] .. t_tok[i + 1]) */
    int32_t *sorted;   /* token ids in byte order */
    int max_len;
};

static inline int gset_has(const uint8_t *set, unsigned c)
{
    return (set[c >> 3] >> (c & 7)) & 1;
}
static inline void gset_add(uint8_t *set, unsigned c)
{
    set[c >> 3] |= (uint8_t)(1u << (c & 7));
}

/* build.c: lowers b (start rule root) into a grammar; 0 or the error. */
int gram_lower(struct gb *b, int root, struct gram **out);
void gram_free(struct gram *g);
/* match.c: drops the grammar's shared matcher state (running matchers keep theirs). */
void gram_rt_release(struct gram *g);
/* match.c: the token tables of every position; 0 or an error with a message. */
int gram_tables_build(struct gram *g, double t0, char *err, size_t errlen);

#endif

/*
 * grammar/gram.h - constrained decoding: a JSON schema, a regular
 * expression, a list of choices or a GBNF grammar (llama.cpp's syntax)
 * compiled to one matcher over bytes, and the per-step token mask over a
 * model's whole vocabulary.
 *
 * The matcher is a pushdown automaton with a set of stacks (as llama.cpp's
 * GBNF sampler and XGrammar): a stack is a chain of positions in the
 * compiled rules, hash-consed so that a state is a short sorted list of
 * ids and equal states are found in a cache.  Why a PDA and not Earley:
 * the grammars users bring are llama.cpp's, written for a PDA (no left
 * recursion, which is refused by name), a JSON grammar is nearly
 * deterministic, so a byte costs a few stack steps, and the top of a stack
 * is a grammar position whose tokens can be classified once, at compile
 * time, whatever lies below it (XGrammar's context-independent tokens).
 *
 * The mask for a state is the union, over its stacks, of the tokens the
 * top position accepts on its own (precomputed per position, over a trie
 * of the vocabulary), plus those of its "uncertain" tokens - the ones that
 * run past the end of the position's rule into a byte the rule may be
 * followed by - that the real stack below accepts (checked at run time,
 * sharing common suffixes).  Masks are cached per state.
 *
 * Not here: tokenizers (the caller gives each token's bytes), sampling,
 * and any knowledge of a model.  Everything is bounded by struct
 * gram_limits; nothing here exits or aborts.
 */
#ifndef CINFER_GRAMMAR_GRAM_H
#define CINFER_GRAMMAR_GRAM_H

#include <stddef.h>
#include <stdint.h>

enum gram_kind {
    GRAM_GBNF = 0,    /* llama.cpp's GBNF; the start rule is `root` */
    GRAM_JSON_SCHEMA, /* a JSON schema (text) */
    GRAM_JSON_OBJECT, /* any JSON object (response_format json_object); src is ignored */
    GRAM_REGEX,       /* a regular expression the whole output must match */
    GRAM_CHOICE,      /* a JSON array of strings: the output is one of them */
    /*
     * Tool calls, from a JSON spec: {"tools": [{"name": N, "parameters":
     * SCHEMA}, ...], "min": 1, "max": 1 (-1: no bound), "prefix", "suffix"
     * (around the whole list), "call_prefix", "call_suffix" (around each
     * call), "sep" (between calls), "name_key" ("name"), "args_key"
     * ("arguments")}.  A call is {"NAME_KEY": "N", "ARGS_KEY": <JSON that
     * satisfies N's SCHEMA>} for one of the tools, spaced as json.dumps.
     */
    GRAM_TOOL_CALLS,
};

struct gram_limits {
    size_t max_source;    /* bytes of schema or grammar text */
    int max_depth;        /* nesting of the schema, expression or $ref chain */
    int max_positions;    /* compiled grammar elements */
    int max_stacks;       /* parse stacks alive at once (ambiguity) */
    int max_nodes;        /* stack nodes one matcher may create */
    double max_compile_s; /* compiling, with the vocabulary's tables */
};
void gram_limits_default(struct gram_limits *l);

/*
 * A model's vocabulary as the matcher sees it: each token's bytes (lens[i]
 * 0 or bytes[i] NULL: a token no grammar allows - control tokens; the
 * caller decides end-of-generation tokens itself, see gram_can_end).
 * Copies everything.  Returns 0, -EINVAL or -ENOMEM with a message.
 */
struct gram_vocab;
int gram_vocab_create(int n_vocab, const char *const *bytes, const size_t *lens,
                      struct gram_vocab **out, char *err, size_t errlen);
void gram_vocab_destroy(struct gram_vocab *v);
int gram_vocab_n(const struct gram_vocab *v);

/*
 * Compiles src (len bytes) of the given kind.  v, when not NULL, is the
 * vocabulary whose token tables are built now (it must outlive the
 * grammar); without it the grammar matches bytes only (gram_mask fails).
 * Returns 0, or -EINVAL (a malformed source or an unsupported construct:
 * the message names it and, for a schema, its JSON pointer), -E2BIG (a
 * limit, named), -ETIMEDOUT (compile time) or -ENOMEM.
 */
struct gram;
int gram_compile(enum gram_kind kind, const char *src, size_t len, const struct gram_vocab *v,
                 const struct gram_limits *lim, struct gram **out, char *err, size_t errlen);
/* Reference counting: a grammar is shared by the sequences (and caches) using it. */
struct gram *gram_ref(struct gram *g);
void gram_unref(struct gram *g);

struct gram_stats {
    int rules, positions;
    double compile_s;   /* source -> rules */
    double tables_s;    /* the per-position token tables */
    size_t table_bytes; /* their memory */
    long uncertain;     /* uncertain (token, offset) entries over all positions */
};
void gram_get_stats(const struct gram *g, struct gram_stats *out);
/* The compiled rules in GBNF, one per line (for debugging and tests); malloc'd, or NULL. */
char *gram_dump(const struct gram *g);

/* ---- one sequence's matcher (not thread-safe; one per sequence) ---- */

struct gram_matcher;
int gram_matcher_create(struct gram *g, struct gram_matcher **out);
void gram_matcher_destroy(struct gram_matcher *m);
/* Back to the start, as created (after a restart from the tokens). */
void gram_matcher_reset(struct gram_matcher *m);
/*
 * Advances over n bytes.  Returns 0; -EINVAL when the bytes cannot follow
 * (the state is then unchanged); -E2BIG when a limit (stacks, nodes) is hit.
 */
int gram_feed(struct gram_matcher *m, const char *bytes, size_t n);
/* gram_feed over a token's bytes (the vocabulary's); -EINVAL for a token no grammar allows. */
int gram_accept_token(struct gram_matcher *m, int32_t token);
/* 1 when the text so far is a whole sentence of the grammar (an end token may come now). */
int gram_can_end(const struct gram_matcher *m);
/* 1 when it is whole and nothing more can follow. */
int gram_done(const struct gram_matcher *m);
/*
 * The tokens that may come next: bit i of mask[i / 32] is set for each
 * allowed token (words: (n_vocab + 31) / 32).  End tokens are not set; ask
 * gram_can_end.  Returns 1 when some token is allowed, 0 when none is, or
 * -E2BIG / -ENOMEM.
 */
int gram_mask(struct gram_matcher *m, uint32_t *mask);
/* Counters: masks served from the cache and computed. */
void gram_matcher_counts(const struct gram_matcher *m, uint64_t *hits, uint64_t *misses);

#endif

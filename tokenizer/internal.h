/*
 * tokenizer/internal.h - what the files of the tokenizer module share.
 * Not a public header: only the .c files of tokenizer/ include it.
 */
#ifndef CINFER_TOKENIZER_INTERNAL_H
#define CINFER_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer/spm_c.h"
#include "tokenizer/tokenizer.h"

/* Open-addressing map from byte strings to int32 (keys are not copied). */
struct tok_map {
    struct tok_map_slot {
        const char *k;
        uint32_t n;
        int32_t v;
    } * slots;
    size_t cap; /* a power of two */
    size_t used;
};

int tok_map_init(struct tok_map *m, size_t n_expected);
void tok_map_free(struct tok_map *m);
/* Inserts or overwrites: 0 or -ENOMEM. */
int tok_map_put(struct tok_map *m, const char *k, size_t n, int32_t v);
/* The value of key, or -1. */
int32_t tok_map_get(const struct tok_map *m, const char *k, size_t n);

/* Merge table for BPE: (left id, right id) -> rank and result id. */
struct tok_merges {
    struct tok_merge_slot {
        uint64_t key; /* left << 32 | right, UINT64_MAX when empty */
        int32_t rank;
        int32_t result;
    } * slots;
    size_t cap;
};

/* A growable id vector used while encoding. */
struct tok_ids {
    int32_t *v;
    size_t n, cap;
};
int tok_ids_push(struct tok_ids *a, int32_t id);

struct tok {
    int is_spm;
    size_t n_vocab;
    char **text; /* vocabulary entries, NUL-terminated copies */
    uint32_t *text_len;
    char **piece; /* output bytes of each token (special ones included) */
    uint32_t *piece_len;
    uint8_t *type; /* enum tok_type */
    float *score;
    struct tok_map vocab; /* text -> id */
    int32_t bos, eos, eot, unk, pad;
    int add_bos;
    int add_space_prefix;
    int32_t *specials; /* control / user-defined / unknown ids, longest text first */
    size_t n_specials;
    uint8_t *eog; /* per id: ends generation */

    /* BPE */
    int ignore_merges;
    struct tok_merges merges;
    int32_t byte_id[256]; /* the token of each single byte, -1 if missing */
    uint32_t n_regex;
    pcre2_code *regex[4];

    /* SentencePiece */
    struct spm_c *spm;
};

/* BPE: set up regexes and merges (tok_create calls it), encode one raw fragment. */
int tok_bpe_init(struct tok *t, const struct tok_desc *d, char *err, size_t errlen);
void tok_bpe_free(struct tok *t);
int tok_bpe_encode(const struct tok *t, const char *text, size_t len, struct tok_ids *out);

/* GPT-2 byte <-> unicode mapping. */
uint32_t tok_byte_to_cp(uint8_t b);
int tok_cp_to_byte(uint32_t cp); /* -1 when cp is not in the mapping */

/* UTF-8 helpers. */
size_t tok_utf8_encode(uint32_t cp, char out[4]);
/* Decodes one code point like llama.cpp does; returns its length, or 0 for an invalid byte. */
size_t tok_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);

#endif

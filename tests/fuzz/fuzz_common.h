/* tests/fuzz/fuzz_common.h - helpers shared by the libFuzzer targets. */
#ifndef CINFER_FUZZ_COMMON_H
#define CINFER_FUZZ_COMMON_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "tests/utf8_oracle.h"
#include "tokenizer/tokenizer.h"

/*
 * Encodes data with flags from its first byte, checks the id count bound,
 * every id's range, and that streaming detokenization yields valid UTF-8
 * after every token.  Traps on any violation.
 */
static inline void fuzz_tokenizer(const struct tok *t, const uint8_t *data, size_t size)
{
    if (size == 0)
        return;
    unsigned flags = data[0] & (TOK_ADD_BOS | TOK_PARSE_SPECIAL);
    const char *text = (const char *)data + 1;
    size_t len = size - 1, cap = 3 * len + 2;
    int32_t *ids = malloc(cap * sizeof(*ids));
    if (!ids)
        return;
    int64_t n = tok_encode(t, text, len, flags, ids, cap);
    if (n == -EINVAL || n == -ENOMEM) { /* a vocabulary that cannot spell the text */
        free(ids);
        return;
    }
    if (n < 0 || (size_t)n > cap)
        __builtin_trap();
    struct tok_detok d;
    struct buf out = {0};
    tok_detok_init(&d, t, data[0] & 4 ? TOK_DETOK_SPECIAL : TOK_DETOK_STRIP_SPACE);
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= tok_n_vocab(t))
            __builtin_trap();
        if (tok_detok_feed(&d, ids[i], &out) != 0 ||
            !utf8_oracle_valid((const unsigned char *)out.p, out.n))
            __builtin_trap();
    }
    if (tok_detok_flush(&d, &out) != 0 || !utf8_oracle_valid((const unsigned char *)out.p, out.n))
        __builtin_trap();
    free(out.p);
    free(ids);
}

#endif

/*
 * tests/fuzz/fuzz_grammar.c - libFuzzer target: any bytes as a grammar
 * source - the first byte picks GBNF, a JSON schema, a regex or a choice
 * list - compiled against a small vocabulary (every byte, and some longer
 * tokens) under tight limits.  A source that compiles is then walked: up to
 * 48 steps, each taking a token from the mask, which the matcher must then
 * accept.  Refusals must come with a message.  Traps on any violation.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/gram.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct gram_vocab *g_v;
static int g_n;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    static const char *const words[] = {
        "\"",   "\",",  "\":",   " \"",  "{\"",  "\"}",      "}}",    "[\"",
        "\"]",  "true", "false", "null", "12",   "-1",       "0.",    "e+",
        "\\n",  "\\\"", "\\u00", "é",    "中文", "\xe4\xb8", "\xad",  "  ",
        "\n  ", "ab",   "abc",   "a b",  ", ",   ": ",       "<|x|>", "\xf0\x9f\x98\x80",
        "yes",  "no",
    };
    int nw = (int)(sizeof words / sizeof *words);
    g_n = 256 + nw + 1; /* the last one: a control token, never allowed */
    const char **bytes = calloc((size_t)g_n, sizeof(*bytes));
    size_t *lens = calloc((size_t)g_n, sizeof(*lens));
    static char one[256];
    for (int i = 0; i < 256; i++) {
        one[i] = (char)i;
        bytes[i] = &one[i];
        lens[i] = 1;
    }
    for (int i = 0; i < nw; i++) {
        bytes[256 + i] = words[i];
        lens[256 + i] = strlen(words[i]);
    }
    char err[256];
    if (!bytes || !lens || gram_vocab_create(g_n, bytes, lens, &g_v, err, sizeof(err)))
        abort(); /* a fuzzer harness, not library code */
    free(bytes);
    free(lens);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!size)
        return 0;
    static const enum gram_kind kinds[4] = {GRAM_GBNF, GRAM_JSON_SCHEMA, GRAM_REGEX, GRAM_CHOICE};
    enum gram_kind kind = kinds[data[0] & 3];
    struct gram_limits lim;
    gram_limits_default(&lim);
    lim.max_positions = 20000;
    lim.max_nodes = 1 << 18;
    lim.max_stacks = 256;
    lim.max_compile_s = 2.0;
    char err[512];
    err[0] = 0;
    struct gram *g = NULL;
    int rc = gram_compile(kind, (const char *)data + 1, size - 1, g_v, &lim, &g, err, sizeof(err));
    if (rc) {
        if (g || !err[0] || rc >= 0)
            __builtin_trap();
        return 0;
    }
    struct gram_matcher *m = NULL;
    if (gram_matcher_create(g, &m)) {
        gram_unref(g);
        return 0;
    }
    uint32_t mask[(256 + 64 + 31) / 32];
    unsigned pick = data[0];
    for (int step = 0; step < 48; step++) {
        int any = gram_mask(m, mask);
        if (any < 0)
            break; /* a limit: fine */
        if ((mask[(g_n - 1) >> 5] >> ((g_n - 1) & 31)) & 1)
            __builtin_trap(); /* the control token */
        int allowed[512], n = 0;
        for (int t = 0; t < g_n; t++)
            if ((mask[t >> 5] >> (t & 31)) & 1)
                allowed[n++] = t;
        if ((n > 0) != (any > 0))
            __builtin_trap();
        if (!n)
            break;
        pick = pick * 1103515245u + 12345u;
        int t = allowed[(pick >> 8) % (unsigned)n];
        rc = gram_accept_token(m, t);
        if (rc == -E2BIG)
            break;
        if (rc)
            __builtin_trap(); /* the mask allowed it */
        if (gram_done(m))
            break;
    }
    gram_matcher_destroy(m);
    gram_unref(g);
    return 0;
}

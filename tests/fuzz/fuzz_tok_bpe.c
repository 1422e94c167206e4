/*
 * tests/fuzz/fuzz_tok_bpe.c - libFuzzer target: any bytes through the
 * default model's byte-level BPE tokenizer (CINFER_MODEL) and back through
 * the streaming detokenizer.
 */
#include <stdio.h>
#include <stdlib.h>

#include "engine/engine.h"
#include "engine/vocab.h"
#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct gguf_file *g_file;
static struct tok *g_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *m = getenv("CINFER_MODEL");
    char err[512];
    if (!m || gguf_open(m, &g_file, err, sizeof(err)) != 0 ||
        eng_tokenizer_load(g_file, NULL, &g_tok, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_tok_bpe: set CINFER_MODEL to a GGUF with a BPE tokenizer\n");
        exit(1); /* a fuzzer harness, not library code */
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_tokenizer(g_tok, data, size);
    return 0;
}

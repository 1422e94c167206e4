/*
 * tests/fuzz/fuzz_tok_spm.c - libFuzzer target: any bytes through a
 * SentencePiece tokenizer (CINFER_SPM_MODEL, a tokenizer.model; make fuzz
 * trains one) and back through the streaming detokenizer.
 */
#include <stdio.h>
#include <stdlib.h>

#include "tests/fuzz/fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tok *g_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    char err[512];
    struct tok_desc d = {.model = "llama",
                         .spm_model_path = getenv("CINFER_SPM_MODEL"),
                         .bos = 1,
                         .eos = 2,
                         .eot = -1,
                         .unk = 0,
                         .pad = -1,
                         .add_bos = -1,
                         .add_space_prefix = -1};
    if (!d.spm_model_path || tok_create(&d, &g_tok, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_tok_spm: set CINFER_SPM_MODEL to a tokenizer.model\n");
        exit(1); /* a fuzzer harness, not library code */
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_tokenizer(g_tok, data, size);
    return 0;
}

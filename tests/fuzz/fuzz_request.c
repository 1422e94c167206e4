/*
 * tests/fuzz/fuzz_request.c - libFuzzer target: any bytes as the body of a
 * completions, chat, responses or embeddings request (the first byte picks
 * which), through srv_parse_request / srv_parse_responses /
 * srv_parse_embeddings against the default model's engine (CINFER_MODEL).
 * Whatever it parses must be a request the engine would take: every prompt
 * non-empty with ids in the vocabulary, n and the sampling settings in
 * range; whatever it refuses must be a 4xx or 5xx OpenAI error with a
 * message.  Traps on any violation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/srv.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct engine *g_e;
static struct eng_info g_info;
static const struct srv_model g_model = {.id = "fuzz-model", .alias = "fuzz-alias", .created = 1};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *path = getenv("CINFER_MODEL");
    char err[512];
    struct eng_config cfg = {.threads = 1, .kv_memory_mib = 16, .ctx = 512};
    if (!path || eng_create(path, &cfg, &g_e, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_request: set CINFER_MODEL to a GGUF model (%s)\n",
                path ? err : "unset");
        exit(1); /* a fuzzer harness, not library code */
    }
    eng_get_info(g_e, &g_info);
    return 0;
}

static void check_request(const struct srv_request *r)
{
    if (r->n < 1 || r->n > 16 || r->n_prompts < 1 || !r->prompts || !r->n_prompt)
        __builtin_trap();
    for (int i = 0; i < r->n_prompts; i++) {
        if (r->n_prompt[i] < 1 || !r->prompts[i])
            __builtin_trap();
        for (int k = 0; k < r->n_prompt[i]; k++)
            if (r->prompts[i][k] < 0 || r->prompts[i][k] >= g_info.n_vocab)
                __builtin_trap();
    }
    if (r->p.max_tokens < (r->kind == SRV_COMPLETION && r->echo ? 0 : 1) && !r->p.pooling)
        __builtin_trap();
    if (r->top_logprobs < 0 || r->top_logprobs > 20 || r->p.prompt_top < 0 || r->p.prompt_top > 20)
        __builtin_trap();
    if ((r->kind == SRV_EMBED) != (r->p.pooling != ENG_POOL_NONE) || r->p.pooling > ENG_POOL_LAST)
        __builtin_trap();
    if (r->p.min_tokens < 0 || r->p.n_stop_ids < 0 || (r->p.n_stop_ids && !r->p.stop_ids))
        __builtin_trap();
    for (int i = 0; i < r->p.n_stop_ids; i++)
        if (r->p.stop_ids[i] < 0 || r->p.stop_ids[i] >= g_info.n_vocab)
            __builtin_trap();
    if (smp_params_check(&r->p.sp, g_info.n_vocab) != 0)
        __builtin_trap();
    for (int i = 0; i < r->p.n_stop; i++)
        if (!r->stop[i] || !r->stop[i][0])
            __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    static const enum srv_kind k_kinds[4] = {SRV_COMPLETION, SRV_CHAT, SRV_RESPONSES, SRV_EMBED};
    enum srv_kind kind = k_kinds[data[0] & 3];
    struct srv_request req;
    struct srv_error err;
    memset(&err, 0, sizeof(err));
    const char *body = (const char *)data + 1;
    int rc = kind == SRV_EMBED ? srv_parse_embeddings(body, size - 1, g_e, &g_model, &req, &err)
             : kind == SRV_RESPONSES
                 ? srv_parse_responses(body, size - 1, g_e, &g_model, &req, &err)
                 : srv_parse_request(kind, body, size - 1, g_e, &g_model, &req, &err);
    if (rc == 0) {
        check_request(&req);
    } else if (err.status < 400 || err.status > 599 || !err.message[0] || !err.type) {
        __builtin_trap();
    }
    srv_request_free(&req);
    return 0;
}

/*
 * tests/fuzz/fuzz_template.c - libFuzzer target: any bytes as a chat
 * template and its variables.  The bytes before the first NUL are the
 * template source, the bytes after it a JSON object of top-level variables;
 * without a NUL, or when that part is not a JSON object, a fixed chat
 * context is used (one user message, add_generation_prompt, bos_token,
 * eos_token).  A source that compiles is rendered under tight limits so
 * each run ends in milliseconds.  Errors are fine; a refusal must come with
 * a message (raise_exception's own may be empty) and one of the documented
 * codes, and the output must stay within its budget.  Traps on any
 * violation.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "template/template.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static cJSON *g_ctx; /* the fixed context */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    g_ctx = cJSON_Parse("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}],"
                        " \"add_generation_prompt\": true,"
                        " \"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}");
    if (!g_ctx)
        abort(); /* a fuzzer harness, not library code */
    return 0;
}

static int code_ok(int rc)
{
    return rc == -EINVAL || rc == -EPERM || rc == -E2BIG || rc == -ENOMEM;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *src = (const char *)data;
    const uint8_t *nul = memchr(data, 0, size);
    size_t n = nul ? (size_t)(nul - data) : size;
    char err[512];
    err[0] = 0;
    struct tpl *t = NULL;
    int rc = tpl_compile(src, n, &t, err, sizeof(err));
    if (rc) {
        if (t || !err[0] || !code_ok(rc))
            __builtin_trap();
        return 0;
    }
    if (!t)
        __builtin_trap();
    cJSON *j = NULL;
    if (nul) {
        j = cJSON_ParseWithLength((const char *)nul + 1, size - n - 1);
        if (j && !cJSON_IsObject(j)) {
            cJSON_Delete(j);
            j = NULL;
        }
    }
    struct tpl_limits lim = {
        .max_steps = 200000, .max_output = 1 << 20, .max_memory = 16 << 20, .max_depth = 64};
    struct buf out = {0};
    err[0] = 0;
    rc = tpl_render(t, j ? j : g_ctx, &lim, &out, err, sizeof(err));
    if (rc && (!code_ok(rc) || (!err[0] && rc != -EPERM))) /* raise_exception('') */
        __builtin_trap();
    if (out.n > lim.max_output)
        __builtin_trap();
    free(out.p);
    cJSON_Delete(j);
    tpl_destroy(t);
    return 0;
}

/*
 * tests/unit/main.c - runs every unit suite in one Check runner so that the
 * output ends with one summary line ("100%: Checks: N, Failures: 0, ...").
 */
#include <string.h>
#include <stdio.h>
#include <stdlib.h>

#include "tests/unit/suites.h"

const char *test_model_path(void)
{
    const char *p = getenv("CINFER_MODEL");
    return p && *p ? p : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

int test_next_word(const char **p, char *out, size_t len)
{
    *p += strspn(*p, " ");
    if (!**p)
        return 0;
    size_t n = strcspn(*p, " ");
    snprintf(out, len, "%.*s", (int)n, *p);
    *p += n;
    return 1;
}

const char *test_bin_path(void)
{
    const char *p = getenv("CINFER_BIN");
    return p && *p ? p : "bin/cinfer";
}

int main(void)
{
    SRunner *sr = srunner_create(quant_suite());
    srunner_add_suite(sr, gguf_suite());
    srunner_add_suite(sr, cpus_suite());
    srunner_add_suite(sr, grammar_suite());
    srunner_add_suite(sr, template_suite());
    srunner_add_suite(sr, tok_suite());
    srunner_add_suite(sr, spm_suite());
    srunner_add_suite(sr, cli_suite());
    srunner_add_suite(sr, kv_suite());
    srunner_add_suite(sr, model_suite());
    srunner_add_suite(sr, sched_suite());
    srunner_add_suite(sr, sampler_suite());
    srunner_add_suite(sr, chat_suite());
    srunner_add_suite(sr, server_suite());
    srunner_add_suite(sr, openai_suite());
    srunner_add_suite(sr, device_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

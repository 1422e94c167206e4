/* tests/unit/suites.h - every libcheck suite, one per module; main.c runs them all. */
#ifndef CINFER_TESTS_SUITES_H
#define CINFER_TESTS_SUITES_H

#include <check.h>
#include <stddef.h>

Suite *quant_suite(void);
Suite *gguf_suite(void);
Suite *tok_suite(void);
Suite *spm_suite(void);
Suite *cli_suite(void);
Suite *kv_suite(void);
Suite *model_suite(void);
Suite *device_suite(void);
Suite *sampler_suite(void);
Suite *chat_suite(void);
Suite *server_suite(void);
Suite *openai_suite(void);
Suite *sched_suite(void);
Suite *cpus_suite(void);
Suite *grammar_suite(void);
Suite *template_suite(void);

/* Path helpers shared by the suites: the default model (env CINFER_MODEL) and the binary. */
const char *test_model_path(void);
const char *test_bin_path(void);

/* The next space-separated word of *p into out (cut to len), *p moved past it; 0 at the end. */
int test_next_word(const char **p, char *out, size_t len);

#endif

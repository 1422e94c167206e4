/*
 * tests/unit/check_sampler.c - the sampler: greedy, seeds, each filter and
 * penalty changing the outcome the way its definition says, an allow mask
 * (a grammar's) limiting every choice, raw logprobs,
 * and refusal of out-of-range parameters.
 */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <string.h>

#include "engine/sampler.h"
#include "tests/unit/suites.h"

/* Samples `draws` times from logits; counts[token]++. */
static void draw(const struct smp_params *p, const float *logits, int V, int draws, int *counts)
{
    struct smp s;
    ck_assert_int_eq(smp_init(&s, p, V, NULL, 0), 0);
    for (int i = 0; i < draws; i++) {
        struct smp_result r;
        ck_assert_int_eq(smp_sample(&s, logits, &r), 0);
        ck_assert(r.token >= 0 && r.token < V);
        counts[r.token]++;
    }
    smp_free(&s);
}

START_TEST(greedy_is_argmax)
{
    float lg[5] = {0.1f, 3.0f, -1.0f, 2.9f, 0.0f};
    struct smp_params p;
    smp_params_default(&p);
    p.temperature = 0.0f;
    int c[5] = {0};
    draw(&p, lg, 5, 50, c);
    ck_assert_int_eq(c[1], 50);
    /* top_k = 1 is greedy at any temperature */
    smp_params_default(&p);
    p.temperature = 5.0f;
    p.top_k = 1;
    memset(c, 0, sizeof(c));
    draw(&p, lg, 5, 50, c);
    ck_assert_int_eq(c[1], 50);
}
END_TEST

START_TEST(seed_makes_draws_repeatable)
{
    float lg[64];
    for (int i = 0; i < 64; i++)
        lg[i] = 0.0f;
    struct smp_params p;
    smp_params_default(&p);
    int32_t a[40], b[40], c[40];
    for (int run = 0; run < 3; run++) {
        p.seed = run == 2 ? 43 : 42;
        struct smp s;
        ck_assert_int_eq(smp_init(&s, &p, 64, NULL, 0), 0);
        for (int i = 0; i < 40; i++) {
            struct smp_result r;
            smp_sample(&s, lg, &r);
            (run == 0 ? a : run == 1 ? b : c)[i] = r.token;
        }
        smp_free(&s);
    }
    ck_assert_mem_eq(a, b, sizeof(a));
    ck_assert(memcmp(a, c, sizeof(a)) != 0);
}
END_TEST

START_TEST(frequencies_follow_the_distribution)
{
    /* p = 0.5, 0.3, 0.2 at temperature 1 */
    float lg[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    struct smp_params p;
    smp_params_default(&p);
    p.seed = 7;
    int c[3] = {0};
    draw(&p, lg, 3, 20000, c);
    ck_assert(fabs(c[0] / 20000.0 - 0.5) < 0.02);
    ck_assert(fabs(c[1] / 20000.0 - 0.3) < 0.02);
    ck_assert(fabs(c[2] / 20000.0 - 0.2) < 0.02);
    /* a low temperature sharpens, a high one flattens */
    int lo[3] = {0}, hi[3] = {0};
    p.temperature = 0.5f;
    draw(&p, lg, 3, 5000, lo);
    p.temperature = 2.0f;
    draw(&p, lg, 3, 5000, hi);
    ck_assert_int_gt(lo[0], 5000 * 0.6);  /* 0.25/(0.25+0.09+0.04) = 0.66 */
    ck_assert_int_lt(hi[0], 5000 * 0.45); /* sqrt-weights: 0.42 */
}
END_TEST

START_TEST(top_p_and_min_p_cut_the_tail)
{
    float lg[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    struct smp_params p;
    smp_params_default(&p);
    p.seed = 3;
    p.top_p = 0.6f; /* 0.5 < 0.6, so the head is {0, 1} */
    int c[3] = {0};
    draw(&p, lg, 3, 3000, c);
    ck_assert_int_eq(c[2], 0);
    ck_assert(c[0] > 0 && c[1] > 0);
    ck_assert(fabs(c[0] / 3000.0 - 0.625) < 0.03); /* renormalized 0.5/0.8 */
    smp_params_default(&p);
    p.seed = 3;
    p.min_p = 0.5f; /* keeps p >= 0.25 */
    memset(c, 0, sizeof(c));
    draw(&p, lg, 3, 3000, c);
    ck_assert_int_eq(c[2], 0);
    ck_assert(c[1] > 0);
    smp_params_default(&p);
    p.seed = 3;
    p.top_k = 2;
    memset(c, 0, sizeof(c));
    draw(&p, lg, 3, 3000, c);
    ck_assert_int_eq(c[2], 0);
}
END_TEST

START_TEST(bias_and_penalties_move_the_choice)
{
    float lg[4] = {2.0f, 1.9f, 0.5f, -1.0f};
    struct smp_params p;
    smp_params_default(&p);
    p.temperature = 0.0f;
    struct smp_bias b = {0, -100.0f};
    p.bias = &b;
    p.n_bias = 1;
    struct smp s;
    struct smp_result r;
    ck_assert_int_eq(smp_init(&s, &p, 4, NULL, 0), 0);
    smp_sample(&s, lg, &r);
    ck_assert_int_eq(r.token, 1);
    smp_free(&s);
    /* repetition penalty on a prompt token: 2.0 / 1.2 = 1.67 < 1.9 */
    smp_params_default(&p);
    p.temperature = 0.0f;
    p.repetition_penalty = 1.2f;
    int32_t prompt[1] = {0};
    ck_assert_int_eq(smp_init(&s, &p, 4, prompt, 1), 0);
    smp_sample(&s, lg, &r);
    ck_assert_int_eq(r.token, 1);
    smp_free(&s);
    /* frequency penalty grows with each use; presence is paid once */
    smp_params_default(&p);
    p.temperature = 0.0f;
    p.frequency_penalty = 0.06f;
    ck_assert_int_eq(smp_init(&s, &p, 4, NULL, 0), 0);
    smp_accept(&s, 0);
    smp_sample(&s, lg, &r);
    ck_assert_int_eq(r.token, 0); /* 2.0 - 0.06 > 1.9 */
    smp_accept(&s, 0);
    smp_sample(&s, lg, &r);
    ck_assert_int_eq(r.token, 1); /* 2.0 - 0.12 < 1.9 */
    smp_free(&s);
    smp_params_default(&p);
    p.temperature = 0.0f;
    p.presence_penalty = 0.2f;
    ck_assert_int_eq(smp_init(&s, &p, 4, NULL, 0), 0);
    smp_accept(&s, 0);
    smp_sample(&s, lg, &r);
    ck_assert_int_eq(r.token, 1);
    smp_free(&s);
}
END_TEST

START_TEST(logprobs_are_the_raw_distribution)
{
    float lg[5] = {1.0f, 3.0f, 2.0f, 0.0f, -2.0f};
    struct smp_params p;
    smp_params_default(&p);
    p.temperature = 0.0f;
    p.n_logprobs = 3;
    struct smp_bias b = {1, -50.0f}; /* bias changes the choice, not the logprobs */
    p.bias = &b;
    p.n_bias = 1;
    struct smp s;
    struct smp_result r;
    ck_assert_int_eq(smp_init(&s, &p, 5, NULL, 0), 0);
    smp_sample(&s, lg, &r);
    ck_assert_int_eq(r.token, 2);
    double z = 0.0;
    for (int i = 0; i < 5; i++)
        z += exp(lg[i]);
    ck_assert(fabs(r.logprob - (2.0 - log(z))) < 1e-5);
    ck_assert_int_eq(r.n_top, 3);
    ck_assert_int_eq(r.top[0].token, 1);
    ck_assert_int_eq(r.top[1].token, 2);
    ck_assert_int_eq(r.top[2].token, 0);
    ck_assert(fabs(r.top[0].logprob - (3.0 - log(z))) < 1e-5);
    smp_free(&s);
}
END_TEST

START_TEST(an_allow_mask_limits_every_choice)
{
    /* 70 tokens (three mask words, the last partly past the vocabulary) */
    enum { V = 70 };
    float lg[V];
    for (int i = 0; i < V; i++)
        lg[i] = (float)(i % 7);
    lg[5] = 9.0f; /* the best, not allowed */
    uint32_t allow[3] = {0};
    int allowed[] = {3, 33, 40, 66, 69};
    for (size_t k = 0; k < sizeof(allowed) / sizeof(*allowed); k++)
        allow[allowed[k] >> 5] |= 1u << (allowed[k] & 31);
    allow[2] |= 0xffffffc0u; /* bits past V: never drawn */
    struct smp_params p;
    smp_params_default(&p);
    for (int mode = 0; mode < 3; mode++) {
        p.temperature = mode == 0 ? 0.0f : 1.0f;
        p.top_k = mode == 2 ? 2 : 0;
        struct smp s;
        ck_assert_int_eq(smp_init(&s, &p, V, NULL, 0), 0);
        s.allow = allow;
        int c[V] = {0};
        for (int d = 0; d < 400; d++) {
            struct smp_result r;
            ck_assert_int_eq(smp_sample(&s, lg, &r), 0);
            ck_assert_int_lt(r.token, V);
            ck_assert_msg((allow[r.token >> 5] >> (r.token & 31)) & 1, "token %d", r.token);
            c[r.token]++;
        }
        smp_free(&s);
        /* allowed logits 3, 5, 5, 3, 6: greedy takes 69, the best allowed; top-k 2
         * keeps 69 and a 5 (33 or 40); sampling reaches every allowed one */
        if (mode == 0)
            ck_assert_int_eq(c[69], 400);
        else if (mode == 2)
            ck_assert_int_eq(c[33] + c[40] + c[69], 400);
        else
            for (size_t k = 0; k < sizeof(allowed) / sizeof(*allowed); k++)
                ck_assert_int_gt(c[allowed[k]], 0);
    }
}
END_TEST

START_TEST(bad_parameters_are_refused)
{
    struct smp_params p;
    struct smp s;
    struct smp_bias b = {10, 1.0f};
    float bad[][1] = {{-0.5f}, {NAN}};
    for (int i = 0; i < 2; i++) {
        smp_params_default(&p);
        p.temperature = bad[i][0];
        ck_assert_int_eq(smp_init(&s, &p, 8, NULL, 0), -EINVAL);
    }
    smp_params_default(&p);
    p.top_p = 0.0f;
    ck_assert_int_eq(smp_init(&s, &p, 8, NULL, 0), -EINVAL);
    p.top_p = 1.5f;
    ck_assert_int_eq(smp_init(&s, &p, 8, NULL, 0), -EINVAL);
    smp_params_default(&p);
    p.n_logprobs = SMP_MAX_LOGPROBS + 1;
    ck_assert_int_eq(smp_init(&s, &p, 8, NULL, 0), -EINVAL);
    smp_params_default(&p);
    p.bias = &b;
    p.n_bias = 1;
    ck_assert_int_eq(smp_init(&s, &p, 8, NULL, 0), -EINVAL); /* token 10 >= 8 */
    p.repetition_penalty = 0.0f;
    ck_assert_int_eq(smp_init(&s, &p, 16, NULL, 0), -EINVAL);
}
END_TEST

Suite *sampler_suite(void)
{
    Suite *s = suite_create("sampler");
    TCase *tc = tcase_create("sampler");
    tcase_add_test(tc, greedy_is_argmax);
    tcase_add_test(tc, seed_makes_draws_repeatable);
    tcase_add_test(tc, frequencies_follow_the_distribution);
    tcase_add_test(tc, top_p_and_min_p_cut_the_tail);
    tcase_add_test(tc, bias_and_penalties_move_the_choice);
    tcase_add_test(tc, logprobs_are_the_raw_distribution);
    tcase_add_test(tc, an_allow_mask_limits_every_choice);
    tcase_add_test(tc, bad_parameters_are_refused);
    suite_add_tcase(s, tc);
    return s;
}

/*
 * engine/sampler.h - logits -> next token, per request.
 *
 * Greedy at temperature 0; otherwise logit bias, repetition / frequency /
 * presence penalties, temperature, top-k, top-p and min-p, then a draw from
 * the request's own RNG (the same seed gives the same tokens).  Log-
 * probabilities are taken from the model's raw distribution, before any of
 * that, as vLLM reports them.  A struct smp belongs to one request and is
 * not shared between threads.
 */
#ifndef CINFER_ENGINE_SAMPLER_H
#define CINFER_ENGINE_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

struct smp_bias {
    int32_t token;
    float bias;
};

struct smp_params {
    float temperature;        /* 0: greedy */
    int top_k;                /* <= 0: off */
    float top_p;              /* 1: off */
    float min_p;              /* 0: off */
    float presence_penalty;   /* OpenAI: -2..2, on generated tokens */
    float frequency_penalty;  /* OpenAI: -2..2, on generated tokens */
    float repetition_penalty; /* HF/vLLM: 1 = off, on prompt and generated tokens */
    uint64_t seed;
    const struct smp_bias *bias; /* copied by smp_init */
    int n_bias;
    int n_logprobs; /* alternatives to report, 0..SMP_MAX_LOGPROBS */
    int logprobs;   /* 0: skip the log-sum-exp over the vocabulary; logprob then 0 */
};

#define SMP_MAX_LOGPROBS 20

struct smp_result {
    int32_t token;
    float logprob; /* of token, under the raw distribution (with logprobs or n_logprobs) */
    int n_top;
    struct {
        int32_t token;
        float logprob;
    } top[SMP_MAX_LOGPROBS];
};

struct smp {
    struct smp_params p;
    int n_vocab;
    uint64_t rng[4];
    struct smp_bias *bias;
    uint32_t *count;    /* per token: times generated */
    uint8_t *in_prompt; /* per token: seen in the prompt */
    float *work;        /* n_vocab */
    int32_t *idx;       /* n_vocab */
    /*
     * Set by the caller before smp_sample, or NULL: the tokens that may be
     * drawn (bit i of allow[i / 32]), e.g. a grammar's mask.  Applied after
     * bias and penalties, before top-k, top-p, min-p and temperature;
     * log-probabilities stay those of the raw distribution.  At least one
     * token must be allowed.
     */
    const uint32_t *allow;
};

/* Fills defaults: greedy off (temperature 1), no filters, no penalties, logprobs on. */
void smp_params_default(struct smp_params *p);

/* 0 when p is in range for a vocabulary of n_vocab (bias tokens valid ids), else -EINVAL. */
int smp_params_check(const struct smp_params *p, int n_vocab);
/*
 * Prepares a sampler for one request.  Returns 0, -EINVAL for a parameter
 * out of range (with n_vocab: bias tokens must be valid ids), or -ENOMEM.
 */
int smp_init(struct smp *s, const struct smp_params *p, int n_vocab, const int32_t *prompt,
             int n_prompt);
void smp_free(struct smp *s);

/* Picks the next token from logits (n_vocab, not modified). */
int smp_sample(struct smp *s, const float *logits, struct smp_result *out);

/* log(sum(exp(x))) of n values, summed in double after the max is taken out. */
float smp_log_sum_exp(const float *x, int n);

/* The n largest of x (indexes, best first, ties to the lower index); 1 <= n <= SMP_MAX_LOGPROBS. */
int smp_top_n(const float *x, int len, int n, int32_t *out);

/* Records a generated token (for the penalties). */
void smp_accept(struct smp *s, int32_t token);

#endif

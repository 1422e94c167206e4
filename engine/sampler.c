/*
 * engine/sampler.c - see sampler.h.  The order of the steps follows vLLM:
 * raw log-probabilities first, then logit bias and penalties, temperature,
 * and the top-k / top-p / min-p filters on the tempered distribution.
 */
#include "engine/sampler.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void smp_params_default(struct smp_params *p)
{
    memset(p, 0, sizeof(*p));
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
    p->logprobs = 1;
}

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoshiro256** */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* uniform in [0, 1) */
static double rng_uniform(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

int smp_params_check(const struct smp_params *p, int n_vocab)
{
    if (n_vocab <= 0 || !(p->temperature >= 0.0f) || !isfinite(p->temperature) ||
        !(p->top_p > 0.0f && p->top_p <= 1.0f) || !(p->min_p >= 0.0f && p->min_p <= 1.0f) ||
        !(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty) ||
        !isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty) || p->n_bias < 0 ||
        p->n_logprobs < 0 || p->n_logprobs > SMP_MAX_LOGPROBS)
        return -EINVAL;
    for (int i = 0; i < p->n_bias; i++)
        if (p->bias[i].token < 0 || p->bias[i].token >= n_vocab || !isfinite(p->bias[i].bias))
            return -EINVAL;
    return 0;
}

int smp_init(struct smp *s, const struct smp_params *p, int n_vocab, const int32_t *prompt,
             int n_prompt)
{
    memset(s, 0, sizeof(*s));
    if (smp_params_check(p, n_vocab))
        return -EINVAL;
    s->p = *p;
    s->n_vocab = n_vocab;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix(&x);
    s->count = calloc((size_t)n_vocab, sizeof(*s->count));
    s->in_prompt = calloc((size_t)n_vocab, 1);
    s->work = malloc((size_t)n_vocab * sizeof(*s->work));
    s->idx = malloc((size_t)n_vocab * sizeof(*s->idx));
    s->bias = malloc(((size_t)p->n_bias + 1) * sizeof(*s->bias));
    if (!s->count || !s->in_prompt || !s->work || !s->idx || !s->bias) {
        smp_free(s);
        return -ENOMEM;
    }
    if (p->n_bias)
        memcpy(s->bias, p->bias, (size_t)p->n_bias * sizeof(*s->bias));
    s->p.bias = s->bias;
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] >= 0 && prompt[i] < n_vocab)
            s->in_prompt[prompt[i]] = 1;
    return 0;
}

void smp_free(struct smp *s)
{
    free(s->count);
    free(s->in_prompt);
    free(s->work);
    free(s->idx);
    free(s->bias);
    memset(s, 0, sizeof(*s));
}

void smp_accept(struct smp *s, int32_t token)
{
    if (token >= 0 && token < s->n_vocab && s->count[token] < UINT32_MAX)
        s->count[token]++;
}

int smp_top_n(const float *x, int len, int n, int32_t *out)
{
    int k = 0;
    for (int i = 0; i < len; i++) {
        if (k < n || x[i] > x[out[k - 1]]) {
            int j = k < n ? k++ : k - 1;
            while (j > 0 && x[out[j - 1]] < x[i]) {
                out[j] = out[j - 1];
                j--;
            }
            out[j] = i;
        }
    }
    return k;
}

static int by_value_desc_cb(const void *a, const void *b, void *vals)
{
    const float *v = vals;
    float x = v[*(const int32_t *)a], y = v[*(const int32_t *)b];
    if (x != y)
        return x > y ? -1 : 1;
    return *(const int32_t *)a < *(const int32_t *)b ? -1 : 1;
}

/* Moves the k largest of idx[0..n) (by v) to the front, in any order. */
static void select_top(int32_t *idx, int n, int k, const float *v)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = v[idx[(lo + hi) / 2]];
        int i = lo, j = hi;
        while (i <= j) {
            while (v[idx[i]] > pivot)
                i++;
            while (v[idx[j]] < pivot)
                j--;
            if (i <= j) {
                int32_t t = idx[i];
                idx[i++] = idx[j];
                idx[j--] = t;
            }
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            break;
    }
}

/* The drawn token with its log-probability and the alternatives, all from the raw logits. */
static int finish_result(const struct smp *s, const float *logits, float lse, int want_lp,
                         int32_t tok, struct smp_result *out)
{
    out->token = tok;
    out->logprob = want_lp ? logits[tok] - lse : 0.0f;
    if (s->p.n_logprobs > 0) {
        int32_t best[SMP_MAX_LOGPROBS];
        out->n_top = smp_top_n(logits, s->n_vocab, s->p.n_logprobs, best);
        for (int i = 0; i < out->n_top; i++) {
            out->top[i].token = best[i];
            out->top[i].logprob = logits[best[i]] - lse;
        }
    }
    return 0;
}

float smp_log_sum_exp(const float *x, int n)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += exp((double)x[i] - mx);
    return mx + (float)log(sum);
}

int smp_sample(struct smp *s, const float *logits, struct smp_result *out)
{
    const struct smp_params *p = &s->p;
    int V = s->n_vocab;
    memset(out, 0, sizeof(*out));

    /* raw log-probabilities: the model's own distribution (0.2-0.5 ms a token
     * on this vocabulary, so only when asked for) */
    float lse = 0.0f;
    int want_lp = p->logprobs || p->n_logprobs > 0;
    if (want_lp) {
        lse = smp_log_sum_exp(logits, V);
    }

    /* bias and penalties, on a copy (greedy without them reads the logits as they are) */
    int penalties = p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f ||
                    p->frequency_penalty != 0.0f;
    float *w = s->work;
    const float *adj = logits;
    const uint32_t *allow = s->allow;
    if (p->n_bias || penalties || p->temperature != 0.0f) {
        memcpy(w, logits, (size_t)V * sizeof(*w));
        for (int i = 0; i < p->n_bias; i++)
            w[p->bias[i].token] += p->bias[i].bias;
        for (int i = 0; penalties && i < V; i++) {
            if (p->repetition_penalty != 1.0f && (s->in_prompt[i] || s->count[i]))
                w[i] = w[i] > 0 ? w[i] / p->repetition_penalty : w[i] * p->repetition_penalty;
            if (s->count[i])
                w[i] -= p->frequency_penalty * (float)s->count[i] + p->presence_penalty;
        }
        adj = w;
    }

    int32_t tok = 0;
    if (p->temperature == 0.0f) {
        tok = -1;
        if (!allow) {
            tok = 0;
            for (int i = 1; i < V; i++)
                if (adj[i] > adj[tok])
                    tok = i;
        } else { /* the allowed tokens only, word by word (structure allows few) */
            for (int wd = 0; wd < (V + 31) / 32; wd++)
                for (uint32_t bits = allow[wd]; bits; bits &= bits - 1) {
                    int i = wd * 32 + __builtin_ctz(bits);
                    if (i < V && (tok < 0 || adj[i] > adj[tok]))
                        tok = i;
                }
        }
        if (tok < 0)
            return -EINVAL;
    } else {
        /* candidates: all tokens (those allowed), or the top k of them */
        int n = 0;
        if (!allow)
            for (int i = 0; i < V; i++)
                s->idx[n++] = i;
        else
            for (int wd = 0; wd < (V + 31) / 32; wd++)
                for (uint32_t bits = allow[wd]; bits; bits &= bits - 1) {
                    int i = wd * 32 + __builtin_ctz(bits);
                    if (i < V)
                        s->idx[n++] = i;
                }
        if (!n)
            return -EINVAL;
        if (p->top_k > 0 && p->top_k < n) {
            select_top(s->idx, n, p->top_k, w);
            n = p->top_k;
        }
        int need_sorted = p->top_p < 1.0f || p->min_p > 0.0f;
        if (need_sorted)
            qsort_r(s->idx, (size_t)n, sizeof(*s->idx), by_value_desc_cb, w);
        /* tempered probabilities of the candidates (in work, by index) */
        float cmax = -INFINITY;
        for (int i = 0; i < n; i++)
            cmax = w[s->idx[i]] > cmax ? w[s->idx[i]] : cmax;
        double total = 0.0;
        for (int i = 0; i < n; i++) {
            float e = expf((w[s->idx[i]] - cmax) / p->temperature);
            w[s->idx[i]] = e;
            total += e;
        }
        if (need_sorted) {
            /* min-p: drop tokens below min_p times the best; top-p: the smallest head
             * whose mass reaches top_p (the sort is descending) */
            double floor_p = p->min_p * (w[s->idx[0]] / total), acc = 0.0;
            int keep = 0;
            for (; keep < n; keep++) {
                double pr = w[s->idx[keep]] / total;
                if (keep > 0 && (pr < floor_p || acc >= p->top_p))
                    break;
                acc += pr;
            }
            n = keep;
            total = 0.0;
            for (int i = 0; i < n; i++)
                total += w[s->idx[i]];
        }
        double r = rng_uniform(s->rng) * total, c = 0.0;
        tok = s->idx[n - 1];
        for (int i = 0; i < n; i++) {
            c += w[s->idx[i]];
            if (r < c) {
                tok = s->idx[i];
                break;
            }
        }
    }
    return finish_result(s, logits, lse, want_lp, tok, out);
}

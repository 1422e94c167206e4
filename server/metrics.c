/*
 * server/metrics.c - counters and histograms for GET /metrics, in the
 * Prometheus text format (0.0.4).  The series are vLLM's (its V1 engine):
 * the same names after the cinfer: prefix, with vLLM's types, bucket
 * boundaries and meaning, each labelled model_name="<served name>".  With
 * --metrics-compat vllm every one is printed a second time under vLLM's own
 * name (vllm:..., with vLLM's engine="0" label too), so that vLLM's
 * dashboards, autoscalers and the Gateway API Inference Extension read
 * cinfer as they read vLLM; that copy adds the names older vLLM versions
 * used (gpu_cache_usage_perc, time_per_output_token_seconds) and
 * lora_requests_info, which says that no LoRA adapter is loaded.
 *
 * One mutex guards the counters: updates are a few per token, far from
 * contended.  Gauges and the engine's own counters (preemptions, prefix
 * cache, tokens per step) are read from the engine when rendered.  Not
 * here: vLLM's series of features cinfer lacks (speculative decoding, KV
 * transfer, multi-modal caches), nor its request_params_* histograms.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/srv.h"

/* vLLM's buckets: time to first token, inter-token latency, and a request's phases. */
static const double k_ttft_le[] = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                   0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                   20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
static const double k_itl_le[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                  0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
static const double k_req_le[] = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                  5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                  60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
/* vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50, ... up to the context length */
static const double k_125_le[] = {1,   2,   5,   1e1, 2e1, 5e1, 1e2, 2e2, 5e2, 1e3,
                                  2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6,
                                  5e6, 1e7, 2e7, 5e7, 1e8, 2e8, 5e8, 1e9};
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_LE N_OF(k_125_le)

struct hist_def {
    const char *name;  /* after the prefix */
    const char *alias; /* the name older vLLM versions used (vllm: only), or NULL */
    const char *help;
    const double *le;
    size_t n_le;
    int to_ctx; /* only the bounds up to the context length are printed */
};

static const struct hist_def k_hist[SRV_H_N] = {
    [SRV_H_TTFT] = {"time_to_first_token_seconds", NULL,
                    "Time from arrival to the first generated token.", k_ttft_le, N_OF(k_ttft_le),
                    0},
    [SRV_H_ITL] = {"inter_token_latency_seconds", "time_per_output_token_seconds",
                   "Time between two generated tokens of a request.", k_itl_le, N_OF(k_itl_le), 0},
    [SRV_H_E2E] = {"e2e_request_latency_seconds", NULL, "Time from arrival to the last token.",
                   k_req_le, N_OF(k_req_le), 0},
    [SRV_H_QUEUE] = {"request_queue_time_seconds", NULL,
                     "Time a request waited before it was scheduled (WAITING).", k_req_le,
                     N_OF(k_req_le), 0},
    [SRV_H_PREFILL] = {"request_prefill_time_seconds", NULL,
                       "Time from scheduled to the first token (PREFILL).", k_req_le,
                       N_OF(k_req_le), 0},
    [SRV_H_DECODE] = {"request_decode_time_seconds", NULL,
                      "Time from the first token to the last (DECODE).", k_req_le, N_OF(k_req_le),
                      0},
    [SRV_H_INFERENCE] = {"request_inference_time_seconds", NULL,
                         "Time from scheduled to the last token (RUNNING: prefill and decode).",
                         k_req_le, N_OF(k_req_le), 0},
    [SRV_H_PROMPT_TOKENS] = {"request_prompt_tokens", NULL, "Prompt tokens of a request.", k_125_le,
                             N_OF(k_125_le), 1},
    [SRV_H_GENERATION_TOKENS] = {"request_generation_tokens", NULL,
                                 "Tokens generated for a request.", k_125_le, N_OF(k_125_le), 1},
    [SRV_H_MAX_GENERATION] = {"request_max_num_generation_tokens", NULL,
                              "The most tokens any of a prompt's n choices generated.", k_125_le,
                              N_OF(k_125_le), 1},
};

struct hist {
    uint64_t counts[MAX_LE + 1]; /* per bound (not cumulative); counts[n_le]: past the last */
    double sum;
    uint64_t n;
};

struct labelled {
    char route[48];
    unsigned status;
    uint64_t n;
};

/* The registry's own numbers. */
struct snap {
    struct hist h[SRV_H_N];
    uint64_t prompt_tokens, generation_tokens;
    uint64_t finished_stop, finished_length, finished_other;
};

static struct {
    pthread_mutex_t mu;
    struct snap s;
    struct labelled *http;
    size_t n_http, cap_http;
    /* srv_metrics_configure */
    char *labels; /* model_name="...", escaped */
    char kv_type[16];
    int prefix_cache;
    int vllm;
} M = {.mu = PTHREAD_MUTEX_INITIALIZER, .prefix_cache = 1};

void srv_metrics_init(void)
{
    pthread_mutex_lock(&M.mu);
    memset(&M.s, 0, sizeof(M.s));
    M.n_http = 0;
    pthread_mutex_unlock(&M.mu);
}

/* s as a Prometheus label value: \, " and newline escaped (malloc'd; NULL on no memory). */
static char *label_escape(const char *s)
{
    struct buf b = {0};
    int rc = buf_append(&b, "", 0);
    for (; *s && !rc; s++)
        rc = *s == '\\'   ? buf_append(&b, "\\\\", 2)
             : *s == '"'  ? buf_append(&b, "\\\"", 2)
             : *s == '\n' ? buf_append(&b, "\\n", 2)
                          : buf_append(&b, s, 1);
    if (rc) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

void srv_metrics_configure(const struct srv_config *cfg, const struct srv_model *model)
{
    const char *name = model->alias && *model->alias ? model->alias : model->id;
    char *v = label_escape(name ? name : "");
    struct buf b = {0};
    if (v && buf_printf(&b, "model_name=\"%s\"", v)) {
        free(b.p);
        b.p = NULL;
    }
    free(v);
    pthread_mutex_lock(&M.mu);
    free(M.labels);
    M.labels = b.p; /* NULL (no memory): the series go without the label */
    snprintf(M.kv_type, sizeof(M.kv_type), "%s", cfg->kv_type ? cfg->kv_type : "");
    M.prefix_cache = cfg->prefix_cache != 0;
    M.vllm = cfg->metrics_compat && !strcmp(cfg->metrics_compat, "vllm");
    pthread_mutex_unlock(&M.mu);
}

void srv_metrics_observe(enum srv_hist which, double v)
{
    if (!(v >= 0) || which >= SRV_H_N)
        return;
    const struct hist_def *d = &k_hist[which];
    size_t i = 0;
    while (i < d->n_le && v > d->le[i])
        i++;
    pthread_mutex_lock(&M.mu);
    struct hist *h = &M.s.h[which];
    h->counts[i]++;
    h->sum += v;
    h->n++;
    pthread_mutex_unlock(&M.mu);
}

void srv_metrics_tokens(int prompt, int generated)
{
    pthread_mutex_lock(&M.mu);
    M.s.prompt_tokens += prompt > 0 ? (uint64_t)prompt : 0;
    M.s.generation_tokens += generated > 0 ? (uint64_t)generated : 0;
    pthread_mutex_unlock(&M.mu);
}

void srv_metrics_finished(const char *reason)
{
    pthread_mutex_lock(&M.mu);
    if (!strcmp(reason, "stop"))
        M.s.finished_stop++;
    else if (!strcmp(reason, "length"))
        M.s.finished_length++;
    else
        M.s.finished_other++;
    pthread_mutex_unlock(&M.mu);
}

void srv_metrics_http(const char *route, unsigned status)
{
    pthread_mutex_lock(&M.mu);
    size_t i = 0;
    while (i < M.n_http && (M.http[i].status != status || strcmp(M.http[i].route, route)))
        i++;
    if (i == M.n_http) {
        if (M.n_http == M.cap_http) {
            size_t cap = M.cap_http ? M.cap_http * 2 : 16;
            struct labelled *p = realloc(M.http, cap * sizeof(*p));
            if (!p) {
                pthread_mutex_unlock(&M.mu);
                return;
            }
            M.http = p;
            M.cap_http = cap;
        }
        memset(&M.http[i], 0, sizeof(M.http[i]));
        snprintf(M.http[i].route, sizeof(M.http[i].route), "%s", route);
        M.http[i].status = status;
        M.n_http++;
    }
    M.http[i].n++;
    pthread_mutex_unlock(&M.mu);
}

/* ---- rendering --------------------------------------------------------------- */

/* One pass over the series under one prefix. */
struct out {
    struct buf *b;
    int rc;
    const char *prefix; /* "cinfer:" or "vllm:" */
    const char *labels; /* model_name="..." (and engine="0" for vllm:) */
};

static void family(struct out *o, const char *name, const char *type, const char *help)
{
    o->rc |= buf_printf(o->b, "# HELP %s%s %s\n# TYPE %s%s %s\n", o->prefix, name, help, o->prefix,
                        name, type);
}

/* One sample: NAME[SUFFIX]{labels[,EXTRA]} VALUE. */
static void sample(struct out *o, const char *name, const char *suffix, const char *extra,
                   const char *value)
{
    o->rc |= buf_printf(o->b, "%s%s%s{%s%s%s} %s\n", o->prefix, name, suffix, o->labels,
                        extra && *o->labels ? "," : "", extra ? extra : "", value);
}

static void sample_u(struct out *o, const char *name, const char *suffix, const char *extra,
                     uint64_t v)
{
    char t[32];
    snprintf(t, sizeof(t), "%llu", (unsigned long long)v);
    sample(o, name, suffix, extra, t);
}

static void sample_d(struct out *o, const char *name, const char *extra, double v)
{
    char t[40];
    snprintf(t, sizeof(t), "%.12g", v);
    sample(o, name, "", extra, t);
}

static void gauge(struct out *o, const char *name, const char *help, double v)
{
    family(o, name, "gauge", help);
    sample_d(o, name, NULL, v);
}

static void counter(struct out *o, const char *name, const char *help, uint64_t v)
{
    family(o, name, "counter", help);
    sample_u(o, name, "", NULL, v);
}

/* A bucket bound as vLLM's Python client prints it: 1.0, 0.25, 2560.0. */
static void le_text(double v, char *out, size_t cap)
{
    if (v == floor(v) && fabs(v) < 1e15)
        snprintf(out, cap, "le=\"%.1f\"", v);
    else
        snprintf(out, cap, "le=\"%g\"", v);
}

/* A histogram from per-bound counts: bounds past cap are left out (their counts go to +Inf). */
static void histogram(struct out *o, const char *name, const char *help, const double *le,
                      size_t n_le, const uint64_t *counts, double sum, uint64_t n, double cap)
{
    family(o, name, "histogram", help);
    uint64_t cum = 0;
    char l[48];
    for (size_t k = 0; k < n_le && le[k] <= cap; k++) {
        cum += counts[k];
        le_text(le[k], l, sizeof(l));
        sample_u(o, name, "_bucket", l, cum);
    }
    sample_u(o, name, "_bucket", "le=\"+Inf\"", n);
    char t[40];
    snprintf(t, sizeof(t), "%.17g", sum);
    sample(o, name, "_sum", NULL, t);
    sample_u(o, name, "_count", NULL, n);
}

static void render(struct out *o, const struct snap *s, const struct eng_stats *st,
                   const struct eng_info *info, int vllm)
{
    double kv = st->kv_total > 0 ? (double)st->kv_used / st->kv_total : 0.0;
    gauge(o, "num_requests_running", "Requests in the running batch.", st->running);
    gauge(o, "num_requests_waiting", "Requests waiting to be scheduled.", st->waiting);
    gauge(o, "kv_cache_usage_perc", "Fraction of KV cache blocks in use (0 to 1).", kv);
    if (vllm) /* the name vLLM used before 0.9 (and the Inference Extension's default) */
        gauge(o, "gpu_cache_usage_perc", "Fraction of KV cache blocks in use (0 to 1).", kv);
    counter(o, "prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.",
            st->prefix_queries);
    counter(o, "prefix_cache_hits_total", "Prompt tokens found in the prefix cache.",
            st->prefix_hits);
    counter(o, "num_preemptions_total",
            "Sequences preempted (recomputed later) because the KV cache was full.",
            st->preemptions);
    counter(o, "prompt_tokens_total", "Prompt tokens processed.", s->prompt_tokens);
    counter(o, "generation_tokens_total", "Tokens generated.", s->generation_tokens);
    family(o, "request_success_total", "counter", "Requests finished, by reason.");
    sample_u(o, "request_success_total", "", "finished_reason=\"stop\"", s->finished_stop);
    sample_u(o, "request_success_total", "", "finished_reason=\"length\"", s->finished_length);
    sample_u(o, "request_success_total", "", "finished_reason=\"abort\"", s->finished_other);
    for (int i = 0; i < SRV_H_N; i++) {
        const struct hist_def *d = &k_hist[i];
        const struct hist *h = &s->h[i];
        double cap = d->to_ctx ? info->n_ctx : INFINITY;
        histogram(o, d->name, d->help, d->le, d->n_le, h->counts, h->sum, h->n, cap);
        if (vllm && d->alias)
            histogram(o, d->alias, d->help, d->le, d->n_le, h->counts, h->sum, h->n, cap);
    }
    double le[ENG_STEP_BUCKETS];
    for (int i = 0; i < ENG_STEP_BUCKETS; i++)
        le[i] = st->step_le[i];
    uint64_t steps = 0;
    for (int i = 0; i <= ENG_STEP_BUCKETS; i++)
        steps += st->step_n[i];
    histogram(o, "iteration_tokens_total",
              "Tokens per engine step: each token sampled, and a prompt in the step of its "
              "first token.",
              le, ENG_STEP_BUCKETS, st->step_n, (double)st->step_tokens, steps, INFINITY);
    if (info->kv_block > 0) { /* the engine is loaded */
        char extra[256];
        snprintf(extra, sizeof(extra),
                 "block_size=\"%d\",cache_dtype=\"%s\",enable_prefix_caching=\"%s\","
                 "num_gpu_blocks=\"%ld\"",
                 info->kv_block, M.kv_type, M.prefix_cache ? "True" : "False",
                 (long)info->kv_blocks);
        family(o, "cache_config_info", "gauge", "The KV cache's settings (value 1).");
        sample(o, "cache_config_info", "", extra, "1");
    }
    if (vllm) { /* no LoRA: vLLM's labels, empty; the value is when it was updated */
        family(o, "lora_requests_info", "gauge", "LoRA adapters running and waiting (none).");
        sample_d(o, "lora_requests_info",
                 "max_lora=\"0\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"",
                 (double)time(NULL));
    }
}

char *srv_metrics_render(struct engine *e, size_t *len)
{
    struct eng_stats st = {0};
    struct eng_info info = {0};
    if (e) {
        eng_get_stats(e, &st);
        eng_get_info(e, &info);
    } else {
        for (int i = 0; i < ENG_STEP_BUCKETS; i++)
            st.step_le[i] = ENG_STEP_LE(i);
    }
    struct buf b = {0};
    pthread_mutex_lock(&M.mu);
    const struct snap *s = &M.s;
    const char *labels = M.labels ? M.labels : "";
    struct out o = {.b = &b, .prefix = "cinfer:", .labels = labels};
    render(&o, s, &st, &info, 0);
    family(&o, "http_requests_total", "counter", "HTTP requests by route and status.");
    for (size_t i = 0; i < M.n_http; i++) {
        char extra[96];
        snprintf(extra, sizeof(extra), "route=\"%s\",status=\"%u\"", M.http[i].route,
                 M.http[i].status);
        sample_u(&o, "http_requests_total", "", extra, M.http[i].n);
    }
    if (M.vllm) {
        struct buf l = {0};
        o.rc |= buf_printf(&l, "engine=\"0\"%s%s", *labels ? "," : "", labels);
        struct out v = {.b = &b, .prefix = "vllm:", .labels = l.p ? l.p : ""};
        render(&v, s, &st, &info, 1);
        o.rc |= v.rc;
        free(l.p);
    }
    pthread_mutex_unlock(&M.mu);
    if (o.rc) {
        free(b.p);
        return NULL;
    }
    *len = b.n;
    return b.p;
}

/*
 * server/metrics.c - counters and histograms for GET /metrics, in the
 * Prometheus text format, named after vLLM's with the cinfer: prefix.  One
 * mutex guards them all: updates are a few per token, far from contended.
 * Gauges (running, waiting, KV usage) are read from the engine when rendered.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/srv.h"

static const double k_lat_buckets[] = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                       0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                       20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
#define N_BUCKETS (sizeof(k_lat_buckets) / sizeof(k_lat_buckets[0]))

struct hist {
    const char *name, *help;
    uint64_t counts[N_BUCKETS + 1]; /* the last: +Inf */
    double sum;
    uint64_t n;
};

struct labelled {
    char route[48];
    unsigned status;
    uint64_t n;
};

static struct {
    pthread_mutex_t mu;
    struct hist h[SRV_H_N];
    uint64_t prompt_tokens, generation_tokens;
    uint64_t finished_stop, finished_length, finished_other;
    struct labelled *http;
    size_t n_http, cap_http;
} M = {.mu = PTHREAD_MUTEX_INITIALIZER};

void srv_metrics_init(void)
{
    pthread_mutex_lock(&M.mu);
    M.h[SRV_H_TTFT] = (struct hist){.name = "cinfer:time_to_first_token_seconds",
                                    .help = "Time from arrival to the first generated token."};
    M.h[SRV_H_ITL] = (struct hist){.name = "cinfer:inter_token_latency_seconds",
                                   .help = "Time between two generated tokens of a request."};
    M.h[SRV_H_E2E] = (struct hist){.name = "cinfer:e2e_request_latency_seconds",
                                   .help = "Time from arrival to the last token."};
    M.h[SRV_H_QUEUE] = (struct hist){.name = "cinfer:request_queue_time_seconds",
                                     .help = "Time a request waited before it was scheduled."};
    pthread_mutex_unlock(&M.mu);
}

void srv_metrics_observe(enum srv_hist which, double s)
{
    if (!(s >= 0) || which >= SRV_H_N)
        return;
    pthread_mutex_lock(&M.mu);
    struct hist *h = &M.h[which];
    size_t i = 0;
    while (i < N_BUCKETS && s > k_lat_buckets[i])
        i++;
    h->counts[i]++;
    h->sum += s;
    h->n++;
    pthread_mutex_unlock(&M.mu);
}

void srv_metrics_tokens(int prompt, int generated)
{
    pthread_mutex_lock(&M.mu);
    M.prompt_tokens += prompt > 0 ? (uint64_t)prompt : 0;
    M.generation_tokens += generated > 0 ? (uint64_t)generated : 0;
    pthread_mutex_unlock(&M.mu);
}

void srv_metrics_finished(const char *reason)
{
    pthread_mutex_lock(&M.mu);
    if (!strcmp(reason, "stop"))
        M.finished_stop++;
    else if (!strcmp(reason, "length"))
        M.finished_length++;
    else
        M.finished_other++;
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

char *srv_metrics_render(struct engine *e, size_t *len)
{
    struct eng_stats st = {0};
    if (e)
        eng_get_stats(e, &st);
    struct buf b = {0};
    int rc = 0;
    rc |= buf_printf(&b,
                     "# HELP cinfer:num_requests_running Requests in the running batch.\n"
                     "# TYPE cinfer:num_requests_running gauge\n"
                     "cinfer:num_requests_running %d\n"
                     "# HELP cinfer:num_requests_waiting Requests waiting to be scheduled.\n"
                     "# TYPE cinfer:num_requests_waiting gauge\n"
                     "cinfer:num_requests_waiting %d\n"
                     "# HELP cinfer:kv_cache_usage_perc Fraction of KV cache blocks in use "
                     "(0 to 1).\n"
                     "# TYPE cinfer:kv_cache_usage_perc gauge\n"
                     "cinfer:kv_cache_usage_perc %.6f\n",
                     st.running, st.waiting,
                     st.kv_total > 0 ? (double)st.kv_used / st.kv_total : 0.0);
    rc |= buf_printf(&b,
                     "# HELP cinfer:prefix_cache_queries_total Prompt tokens looked up in the "
                     "prefix cache.\n"
                     "# TYPE cinfer:prefix_cache_queries_total counter\n"
                     "cinfer:prefix_cache_queries_total %llu\n"
                     "# HELP cinfer:prefix_cache_hits_total Prompt tokens found in the prefix "
                     "cache.\n"
                     "# TYPE cinfer:prefix_cache_hits_total counter\n"
                     "cinfer:prefix_cache_hits_total %llu\n"
                     "# HELP cinfer:num_preemptions_total Sequences preempted (recomputed "
                     "later) because the KV cache was full.\n"
                     "# TYPE cinfer:num_preemptions_total counter\n"
                     "cinfer:num_preemptions_total %llu\n",
                     (unsigned long long)st.prefix_queries, (unsigned long long)st.prefix_hits,
                     (unsigned long long)st.preemptions);
    pthread_mutex_lock(&M.mu);
    rc |= buf_printf(&b,
                     "# HELP cinfer:prompt_tokens_total Prompt tokens processed.\n"
                     "# TYPE cinfer:prompt_tokens_total counter\n"
                     "cinfer:prompt_tokens_total %llu\n"
                     "# HELP cinfer:generation_tokens_total Tokens generated.\n"
                     "# TYPE cinfer:generation_tokens_total counter\n"
                     "cinfer:generation_tokens_total %llu\n"
                     "# HELP cinfer:request_success_total Requests finished, by reason.\n"
                     "# TYPE cinfer:request_success_total counter\n"
                     "cinfer:request_success_total{finished_reason=\"stop\"} %llu\n"
                     "cinfer:request_success_total{finished_reason=\"length\"} %llu\n"
                     "cinfer:request_success_total{finished_reason=\"abort\"} %llu\n",
                     (unsigned long long)M.prompt_tokens, (unsigned long long)M.generation_tokens,
                     (unsigned long long)M.finished_stop, (unsigned long long)M.finished_length,
                     (unsigned long long)M.finished_other);
    for (int i = 0; i < SRV_H_N; i++) {
        const struct hist *h = &M.h[i];
        rc |= buf_printf(&b, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
        uint64_t cum = 0;
        for (size_t k = 0; k <= N_BUCKETS; k++) {
            cum += h->counts[k];
            if (k < N_BUCKETS)
                rc |= buf_printf(&b, "%s_bucket{le=\"%g\"} %llu\n", h->name, k_lat_buckets[k],
                                 (unsigned long long)cum);
            else
                rc |= buf_printf(&b, "%s_bucket{le=\"+Inf\"} %llu\n", h->name,
                                 (unsigned long long)cum);
        }
        rc |= buf_printf(&b, "%s_sum %.6f\n%s_count %llu\n", h->name, h->sum, h->name,
                         (unsigned long long)h->n);
    }
    rc |= buf_printf(&b, "# HELP cinfer:http_requests_total HTTP requests by route and "
                         "status.\n# TYPE cinfer:http_requests_total counter\n");
    for (size_t i = 0; i < M.n_http; i++)
        rc |= buf_printf(&b, "cinfer:http_requests_total{route=\"%s\",status=\"%u\"} %llu\n",
                         M.http[i].route, M.http[i].status, (unsigned long long)M.http[i].n);
    pthread_mutex_unlock(&M.mu);
    if (rc) {
        free(b.p);
        return NULL;
    }
    *len = b.n;
    return b.p;
}

/*
 * server/http.c - the HTTP front end on libmicrohttpd: routes, the API key,
 * the body limit, the access log, and the content-reader callback that
 * feeds every completion response (streamed or not) from its job.
 *
 * Threads: one per connection (MHD_USE_THREAD_PER_CONNECTION).  A
 * completion's reader callback waits on the job's channel in slices of
 * 100 ms; between slices it looks at the socket, and a client that has gone
 * has its request cancelled at once, queued or running.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "server/srv.h"
#include "util/clock.h"

#define POLL_SLICE_MS 100
#define DISCARD_MAX (64u << 20) /* bytes of an oversized body read and dropped before answering */

struct srv {
    struct MHD_Daemon *d;
    char *api_key; /* NULL: no key */
    size_t max_body;
    unsigned port;
    atomic_int inflight;
    _Atomic(struct engine *) e;
    struct srv_model model;
};

struct conn {
    struct srv *s;
    double t0;
    char method[12];
    char *path;
    const char *route; /* the metrics label */
    struct tok_buf body;
    size_t discarded;
    int too_big;
    unsigned status;
    struct srv_job *job;
    struct tok_buf out;
    size_t out_pos;
    int finished;
    int retry_after; /* seconds for a Retry-After header, 0: none */
    MHD_socket fd;
};

static int g_log_json;
static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;

void srv_log(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    time_t t = time(NULL);
    struct tm tm;
    char when[32];
    gmtime_r(&t, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    pthread_mutex_lock(&g_log_mu);
    if (g_log_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "time", when);
        char *clean = srv_utf8_dup(msg, strlen(msg));
        cJSON_AddStringToObject(o, "msg", clean ? clean : "");
        free(clean);
        char *s = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (s)
            fprintf(stderr, "%s\n", s);
        free(s);
    } else {
        fprintf(stderr, "%s cinfer: %s\n", when, msg);
    }
    pthread_mutex_unlock(&g_log_mu);
}

static void access_log(const struct conn *c, double dur, int prompt, int completion)
{
    pthread_mutex_lock(&g_log_mu);
    if (g_log_json) {
        cJSON *o = cJSON_CreateObject();
        time_t t = time(NULL);
        struct tm tm;
        char when[32];
        gmtime_r(&t, &tm);
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        cJSON_AddStringToObject(o, "time", when);
        cJSON_AddStringToObject(o, "method", c->method);
        char *path = srv_utf8_dup(c->path ? c->path : "", c->path ? strlen(c->path) : 0);
        cJSON_AddStringToObject(o, "path", path ? path : "");
        free(path);
        cJSON_AddNumberToObject(o, "status", c->status);
        cJSON_AddNumberToObject(o, "prompt_tokens", prompt);
        cJSON_AddNumberToObject(o, "completion_tokens", completion);
        cJSON_AddNumberToObject(o, "duration_ms", (double)(long long)(dur * 1e4) / 10.0);
        char *s = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (s)
            fprintf(stderr, "%s\n", s);
        free(s);
    } else {
        fprintf(stderr, "%s %.200s %u prompt=%d completion=%d %.1fms\n", c->method,
                c->path ? c->path : "", c->status, prompt, completion, dur * 1e3);
    }
    pthread_mutex_unlock(&g_log_mu);
}

/* ---- responses ------------------------------------------------------------- */

static enum MHD_Result reply(struct MHD_Connection *mc, struct conn *c, unsigned status,
                             const char *type, const char *body, size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == 405)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW,
                                !strcmp(c->route, "/v1/models") ||
                                        !strncmp(c->route, "/v1/models/", 11) ||
                                        !strncmp(c->route, "/health", 7) ||
                                        !strcmp(c->route, "/metrics") || !strcmp(c->route, "/version")
                                    ? "GET"
                                    : "POST");
    if (status == 401)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (c->retry_after > 0) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%d", c->retry_after);
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    c->status = status;
    enum MHD_Result ok = MHD_queue_response(mc, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result reply_json(struct MHD_Connection *mc, struct conn *c, unsigned status,
                                  cJSON *o)
{
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s)
        return MHD_NO;
    enum MHD_Result r = reply(mc, c, status, "application/json", s, strlen(s));
    free(s);
    return r;
}

static enum MHD_Result reply_error(struct MHD_Connection *mc, struct conn *c,
                                   const struct srv_error *err)
{
    char *s = srv_error_json(err);
    if (!s)
        return MHD_NO;
    c->retry_after = err->retry_after;
    enum MHD_Result r = reply(mc, c, err->status, "application/json", s, strlen(s));
    free(s);
    return r;
}

static enum MHD_Result fail(struct MHD_Connection *mc, struct conn *c, unsigned status,
                            const char *param, const char *code, const char *msg)
{
    struct srv_error err;
    srv_fail(&err, status, param, code, "%s", msg);
    return reply_error(mc, c, &err);
}

/* ---- completions: a stream's reader callback, or the whole result ---------------- */

/* Whether the client closed its end (EOF or error on the socket). */
static int client_gone(const struct conn *c)
{
    if (c->fd == MHD_INVALID_SOCKET)
        return 0;
    struct pollfd p = {.fd = c->fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0)
        return 0;
    if (p.revents & (POLLERR | POLLHUP | POLLRDHUP | POLLNVAL))
        return 1;
    char b;
    ssize_t k = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* One wait on the job for output into c->out: srv_job_pump's result, or
 * -EPIPE when nothing came and the client has gone (the job is cancelled). */
static int pump(struct conn *c)
{
    int r = srv_job_pump(c->job, &c->out, POLL_SLICE_MS);
    if (r == SRV_JOB_WAIT && client_gone(c)) {
        srv_job_cancel(c->job);
        return -EPIPE;
    }
    return r;
}

static ssize_t job_reader_cb(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct conn *c = cls;
    (void)pos;
    for (;;) {
        if (c->out_pos < c->out.n) {
            size_t n = c->out.n - c->out_pos < max ? c->out.n - c->out_pos : max;
            memcpy(buf, c->out.p + c->out_pos, n);
            c->out_pos += n;
            if (c->out_pos == c->out.n)
                c->out_pos = c->out.n = 0;
            return (ssize_t)n;
        }
        if (c->finished)
            return MHD_CONTENT_READER_END_OF_STREAM;
        int r = pump(c);
        if (r < 0)
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (r == SRV_JOB_DONE)
            c->finished = 1;
    }
}

static enum MHD_Result do_completion(struct MHD_Connection *mc, struct conn *c, struct engine *e,
                                     enum srv_kind kind)
{
    struct srv_request req;
    struct srv_error err;
    if (srv_parse_request(kind, c->body.p ? c->body.p : "", c->body.n, e, &c->s->model, &req,
                          &err)) {
        srv_request_free(&req);
        return reply_error(mc, c, &err);
    }
    if (srv_job_start(e, &c->s->model, &req, &c->job, &err))
        return reply_error(mc, c, &err);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    c->fd = ci ? ci->connect_fd : MHD_INVALID_SOCKET;
    if (!srv_job_stream(c->job)) {
        /*
         * Not streamed: wait here (this connection's own thread) for the whole
         * result, so a failure gets its own status rather than a 200 sent
         * ahead of it; a client that leaves meanwhile cancels the request.
         */
        int rc;
        while ((rc = pump(c)) != SRV_JOB_DONE) {
            if (rc == -EPIPE)
                return MHD_NO;
            if (rc < 0)
                return fail(mc, c, 500, NULL, NULL, "out of memory");
        }
        return reply(mc, c, (unsigned)srv_job_status(c->job), "application/json", c->out.p,
                     c->out.n);
    }
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, job_reader_cb, c, NULL);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    c->status = 200;
    enum MHD_Result ok = MHD_queue_response(mc, 200, r);
    MHD_destroy_response(r);
    return ok;
}

/* ---- the other routes ------------------------------------------------------------ */

static cJSON *model_json(const struct srv *s, const char *id)
{
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)s->model.created);
    cJSON_AddStringToObject(m, "owned_by", "cinfer");
    struct engine *e = atomic_load(&s->e);
    if (e) {
        struct eng_info info;
        eng_get_info(e, &info);
        cJSON_AddNumberToObject(m, "max_model_len", info.n_ctx);
    }
    return m;
}

static enum MHD_Result do_models(struct MHD_Connection *mc, struct conn *c, const char *one)
{
    const struct srv *s = c->s;
    if (one) {
        if (!strcmp(one, s->model.id) || (s->model.alias && !strcmp(one, s->model.alias)))
            return reply_json(mc, c, 200, model_json(s, one));
        return fail(mc, c, 404, "model", "model_not_found", "The model does not exist");
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *d = cJSON_AddArrayToObject(o, "data");
    if (s->model.alias)
        cJSON_AddItemToArray(d, model_json(s, s->model.alias));
    cJSON_AddItemToArray(d, model_json(s, s->model.id));
    return reply_json(mc, c, 200, o);
}

static cJSON *parse_body(struct conn *c, struct srv_error *err)
{
    return srv_parse_json(c->body.p ? c->body.p : "", c->body.n, err);
}

static enum MHD_Result do_tokenize(struct MHD_Connection *mc, struct conn *c, struct engine *e)
{
    struct srv_error err;
    cJSON *o = parse_body(c, &err);
    if (!o)
        return reply_error(mc, c, &err);
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(o, "content");
    if (!text)
        text = cJSON_GetObjectItemCaseSensitive(o, "prompt");
    const cJSON *add = cJSON_GetObjectItemCaseSensitive(o, "add_special");
    if (!cJSON_IsString(text) || (add && !cJSON_IsBool(add) && !cJSON_IsNull(add))) {
        cJSON_Delete(o);
        return fail(mc, c, 400, cJSON_IsString(text) ? "add_special" : "content", NULL,
                    "expected {\"content\": string, \"add_special\": bool}");
    }
    const struct tok *t = eng_tok(e);
    unsigned flags = TOK_PARSE_SPECIAL | (cJSON_IsTrue(add) && tok_add_bos(t) ? TOK_ADD_BOS : 0);
    int32_t *ids;
    int64_t n = tok_encode_alloc(t, text->valuestring, strlen(text->valuestring), flags, &ids);
    cJSON_Delete(o);
    if (n < 0)
        return fail(mc, c, n == -ENOMEM ? 500 : 400, "content", NULL, "cannot tokenize the text");
    cJSON *r = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(r, "tokens");
    for (int64_t i = 0; i < n; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
    cJSON_AddNumberToObject(r, "count", (double)n);
    free(ids);
    return reply_json(mc, c, 200, r);
}

static enum MHD_Result do_detokenize(struct MHD_Connection *mc, struct conn *c, struct engine *e)
{
    struct srv_error err;
    cJSON *o = parse_body(c, &err);
    if (!o)
        return reply_error(mc, c, &err);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "tokens");
    const struct tok *t = eng_tok(e);
    int nv = (int)tok_n_vocab(t), rc = cJSON_IsArray(ids) ? 0 : -EINVAL;
    struct tok_detok d;
    struct tok_buf text = {0};
    tok_detok_init(&d, t, TOK_DETOK_SPECIAL);
    for (const cJSON *v = ids ? ids->child : NULL; !rc && v; v = v->next) {
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble < nv) ||
            v->valuedouble != (double)(int)v->valuedouble)
            rc = -EINVAL;
        else
            rc = tok_detok_feed(&d, (int32_t)v->valuedouble, &text);
    }
    rc = rc ? rc : tok_detok_flush(&d, &text);
    cJSON_Delete(o);
    if (rc) {
        free(text.p);
        char msg[96];
        snprintf(msg, sizeof(msg), "tokens must be an array of token ids from 0 to %d", nv - 1);
        return fail(mc, c, rc == -ENOMEM ? 500 : 400, "tokens", NULL, msg);
    }
    char *clean = srv_utf8_dup(text.p ? text.p : "", text.n);
    free(text.p);
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "content", clean ? clean : "");
    free(clean);
    return reply_json(mc, c, 200, r);
}

/* ---- routing ---------------------------------------------------------------------- */

enum route_id { R_NONE, R_HEALTH, R_READY, R_METRICS, R_VERSION, R_MODELS, R_MODEL, R_CHAT, R_COMPL,
                R_TOKENIZE, R_DETOKENIZE };

static const struct {
    const char *path;
    enum route_id id;
    int post;
    int open; /* no API key needed */
} k_routes[] = {
    {"/health", R_HEALTH, 0, 1},          {"/health/ready", R_READY, 0, 1},
    {"/metrics", R_METRICS, 0, 1},
    {"/version", R_VERSION, 0, 0},        {"/v1/models", R_MODELS, 0, 0},
    {"/v1/chat/completions", R_CHAT, 1, 0}, {"/v1/completions", R_COMPL, 1, 0},
    {"/tokenize", R_TOKENIZE, 1, 0},      {"/detokenize", R_DETOKENIZE, 1, 0},
};

static int find_route(const char *url, int *idx)
{
    for (size_t i = 0; i < sizeof(k_routes) / sizeof(k_routes[0]); i++)
        if (!strcmp(url, k_routes[i].path)) {
            *idx = (int)i;
            return k_routes[i].id;
        }
    *idx = -1;
    if (!strncmp(url, "/v1/models/", 11) && url[11])
        return R_MODEL;
    return R_NONE;
}

static int key_ok(const struct srv *s, struct MHD_Connection *mc)
{
    if (!s->api_key)
        return 1;
    const char *h = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7))
        return 0;
    h += 7;
    size_t a = strlen(h), b = strlen(s->api_key);
    unsigned diff = a != b;
    for (size_t i = 0; i < a; i++) /* time independent of where they differ */
        diff |= (unsigned)(h[i] ^ s->api_key[i % (b ? b : 1)]);
    return diff == 0;
}

static enum MHD_Result handle(struct MHD_Connection *mc, struct conn *c, const char *url, int post)
{
    struct srv *s = c->s;
    int idx;
    int id = find_route(url, &idx);
    int route_post = id == R_MODEL ? 0 : idx >= 0 ? k_routes[idx].post : 0;
    c->route = id == R_NONE ? "other" : id == R_MODEL ? "/v1/models/{id}" : k_routes[idx].path;
    if (id == R_NONE)
        return fail(mc, c, 404, NULL, NULL, "no such route");
    int is_get = !strcmp(c->method, "GET") || !strcmp(c->method, "HEAD");
    if ((route_post && !post) || (!route_post && !is_get))
        return fail(mc, c, 405, NULL, NULL, route_post ? "use POST" : "use GET");
    if (!(idx >= 0 && k_routes[idx].open) && !key_ok(s, mc))
        return fail(mc, c, 401, NULL, "invalid_api_key",
                    "a valid API key is required (Authorization: Bearer KEY)");
    struct engine *e = atomic_load(&s->e);
    switch (id) {
    case R_HEALTH:
        if (!e)
            return reply(mc, c, 503, "application/json", "{\"status\":\"loading\"}", 20);
        return reply(mc, c, 200, "application/json", "{\"status\":\"ok\"}", 15);
    case R_READY: {
        struct eng_stats st = {0};
        if (e)
            eng_get_stats(e, &st);
        const char *why = !e ? "loading" : st.draining ? "draining" : eng_queue_full(e) ? "busy" : NULL;
        if (why) {
            char body[48];
            int n = snprintf(body, sizeof(body), "{\"status\":\"%s\"}", why);
            c->retry_after = 1;
            return reply(mc, c, 503, "application/json", body, (size_t)n);
        }
        return reply(mc, c, 200, "application/json", "{\"status\":\"ready\"}", 18);
    }
    case R_METRICS: {
        size_t len = 0;
        char *text = srv_metrics_render(e, &len);
        if (!text)
            return MHD_NO;
        enum MHD_Result r = reply(mc, c, 200, "text/plain; version=0.0.4", text, len);
        free(text);
        return r;
    }
    case R_VERSION: {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "version", CINFER_VERSION);
        return reply_json(mc, c, 200, o);
    }
    case R_MODELS:
        return do_models(mc, c, NULL);
    case R_MODEL:
        return do_models(mc, c, url + 11);
    default:
        break;
    }
    if (!e)
        return fail(mc, c, 503, NULL, NULL, "the model is still loading");
    if (c->too_big) {
        char msg[96];
        snprintf(msg, sizeof(msg), "the body is larger than %zu bytes (--max-body)", s->max_body);
        return fail(mc, c, 413, NULL, "request_too_large", msg);
    }
    switch (id) {
    case R_CHAT:
        return do_completion(mc, c, e, SRV_CHAT);
    case R_COMPL:
        return do_completion(mc, c, e, SRV_COMPLETION);
    case R_TOKENIZE:
        return do_tokenize(mc, c, e);
    default:
        return do_detokenize(mc, c, e);
    }
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *mc, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls)
{
    struct srv *s = cls;
    (void)version;
    struct conn *c = *con_cls;
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (!c)
            return MHD_NO;
        c->s = s;
        c->t0 = util_now_s();
        c->fd = MHD_INVALID_SOCKET;
        c->route = "other";
        snprintf(c->method, sizeof(c->method), "%s", method);
        c->path = strdup(url);
        *con_cls = c;
        atomic_fetch_add(&s->inflight, 1);
        int post = !strcmp(method, "POST");
        if (!post) /* nothing to read: answer now */
            return handle(mc, c, url, 0);
        const char *cl =
            MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->max_body + (size_t)DISCARD_MAX) {
            c->too_big = 1; /* too large even to read and drop: answer and close */
            return handle(mc, c, url, 1);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!c->too_big && c->body.n + *upload_size > c->s->max_body) {
            c->too_big = 1;
            free(c->body.p);
            c->body = (struct tok_buf){0};
        }
        if (c->too_big) {
            c->discarded += *upload_size;
            if (c->discarded > DISCARD_MAX && !c->status) {
                *upload_size = 0;
                return handle(mc, c, url, 1);
            }
        } else if (tok_buf_append(&c->body, upload, *upload_size)) {
            return MHD_NO;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (c->status) /* already answered */
        return MHD_YES;
    return handle(mc, c, url, 1);
}

static void completed_cb(void *cls, struct MHD_Connection *mc, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)mc;
    struct conn *c = *con_cls;
    if (!c)
        return;
    *con_cls = NULL;
    atomic_fetch_sub(&c->s->inflight, 1);
    int prompt = 0, completion = 0;
    if (c->job) {
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
            srv_job_cancel(c->job);
        srv_job_usage(c->job, &prompt, &completion);
        srv_job_free(c->job);
    }
    if (!c->status)
        c->status = 499; /* the client went before an answer, as nginx logs it */
    srv_metrics_http(c->route, c->status);
    access_log(c, util_now_s() - c->t0, prompt, completion);
    free(c->body.p);
    free(c->out.p);
    free(c->path);
    free(c);
}

static void mhd_log_cb(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    srv_log("http: %s", msg);
}

int srv_start(const struct srv_config *cfg, const struct srv_model *model, struct srv **out,
              char *err, size_t errlen)
{
    *out = NULL;
    struct srv *s = calloc(1, sizeof(*s));
    if (!s)
        return snprintf(err, errlen, "out of memory"), -ENOMEM;
    g_log_json = !strcmp(cfg->log_format, "json");
    s->max_body = (size_t)cfg->max_body;
    s->model = *model;
    atomic_init(&s->e, NULL);
    union {
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } addr;
    memset(&addr, 0, sizeof(addr));
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (inet_pton(AF_INET, cfg->host, &addr.v4.sin_addr) == 1) {
        addr.v4.sin_family = AF_INET;
        addr.v4.sin_port = htons((uint16_t)cfg->port);
    } else if (inet_pton(AF_INET6, cfg->host, &addr.v6.sin6_addr) == 1) {
        addr.v6.sin6_family = AF_INET6;
        addr.v6.sin6_port = htons((uint16_t)cfg->port);
        flags |= MHD_USE_IPv6;
    } else {
        free(s);
        snprintf(err, errlen, "--host '%s' is not an IPv4 or IPv6 address", cfg->host);
        return -EINVAL;
    }
    s->d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, access_cb, s,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log_cb, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                            MHD_OPTION_NOTIFY_COMPLETED, completed_cb, s,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)1000,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300, MHD_OPTION_END);
    if (!s->d) {
        free(s);
        snprintf(err, errlen, "cannot listen on %s port %lld (in use, or no permission)",
                 cfg->host, (long long)cfg->port);
        return -EADDRINUSE;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : (unsigned)cfg->port;
    *out = s;
    return 0;
}

int srv_set_api_key(struct srv *s, const char *key)
{
    free(s->api_key);
    s->api_key = key && *key ? strdup(key) : NULL;
    return key && *key && !s->api_key ? -ENOMEM : 0;
}

void srv_set_engine(struct srv *s, struct engine *e)
{
    atomic_store(&s->e, e);
}

int srv_inflight(struct srv *s)
{
    return atomic_load(&s->inflight);
}

unsigned srv_port(const struct srv *s)
{
    return s->port;
}

void srv_quiesce(struct srv *s)
{
    if (s && s->d)
        MHD_quiesce_daemon(s->d);
}

void srv_stop(struct srv *s)
{
    if (!s)
        return;
    if (s->d)
        MHD_stop_daemon(s->d);
    free(s->api_key);
    free(s);
}

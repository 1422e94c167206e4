/*
 * server/http.c - the HTTP front end on libmicrohttpd: routes, strict
 * request checks, the API key, the body limits, the access log, and the
 * content-reader callback that feeds every completion response from its job.
 *
 * Threads: a small pool of libmicrohttpd threads, each an epoll loop over
 * many connections (--http-threads); no callback ever blocks one.  A
 * connection waiting for its request's output is suspended and resumed
 * from the engine's thread when the job has an event (srv_wake).  While
 * suspended, libmicrohttpd does not look at the socket, so a watcher thread
 * polls the suspended sockets every 100 ms: an error or a hang-up cancels
 * the request; a half-close (the client shut its sending side) is not a
 * disconnect, but is probed once - an SSE comment on a stream, an interim
 * "102 Processing" for HTTP/1.1 otherwise - so that a client that really
 * closed answers with a reset, which is.
 *
 * Checked before a body is read (and answered then, closing the
 * connection): the route and method, the header syntax (names are tokens,
 * values hold no control bytes), Host (exactly one in HTTP/1.1),
 * Content-Length (one value, not with Transfer-Encoding), the transfer
 * coding (chunked only: 501 otherwise), the API key, and the body's size
 * against --max-body and --max-body-total.
 *
 * CORS (--allowed-origins): every response gets its headers in one place,
 * add_common_headers; OPTIONS (a browser's preflight) is answered before the
 * method and the API key are checked.  See cors_headers.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/srv.h"
#include "util/clock.h"

#define WATCH_MS 100
#define DISCARD_MAX (64u << 20) /* bytes of an oversized body read and dropped before answering */
#define FD_RESERVE 64           /* descriptors kept for the model, logs and the engine */

struct conn;

struct srv {
    struct MHD_Daemon *d;
    char *api_key; /* NULL: no key */
    /* CORS (--allowed-origins): any origin, or the n_origins listed (0: none, CORS off) */
    int cors_any;
    char **origins;
    int n_origins;
    size_t max_body;
    size_t max_body_total;
    atomic_llong body_bytes; /* bytes of request bodies held now, over all connections */
    unsigned port;
    unsigned max_conn; /* the connection limit in effect */
    int nul_check;     /* libmicrohttpd's read buffer is laid out as nul_in_values() reads it */
    atomic_int inflight;
    _Atomic(struct engine *) e;
    struct srv_model model;
    atomic_ullong next_id;
    /* suspended connections: mu guards the list and every conn's suspended flag */
    pthread_mutex_t mu;
    struct conn *susp;
    int n_susp;
    pthread_t watcher;
    int watcher_started;
    atomic_int stopping;
};

struct conn {
    struct srv *s;
    struct MHD_Connection *mc;
    double t0;
    char method[12];
    char *path;
    char request_id[72];
    const char *route; /* the metrics label */
    int route_id;
    int http11;
    struct buf body;
    size_t held; /* bytes counted in s->body_bytes */
    size_t discarded;
    int too_big;    /* the body passed --max-body: read, dropped, then 413 */
    int overloaded; /* --max-body-total was reached: read, dropped, then 503 */
    unsigned status;
    struct srv_job *job;
    struct srv_wake wake;
    struct buf out;
    size_t out_pos;
    int finished;
    int retry_after; /* seconds for a Retry-After header, 0: none */
    MHD_socket fd;
    /* suspension (s->mu) */
    atomic_uint wakes; /* bumped on every job event */
    int suspended;
    int probed;       /* a half-close was probed */
    atomic_int probe; /* the stream owes an SSE comment (the probe) */
    atomic_int gone;  /* the client went: the job is cancelled */
    struct conn *snext, *sprev;
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
        cJSON_AddStringToObject(o, "request_id", c->request_id);
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
        fprintf(stderr, "%s %.200s %u prompt=%d completion=%d %.1fms id=%s\n", c->method,
                c->path ? c->path : "", c->status, prompt, completion, dur * 1e3, c->request_id);
    }
    pthread_mutex_unlock(&g_log_mu);
}

/* ---- responses ------------------------------------------------------------- */

static const char *allow_for(const struct conn *c)
{
    return !strcmp(c->route, "/v1/models") || !strncmp(c->route, "/v1/models/", 11) ||
                   !strncmp(c->route, "/health", 7) || !strcmp(c->route, "/metrics") ||
                   !strcmp(c->route, "/version")
               ? "GET, HEAD, OPTIONS"
               : "POST, OPTIONS";
}

static int is_tchar(unsigned char ch);

/*
 * CORS, close to Starlette's CORSMiddleware under vLLM (no credentials):
 * with --allowed-origins '*' every response says Access-Control-Allow-Origin:
 * *, also one to a request without an Origin (Starlette adds nothing there;
 * the header is harmless and one answer then fits every client); with a
 * list, the request's Origin is echoed when it is on the list (compared
 * regardless of case), and every response says Vary: Origin, since what it
 * says depends on it; with '' nothing is added.  A preflight (OPTIONS with
 * Origin and Access-Control-Request-Method) is a 204 (Starlette: 200 "OK");
 * from an origin not on the list it is a 400 "Disallowed CORS origin", as
 * Starlette answers (there in plain text).
 */
#define CORS_MAX_AGE "600" /* seconds a browser may keep a preflight's answer (Starlette's) */
#define CORS_ALLOW_HEADERS "Authorization, Content-Type, X-Request-Id"

/* The Access-Control-Allow-Origin of c's responses, or NULL for none. */
static const char *cors_allow_origin(const struct conn *c)
{
    const struct srv *s = c->s;
    if (s->cors_any)
        return "*";
    const char *o =
        s->n_origins ? MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_ORIGIN)
                     : NULL;
    for (int i = 0; o && i < s->n_origins; i++)
        if (!strcasecmp(o, s->origins[i]))
            return o;
    return NULL;
}

/* Whether v is header names (tokens) separated by commas, as Access-Control-Request-Headers. */
static int is_token_list(const char *v)
{
    const char *p = v;
    for (;;) {
        p += strspn(p, " \t");
        size_t n = 0;
        while (is_tchar((unsigned char)p[n]))
            n++;
        if (!n)
            return 0;
        p += n;
        p += strspn(p, " \t");
        if (!*p)
            return 1;
        if (*p++ != ',')
            return 0;
    }
}

static void cors_headers(struct MHD_Response *r, const struct conn *c, unsigned status)
{
    if (!c->s->cors_any && c->s->n_origins)
        MHD_add_response_header(r, MHD_HTTP_HEADER_VARY, MHD_HTTP_HEADER_ORIGIN);
    const char *origin = cors_allow_origin(c);
    if (!origin)
        return;
    MHD_add_response_header(r, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if (status != 204 || strcmp(c->method, "OPTIONS")) {
        /* what a page's script may read beyond the safelisted headers */
        MHD_add_response_header(r, MHD_HTTP_HEADER_ACCESS_CONTROL_EXPOSE_HEADERS,
                                "X-Request-Id, Retry-After");
        return;
    }
    const char *want = MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND,
                                                   MHD_HTTP_HEADER_ACCESS_CONTROL_REQUEST_HEADERS);
    MHD_add_response_header(r, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS");
    MHD_add_response_header(r, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_HEADERS,
                            want && is_token_list(want) ? want : CORS_ALLOW_HEADERS);
    MHD_add_response_header(r, MHD_HTTP_HEADER_ACCESS_CONTROL_MAX_AGE, CORS_MAX_AGE);
}

static void add_common_headers(struct MHD_Response *r, const struct conn *c, unsigned status)
{
    MHD_add_response_header(r, "X-Request-Id", c->request_id);
    cors_headers(r, c, status);
    if (status == 405 || (status == 204 && !strcmp(c->method, "OPTIONS")))
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow_for(c));
    if (status == 401)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (c->retry_after > 0) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%d", c->retry_after);
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
}

static enum MHD_Result reply(struct MHD_Connection *mc, struct conn *c, unsigned status,
                             const char *type, const char *body, size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    if (type) /* NULL: no body (204) */
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    add_common_headers(r, c, status);
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

/* ---- request bodies: held bytes, counted against --max-body-total ------------------ */

/* Counts n more bytes as held by c; 0, or -1 when that would pass the global cap. */
static int body_hold(struct conn *c, size_t n)
{
    long long now = atomic_fetch_add(&c->s->body_bytes, (long long)n) + (long long)n;
    if ((size_t)now > c->s->max_body_total) {
        atomic_fetch_sub(&c->s->body_bytes, (long long)n);
        return -1;
    }
    c->held += n;
    return 0;
}

static void body_release(struct conn *c)
{
    free(c->body.p);
    c->body = (struct buf){0};
    if (c->held)
        atomic_fetch_sub(&c->s->body_bytes, (long long)c->held);
    c->held = 0;
}

/* ---- suspension: a connection waits for its job without a thread ------------------ */

static void susp_unlink(struct srv *s, struct conn *c)
{
    if (c->sprev)
        c->sprev->snext = c->snext;
    else
        s->susp = c->snext;
    if (c->snext)
        c->snext->sprev = c->sprev;
    c->snext = c->sprev = NULL;
    c->suspended = 0;
    s->n_susp--;
}

/*
 * Suspends c unless its job had an event since `seen` (the wake count read
 * before the job was last pumped).  Called from an MHD callback.  1 when
 * suspended (return to MHD now), 0 to pump again.
 */
static int conn_suspend(struct conn *c, unsigned seen)
{
    struct srv *s = c->s;
    pthread_mutex_lock(&s->mu);
    int go = atomic_load(&c->wakes) == seen && !atomic_load(&c->gone) && !atomic_load(&c->probe) &&
             !atomic_load(&s->stopping);
    if (go) {
        MHD_suspend_connection(c->mc);
        c->suspended = 1;
        c->sprev = NULL;
        c->snext = s->susp;
        if (s->susp)
            s->susp->sprev = c;
        s->susp = c;
        s->n_susp++;
    }
    pthread_mutex_unlock(&s->mu);
    return go;
}

/* The job's wake-up, on the engine's thread: resume the connection if it sleeps. */
static void conn_wake_cb(void *arg)
{
    struct conn *c = arg;
    atomic_fetch_add(&c->wakes, 1);
    struct srv *s = c->s;
    pthread_mutex_lock(&s->mu);
    if (c->suspended) {
        susp_unlink(s, c);
        MHD_resume_connection(c->mc);
    }
    pthread_mutex_unlock(&s->mu);
}

/*
 * Every WATCH_MS: the sockets of suspended connections.  An error or
 * hang-up (the client is gone) cancels the job and resumes the connection
 * so libmicrohttpd closes it; a half-close is probed once (see the top).
 */
static void *watcher_main(void *arg)
{
    struct srv *s = arg;
    struct pollfd *pf = NULL;
    struct conn **pc = NULL, **wake = NULL;
    int cap = 0;
    while (!atomic_load(&s->stopping)) {
        usleep(WATCH_MS * 1000);
        pthread_mutex_lock(&s->mu);
        if (s->n_susp > cap) {
            int nc = s->n_susp * 2;
            struct pollfd *a = realloc(pf, sizeof(*a) * (size_t)nc);
            pf = a ? a : pf;
            struct conn **b = a ? realloc(pc, sizeof(*b) * (size_t)nc) : NULL;
            pc = b ? b : pc;
            struct conn **w = b ? realloc(wake, sizeof(*w) * (size_t)nc) : NULL;
            wake = w ? w : wake;
            if (w)
                cap = nc;
        }
        int n = 0, nw = 0;
        for (struct conn *c = s->susp; c && n < cap; c = c->snext) {
            pf[n] = (struct pollfd){.fd = c->fd, .events = POLLRDHUP};
            pc[n++] = c;
        }
        if (n > 0 && poll(pf, (nfds_t)n, 0) > 0) {
            for (int i = 0; i < n; i++) {
                struct conn *c = pc[i];
                short ev = pf[i].revents;
                if (!ev)
                    continue;
                if (!(ev & (POLLERR | POLLHUP | POLLNVAL)) && (ev & POLLRDHUP) && !c->probed) {
                    c->probed = 1;
                    if (srv_job_stream(c->job)) {
                        atomic_store(&c->probe, 1); /* the reader writes the comment */
                    } else if (c->http11) {
                        static const char k102[] = "HTTP/1.1 102 Processing\r\n\r\n";
                        ssize_t k =
                            send(c->fd, k102, sizeof(k102) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
                        if (k == (ssize_t)sizeof(k102) - 1)
                            continue;
                        atomic_store(&c->gone, 1);
                    } else {
                        continue; /* HTTP/1.0: nothing may be sent before the answer */
                    }
                } else if (ev & (POLLERR | POLLHUP | POLLNVAL)) {
                    atomic_store(&c->gone, 1);
                } else {
                    continue;
                }
                susp_unlink(s, c); /* nobody else resumes it now; it cannot end while suspended */
                wake[nw++] = c;
            }
        }
        pthread_mutex_unlock(&s->mu);
        for (int i = 0; i < nw; i++) {
            if (atomic_load(&wake[i]->gone))
                srv_job_cancel(wake[i]->job);
            MHD_resume_connection(wake[i]->mc);
        }
    }
    free(pf);
    free(pc);
    free(wake);
    return NULL;
}

/* ---- completions: a stream's reader callback, or the whole result ---------------- */

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
        if (atomic_load(&c->gone) || atomic_load(&c->s->stopping))
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (atomic_exchange(&c->probe, 0)) { /* an SSE comment: clients skip it */
            if (buf_printf(&c->out, ": ping\n\n"))
                return MHD_CONTENT_READER_END_WITH_ERROR;
            continue;
        }
        unsigned seen = atomic_load(&c->wakes);
        int r = srv_job_pump(c->job, &c->out, 0);
        if (r < 0)
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (r == SRV_JOB_DONE)
            c->finished = 1;
        else if (r == SRV_JOB_WAIT && conn_suspend(c, seen))
            return 0;
    }
}

/* A non-streamed completion: answers once the job is done, suspending meanwhile. */
static enum MHD_Result plain_step(struct MHD_Connection *mc, struct conn *c)
{
    for (;;) {
        if (atomic_load(&c->gone) || atomic_load(&c->s->stopping))
            return MHD_NO;
        unsigned seen = atomic_load(&c->wakes);
        int r = srv_job_pump(c->job, &c->out, 0);
        if (r == SRV_JOB_DONE)
            return reply(mc, c, (unsigned)srv_job_status(c->job), "application/json", c->out.p,
                         c->out.n);
        if (r < 0)
            return fail(mc, c, 500, NULL, NULL, "out of memory");
        if (r == SRV_JOB_WAIT && conn_suspend(c, seen))
            return MHD_YES;
    }
}

static enum MHD_Result do_completion(struct MHD_Connection *mc, struct conn *c, struct engine *e,
                                     enum srv_kind kind)
{
    struct srv_request req;
    struct srv_error err;
    const char *body = c->body.p ? c->body.p : "";
    int bad = kind == SRV_EMBED ? srv_parse_embeddings(body, c->body.n, e, &c->s->model, &req, &err)
              : kind == SRV_RESPONSES
                  ? srv_parse_responses(body, c->body.n, e, &c->s->model, &req, &err)
                  : srv_parse_request(kind, body, c->body.n, e, &c->s->model, &req, &err);
    body_release(c); /* parsed: the body's bytes are free for other uploads */
    if (bad) {
        srv_request_free(&req);
        return reply_error(mc, c, &err);
    }
    c->wake = (struct srv_wake){conn_wake_cb, c};
    if (srv_job_start(e, &c->s->model, &req, &c->wake, &c->job, &err))
        return reply_error(mc, c, &err);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    c->fd = ci ? ci->connect_fd : MHD_INVALID_SOCKET;
    if (!srv_job_stream(c->job))
        return plain_step(mc, c); /* its status is known only at the end */
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, job_reader_cb, c, NULL);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    add_common_headers(r, c, 200);
    c->status = 200;
    enum MHD_Result ok = MHD_queue_response(mc, 200, r);
    MHD_destroy_response(r);
    return ok;
}

/* ---- the other routes ------------------------------------------------------------ */

/* o[key] = the space-separated words of `words` as an array of strings */
static void add_words(cJSON *o, const char *key, const char *words)
{
    cJSON *a = cJSON_AddArrayToObject(o, key);
    for (const char *p = words; a && *p;) {
        size_t n = strcspn(p, " ");
        char name[32];
        snprintf(name, sizeof(name), "%.*s", (int)n, p);
        cJSON_AddItemToArray(a, cJSON_CreateString(name));
        p += n;
        p += *p == ' ';
    }
}

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
        cJSON_AddStringToObject(m, "device", info.backend);
        cJSON_AddStringToObject(m, "kernels", info.kernels);
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
    if (!add) /* vLLM's name */
        add = cJSON_GetObjectItemCaseSensitive(o, "add_special_tokens");
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

/* A special token's text for tokenizer_info, or NULL (no such token). */
static cJSON *token_text_json(const struct tok *t, int32_t id)
{
    size_t n = 0;
    const char *p = id >= 0 ? tok_piece(t, id, 1, &n) : NULL;
    char *clean = p ? srv_utf8_dup(p, n) : NULL;
    cJSON *v = clean ? cJSON_CreateString(clean) : cJSON_CreateNull();
    free(clean);
    return v;
}

/* vLLM's GET /tokenizer_info (what lm-eval's remote tokenizer reads). */
static enum MHD_Result do_tokenizer_info(struct MHD_Connection *mc, struct conn *c,
                                         struct engine *e)
{
    const struct tok *t = eng_tok(e);
    struct eng_info info;
    eng_get_info(e, &info);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "bos_token", token_text_json(t, tok_add_bos(t) ? tok_bos(t) : -1));
    cJSON_AddItemToObject(o, "eos_token", token_text_json(t, tok_eos(t)));
    cJSON_AddNullToObject(o, "pad_token");
    cJSON_AddBoolToObject(o, "add_bos_token", tok_add_bos(t));
    cJSON_AddNumberToObject(o, "model_max_length", info.n_ctx);
    cJSON_AddNumberToObject(o, "vocab_size", info.n_vocab);
    char *tmpl =
        info.chat_template ? srv_utf8_dup(info.chat_template, info.chat_template_len) : NULL;
    if (tmpl)
        cJSON_AddStringToObject(o, "chat_template", tmpl);
    else
        cJSON_AddNullToObject(o, "chat_template");
    free(tmpl);
    return reply_json(mc, c, 200, o);
}

/* llama-server's route: a chat body's messages -> {"prompt": the text the model would see}. */
static enum MHD_Result do_apply_template(struct MHD_Connection *mc, struct conn *c)
{
    struct srv_error err;
    memset(&err, 0, sizeof err);
    cJSON *o = parse_body(c, &err);
    if (!o)
        return reply_error(mc, c, &err);
    struct buf prompt = {0};
    int add_bos = 0;
    int rc = srv_chat_prompt(c->s->model.chat, o, &prompt, &add_bos, &err);
    cJSON_Delete(o);
    if (rc) {
        free(prompt.p);
        return reply_error(mc, c, &err);
    }
    cJSON *r = cJSON_CreateObject();
    if (!r || !cJSON_AddStringToObject(r, "prompt", prompt.p ? prompt.p : "")) {
        free(prompt.p);
        cJSON_Delete(r);
        return fail(mc, c, 500, NULL, NULL, "out of memory");
    }
    free(prompt.p);
    return reply_json(mc, c, 200, r);
}

static enum MHD_Result do_detokenize(struct MHD_Connection *mc, struct conn *c, struct engine *e)
{
    struct srv_error err;
    struct srv_ids runs;
    cJSON *o = srv_parse_json_ids(c->body.p ? c->body.p : "", c->body.n, &runs, &err);
    if (!o)
        return reply_error(mc, c, &err);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "tokens");
    const struct tok *t = eng_tok(e);
    const int32_t *rv = NULL;
    int rn = 0, is_run = srv_ids_get(&runs, ids, &rv, &rn);
    int nv = (int)tok_n_vocab(t), rc = cJSON_IsArray(ids) || is_run ? 0 : -EINVAL;
    struct tok_detok d;
    struct buf text = {0};
    tok_detok_init(&d, t, TOK_DETOK_SPECIAL);
    for (int i = 0; !rc && i < rn; i++)
        rc = rv[i] >= 0 && rv[i] < nv ? tok_detok_feed(&d, rv[i], &text) : -EINVAL;
    for (const cJSON *v = ids && !is_run ? ids->child : NULL; !rc && v; v = v->next) {
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble < nv) ||
            v->valuedouble != (double)(int)v->valuedouble)
            rc = -EINVAL;
        else
            rc = tok_detok_feed(&d, (int32_t)v->valuedouble, &text);
    }
    rc = rc ? rc : tok_detok_flush(&d, &text);
    cJSON_Delete(o);
    srv_ids_free(&runs);
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
    cJSON_AddStringToObject(r, "prompt", clean ? clean : ""); /* vLLM's name */
    free(clean);
    return reply_json(mc, c, 200, r);
}

/* ---- routing ---------------------------------------------------------------------- */

enum route_id {
    R_NONE,
    R_HEALTH,
    R_READY,
    R_METRICS,
    R_VERSION,
    R_MODELS,
    R_MODEL,
    R_CHAT,
    R_COMPL,
    R_RESPONSES,
    R_EMBED,
    R_TOKENIZER_INFO,
    R_TOKENIZE,
    R_DETOKENIZE,
    R_APPLY_TEMPLATE
};

static const struct {
    const char *path;
    enum route_id id;
    int post;
    int open; /* no API key needed */
} k_routes[] = {
    {"/health", R_HEALTH, 0, 1},
    {"/health/ready", R_READY, 0, 1},
    {"/metrics", R_METRICS, 0, 1},
    {"/version", R_VERSION, 0, 0},
    {"/v1/models", R_MODELS, 0, 0},
    {"/v1/chat/completions", R_CHAT, 1, 0},
    {"/v1/completions", R_COMPL, 1, 0},
    {"/tokenize", R_TOKENIZE, 1, 0},
    {"/detokenize", R_DETOKENIZE, 1, 0},
    {"/apply-template", R_APPLY_TEMPLATE, 1, 0},
    {"/v1/responses", R_RESPONSES, 1, 0},
    {"/v1/embeddings", R_EMBED, 1, 0},
    {"/tokenizer_info", R_TOKENIZER_INFO, 0, 0},
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

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* 'Authorization: Bearer KEY': the scheme in any case, whitespace around the key ignored. */
static int key_ok(const struct srv *s, struct MHD_Connection *mc)
{
    if (!s->api_key)
        return 1;
    const char *h = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h)
        return 0;
    while (is_space(*h))
        h++;
    if (strncasecmp(h, "Bearer", 6) || !is_space(h[6]))
        return 0;
    h += 7;
    while (is_space(*h))
        h++;
    size_t a = strlen(h), b = strlen(s->api_key);
    while (a && is_space(h[a - 1]))
        a--;
    unsigned diff = a != b;
    for (size_t i = 0; i < a; i++) /* time independent of where they differ */
        diff |= (unsigned)(h[i] ^ s->api_key[i % (b ? b : 1)]);
    return diff == 0;
}

/* What the header checks found (one pass over every header). */
struct hdr_scan {
    int n_host, n_cl, n_te;
    int cl_differ;
    char cl[32];
    int te_chunked;     /* every Transfer-Encoding value is exactly "chunked" */
    char bad_name[48];  /* a header name that is not a token */
    char bad_value[48]; /* the name of a header whose value holds a control byte */
    /* where each name starts and each value ends, for nul_in_values() */
    const char **keys, **ends;
    size_t n, cap;
    int oom;
};

/*
 * Whether a header value held a NUL byte.  libmicrohttpd hands values over
 * as C strings, cut at a NUL; what followed it is still in its read buffer,
 * where 0.9.75 has turned each line's CR LF (or bare LF) into NULs.  So the
 * byte after a value's terminating NUL is another NUL (the LF), or the
 * first byte of the next header's name (a bare LF) - anything else is the
 * rest of a value cut short.  Checked against the one version whose buffer
 * this describes (Debian 12's): srv_start sets srv.nul_check for it alone.
 */
static int nul_in_values(const struct hdr_scan *h)
{
    for (size_t i = 0; i < h->n; i++) {
        const char *e = h->ends[i];
        if (e[0] != '\0' || e[1] == '\0')
            continue;
        int next_name = 0;
        for (size_t k = 0; k < h->n && !next_name; k++)
            next_name = h->keys[k] == e + 1;
        if (!next_name)
            return 1;
    }
    return 0;
}

static int is_tchar(unsigned char ch)
{
    return isalnum(ch) || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static void copy_name(char *out, size_t cap, const char *key, size_t n)
{
    size_t k = n < cap - 1 ? n : cap - 1;
    for (size_t i = 0; i < k; i++)
        out[i] = isprint((unsigned char)key[i]) ? key[i] : '?';
    out[k] = '\0';
}

static enum MHD_Result scan_header_cb(void *cls, enum MHD_ValueKind kind, const char *key,
                                      size_t key_size, const char *value, size_t value_size)
{
    struct hdr_scan *h = cls;
    (void)kind;
    int name_ok = key_size > 0;
    for (size_t i = 0; i < key_size && name_ok; i++)
        name_ok = is_tchar((unsigned char)key[i]);
    if (!name_ok && !h->bad_name[0]) {
        if (key_size)
            copy_name(h->bad_name, sizeof(h->bad_name), key, key_size);
        else
            snprintf(h->bad_name, sizeof(h->bad_name), "(empty)");
    }
    for (size_t i = 0; value && i < value_size; i++) {
        unsigned char ch = (unsigned char)value[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
            if (!h->bad_value[0])
                copy_name(h->bad_value, sizeof(h->bad_value), key, key_size);
            break;
        }
    }
    if (!value)
        return MHD_YES;
    if (h->n == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 32;
        const char **a = realloc(h->keys, sizeof(*a) * cap);
        if (a)
            h->keys = a;
        const char **b = a ? realloc(h->ends, sizeof(*b) * cap) : NULL;
        if (b)
            h->ends = b;
        if (!b) {
            h->oom = 1;
            return MHD_NO;
        }
        h->cap = cap;
    }
    h->keys[h->n] = key;
    h->ends[h->n++] = value + value_size;
    if (!strcasecmp(key, MHD_HTTP_HEADER_HOST)) {
        h->n_host++;
    } else if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) {
        if (h->n_cl++ && strcmp(h->cl, value))
            h->cl_differ = 1;
        snprintf(h->cl, sizeof(h->cl), "%s", value);
        if (strchr(value, ',')) /* "5, 6" in one header */
            h->cl_differ = 1;
    } else if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
        size_t a = 0, b = value_size;
        while (a < b && is_space(value[a]))
            a++;
        while (b > a && is_space(value[b - 1]))
            b--;
        int chunked = b - a == 7 && !strncasecmp(value + a, "chunked", 7);
        h->te_chunked = h->n_te++ ? 0 : chunked;
    }
    return MHD_YES;
}

/* The answer for a body past --max-body (413) or past --max-body-total now (503). */
static enum MHD_Result fail_body(struct MHD_Connection *mc, struct conn *c)
{
    struct srv_error err;
    if (c->too_big)
        srv_fail(&err, 413, NULL, "request_too_large",
                 "the body is larger than %zu bytes (--max-body)", c->s->max_body);
    else
        srv_fail(&err, 503, NULL, "service_unavailable",
                 "the server holds too many request bodies now (--max-body-total %zu bytes)",
                 c->s->max_body_total);
    err.retry_after = c->too_big ? 0 : 1;
    return reply_error(mc, c, &err);
}

/*
 * OPTIONS on a known route: 204 with the CORS headers (when the origin is
 * let in) and Allow; no API key is asked for, since browsers send none with
 * a preflight.  A preflight from an origin not let in: 400 (see cors_headers).
 */
static enum MHD_Result preflight(struct MHD_Connection *mc, struct conn *c)
{
    int cors = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_ORIGIN) &&
               MHD_lookup_connection_value(mc, MHD_HEADER_KIND,
                                           MHD_HTTP_HEADER_ACCESS_CONTROL_REQUEST_METHOD);
    if (cors && !cors_allow_origin(c))
        return fail(mc, c, 400, NULL, "cors_origin_not_allowed", "Disallowed CORS origin");
    return reply(mc, c, 204, NULL, "", 0);
}

/*
 * The checks every request passes before anything else is done with it:
 * route, method, header syntax, framing, the API key.  MHD_YES when it
 * passed; otherwise the answer is queued.
 */
static enum MHD_Result check_request(struct MHD_Connection *mc, struct conn *c, const char *url)
{
    struct srv *s = c->s;
    struct hdr_scan h = {0};
    MHD_get_connection_values_n(mc, MHD_HEADER_KIND, scan_header_cb, &h);
    int nul = !h.oom && s->nul_check && nul_in_values(&h);
    free(h.keys);
    free(h.ends);
    char msg[160];
    if (h.oom)
        return fail(mc, c, 500, NULL, NULL, "out of memory");
    if (nul)
        return fail(mc, c, 400, NULL, "bad_request", "a header value holds a NUL byte");
    if (h.bad_name[0]) {
        snprintf(msg, sizeof(msg), "malformed header name '%s'", h.bad_name);
        return fail(mc, c, 400, NULL, "bad_request", msg);
    }
    if (h.bad_value[0]) {
        snprintf(msg, sizeof(msg), "the value of header '%s' holds a control byte", h.bad_value);
        return fail(mc, c, 400, NULL, "bad_request", msg);
    }
    if (c->http11 ? h.n_host != 1 : h.n_host > 1)
        return fail(mc, c, 400, NULL, "bad_request",
                    h.n_host ? "more than one Host header" : "HTTP/1.1 requires a Host header");
    if (h.n_te && h.n_cl)
        return fail(mc, c, 400, NULL, "bad_request",
                    "Content-Length together with Transfer-Encoding");
    if (h.cl_differ)
        return fail(mc, c, 400, NULL, "bad_request", "conflicting Content-Length values");
    if (h.n_te && !h.te_chunked)
        return fail(mc, c, 501, NULL, "not_implemented",
                    "the only transfer coding accepted is chunked");
    int idx;
    int id = find_route(url, &idx);
    c->route_id = id;
    int route_post = id == R_MODEL ? 0 : idx >= 0 ? k_routes[idx].post : 0;
    c->route = id == R_NONE ? "other" : id == R_MODEL ? "/v1/models/{id}" : k_routes[idx].path;
    if (id == R_NONE)
        return fail(mc, c, 404, NULL, NULL, "no such route");
    if (!strcmp(c->method, "OPTIONS"))
        return MHD_YES; /* answered by handle(): an answer now would close the connection */
    int is_get = !strcmp(c->method, "GET") || !strcmp(c->method, "HEAD");
    int post = !strcmp(c->method, "POST");
    if ((route_post && !post) || (!route_post && !is_get))
        return fail(mc, c, 405, NULL, NULL, route_post ? "use POST" : "use GET");
    if (!(idx >= 0 && k_routes[idx].open) && !key_ok(s, mc))
        return fail(mc, c, 401, NULL, "invalid_api_key",
                    "a valid API key is required (Authorization: Bearer KEY)");
    if (post && h.n_cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(h.cl, &end, 10);
        if (errno || end == h.cl || *end)
            return fail(mc, c, 400, NULL, "bad_request", "Content-Length is not a number");
        if (n > s->max_body + (size_t)DISCARD_MAX) {
            c->too_big = 1; /* too large even to read and drop: answer and close */
            return fail_body(mc, c);
        }
        if (n <= s->max_body && body_hold(c, (size_t)n)) {
            c->overloaded = 1;
            return fail_body(mc, c);
        }
    }
    return MHD_YES;
}

/* Answers a request that passed check_request and whose body (if any) is in. */
static enum MHD_Result handle(struct MHD_Connection *mc, struct conn *c, const char *url)
{
    struct srv *s = c->s;
    int id = c->route_id;
    struct engine *e = atomic_load(&s->e);
    if (!strcmp(c->method, "OPTIONS"))
        return preflight(mc, c);
    switch (id) {
    case R_HEALTH:
        if (!e)
            return reply(mc, c, 503, "application/json", "{\"status\":\"loading\"}", 20);
        if (eng_stalled_s(e) > 0)
            return reply(mc, c, 503, "application/json", "{\"status\":\"stalled\"}", 20);
        return reply(mc, c, 200, "application/json", "{\"status\":\"ok\"}", 15);
    case R_READY: {
        struct eng_stats st = {0};
        if (e)
            eng_get_stats(e, &st);
        const char *why = !e                  ? "loading"
                          : st.draining       ? "draining"
                          : eng_queue_full(e) ? "busy"
                                              : NULL;
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
        add_words(o, "devices_built", eng_devices_built());
        if (e) {
            struct eng_info info;
            eng_get_info(e, &info);
            cJSON_AddStringToObject(o, "device", info.backend);
            cJSON_AddStringToObject(o, "kernels", info.kernels);
        }
        add_words(o, "kernels_available", eng_kernels_here());
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
    if (c->too_big || c->overloaded)
        return fail_body(mc, c);
    switch (id) {
    case R_CHAT:
        return do_completion(mc, c, e, SRV_CHAT);
    case R_COMPL:
        return do_completion(mc, c, e, SRV_COMPLETION);
    case R_RESPONSES:
        return do_completion(mc, c, e, SRV_RESPONSES);
    case R_EMBED:
        if (!c->s->model.embeddings)
            return fail(mc, c, 404, NULL, NULL,
                        "embeddings are not served: start the server with --embeddings");
        return do_completion(mc, c, e, SRV_EMBED);
    case R_TOKENIZER_INFO:
        return do_tokenizer_info(mc, c, e);
    case R_TOKENIZE:
        return do_tokenize(mc, c, e);
    case R_APPLY_TEMPLATE:
        return do_apply_template(mc, c);
    default:
        return do_detokenize(mc, c, e);
    }
}

/* The client's X-Request-Id when it is a plain token of up to 64 bytes, else a new one. */
static void set_request_id(struct srv *s, struct MHD_Connection *mc, struct conn *c)
{
    const char *v = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "X-Request-Id");
    size_t n = v ? strlen(v) : 0;
    int ok = n > 0 && n <= 64;
    for (size_t i = 0; ok && i < n; i++)
        ok = isalnum((unsigned char)v[i]) || strchr("-_.:/+=", v[i]);
    if (ok) {
        memcpy(c->request_id, v, n + 1);
        return;
    }
    unsigned long long k = atomic_fetch_add(&s->next_id, 1);
    snprintf(c->request_id, sizeof(c->request_id), "req-%08x%08llx",
             (unsigned)(s->model.created * 2654435761u), k);
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *mc, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls)
{
    struct srv *s = cls;
    struct conn *c = *con_cls;
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (!c)
            return MHD_NO;
        c->s = s;
        c->mc = mc;
        c->t0 = util_now_s();
        c->fd = MHD_INVALID_SOCKET;
        c->route = "other";
        c->http11 = version && !strcmp(version, MHD_HTTP_VERSION_1_1);
        atomic_init(&c->wakes, 0);
        snprintf(c->method, sizeof(c->method), "%s", method);
        c->path = strdup(url);
        set_request_id(s, mc, c);
        *con_cls = c;
        atomic_fetch_add(&s->inflight, 1);
        /* headers only: check them now, so a bad or unauthenticated request sends no body */
        return check_request(mc, c, url);
    }
    if (c->status) { /* answered already (an error before the body): drop what comes */
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (!c->too_big && !c->overloaded && c->body.n + n > c->s->max_body) {
            c->too_big = 1;
            body_release(c);
        }
        /* a chunked body has no length up front: count it as it comes */
        if (!c->too_big && !c->overloaded && c->body.n + n > c->held &&
            body_hold(c, c->body.n + n - c->held)) {
            c->overloaded = 1;
            body_release(c);
        }
        if (c->too_big || c->overloaded) {
            c->discarded += n;
            if (c->discarded > DISCARD_MAX)
                return handle(mc, c, url);
        } else if (buf_append(&c->body, upload, n)) {
            return MHD_NO;
        }
        return MHD_YES;
    }
    if (c->job) /* resumed: a non-streamed completion waiting for its result */
        return plain_step(mc, c);
    return handle(mc, c, url);
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
        srv_job_free(c->job); /* the engine calls conn_wake_cb no more */
    }
    if (!c->status)
        c->status = 499; /* the client went before an answer, as nginx logs it */
    srv_metrics_http(c->route, c->status);
    access_log(c, util_now_s() - c->t0, prompt, completion);
    body_release(c);
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

/* s->cors_any and s->origins from --allowed-origins; 0, or a negative code with err set. */
static int cors_init(struct srv *s, const char *list, char *err, size_t errlen)
{
    char msg[160];
    if (srv_origins_check(list, msg, sizeof(msg))) {
        snprintf(err, errlen, "--allowed-origins must be %s", msg);
        return -EINVAL;
    }
    size_t cap = 1;
    for (const char *p = list; *p; p++)
        cap += *p == ',';
    s->origins = calloc(cap, sizeof(*s->origins));
    if (!s->origins)
        return snprintf(err, errlen, "out of memory"), -ENOMEM;
    for (const char *p = list; *p;) {
        const char *a, *b;
        p = srv_list_item(p, &a, &b);
        if (b - a == 1 && *a == '*') {
            s->cors_any = 1;
        } else if (b > a) {
            if (!(s->origins[s->n_origins] = strndup(a, (size_t)(b - a))))
                return snprintf(err, errlen, "out of memory"), -ENOMEM;
            s->n_origins++;
        }
        p += *p == ',';
    }
    return 0;
}

static void cors_free(struct srv *s)
{
    for (int i = 0; i < s->n_origins; i++)
        free(s->origins[i]);
    free(s->origins);
    s->origins = NULL;
    s->n_origins = 0;
}

/* Raises the open-file limit toward what max_conn needs; returns the connections it allows. */
static unsigned fit_fd_limit(unsigned max_conn)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl))
        return max_conn;
    rlim_t want = (rlim_t)max_conn + FD_RESERVE;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        unsigned fit =
            rl.rlim_cur > FD_RESERVE * 2 ? (unsigned)(rl.rlim_cur - FD_RESERVE) : FD_RESERVE;
        if (fit < max_conn / 2) /* the listening line says the limit in any case */
            srv_log("warning: the open-file limit (%llu) allows %u connections, not the %u of "
                    "--max-connections (raise it with ulimit -n)",
                    (unsigned long long)rl.rlim_cur, fit, max_conn);
        return fit;
    }
    return max_conn;
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
    s->max_body_total = (size_t)cfg->max_body_total;
    s->nul_check = !strcmp(MHD_get_version(), "0.9.75");
    s->model = *model;
    s->model.embeddings = cfg->embeddings != 0;
    s->model.pooling = !cfg->pooling || !strcmp(cfg->pooling, "auto") ? ENG_POOL_NONE
                       : !strcmp(cfg->pooling, "cls")                 ? ENG_POOL_CLS
                       : !strcmp(cfg->pooling, "last")                ? ENG_POOL_LAST
                                                                      : ENG_POOL_MEAN;
    srv_metrics_configure(cfg, model);
    atomic_init(&s->e, NULL);
    atomic_init(&s->body_bytes, 0);
    atomic_init(&s->stopping, 0);
    pthread_mutex_init(&s->mu, NULL);
    union {
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } addr;
    memset(&addr, 0, sizeof(addr));
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG |
                     MHD_USE_ITC | MHD_ALLOW_SUSPEND_RESUME;
    if (inet_pton(AF_INET, cfg->host, &addr.v4.sin_addr) == 1) {
        addr.v4.sin_family = AF_INET;
        addr.v4.sin_port = htons((uint16_t)cfg->port);
    } else if (inet_pton(AF_INET6, cfg->host, &addr.v6.sin6_addr) == 1) {
        addr.v6.sin6_family = AF_INET6;
        addr.v6.sin6_port = htons((uint16_t)cfg->port);
        flags |= MHD_USE_IPv6;
    } else {
        pthread_mutex_destroy(&s->mu);
        free(s);
        snprintf(err, errlen, "--host '%s' is not an IPv4 or IPv6 address", cfg->host);
        return -EINVAL;
    }
    int rc = cors_init(s, cfg->allowed_origins ? cfg->allowed_origins : "*", err, errlen);
    if (rc) {
        cors_free(s);
        pthread_mutex_destroy(&s->mu);
        free(s);
        return rc;
    }
    unsigned max_conn = fit_fd_limit((unsigned)cfg->max_connections);
    s->max_conn = max_conn;
    s->d = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, access_cb, s, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_log_cb, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_NOTIFY_COMPLETED, completed_cb, s, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)cfg->http_threads, MHD_OPTION_CONNECTION_LIMIT, max_conn,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)cfg->max_connections_per_ip,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->idle_timeout, MHD_OPTION_STRICT_FOR_CLIENT,
        (int)1, MHD_OPTION_END);
    if (!s->d) {
        cors_free(s);
        pthread_mutex_destroy(&s->mu);
        free(s);
        snprintf(err, errlen, "cannot listen on %s port %lld (in use, or no permission)", cfg->host,
                 (long long)cfg->port);
        return -EADDRINUSE;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : (unsigned)cfg->port;
    if (pthread_create(&s->watcher, NULL, watcher_main, s) == 0)
        s->watcher_started = 1;
    *out = s;
    if (!s->watcher_started) {
        srv_stop(s);
        *out = NULL;
        snprintf(err, errlen, "cannot start the connection watcher thread");
        return -EAGAIN;
    }
    return 0;
}

int srv_set_api_key(struct srv *s, const char *key)
{
    free(s->api_key);
    s->api_key = key && *key ? strdup(key) : NULL;
    return key && *key && !s->api_key ? -ENOMEM : 0;
}

void srv_set_engine(struct srv *s, struct engine *e, const struct srv_chat *chat)
{
    s->model.chat = chat; /* published by the store below */
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

unsigned srv_max_connections(const struct srv *s)
{
    return s->max_conn;
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
    atomic_store(&s->stopping, 1);
    if (s->watcher_started)
        pthread_join(s->watcher, NULL);
    /* libmicrohttpd must not be stopped with connections suspended */
    pthread_mutex_lock(&s->mu);
    while (s->susp) {
        struct conn *c = s->susp;
        susp_unlink(s, c);
        MHD_resume_connection(c->mc);
    }
    pthread_mutex_unlock(&s->mu);
    if (s->d)
        MHD_stop_daemon(s->d);
    pthread_mutex_destroy(&s->mu);
    cors_free(s);
    free(s->api_key);
    free(s);
}

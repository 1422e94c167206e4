/*
 * cli/serve.c - `cinfer serve`: settings, listening at once (so /health
 * answers 503 while the model loads), loading the engine, then serving.
 * Signals are taken by one thread of their own (sigwait), so none waits for
 * a forward pass to end.  SIGTERM or SIGINT starts a drain at once: new
 * work gets 503 and /health/ready says 503, requests in flight finish (up
 * to --shutdown-timeout seconds; the rest are ended), then the process exits
 * 0.  A second one exits at once, with status 1.  SIGUSR1 logs one status
 * line; SIGHUP, SIGUSR2 and SIGALRM are logged and ignored (nothing to
 * reload); SIGPIPE is ignored (a closed socket is an error return).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "server/srv.h"
#include "util/clock.h"
#include "util/cpus.h"

static pthread_mutex_t g_sig_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_sig_cv = PTHREAD_COND_INITIALIZER;
static int g_signum;
/* what the signal thread may reach, under g_sig_mu: set once serving, cleared before teardown */
static struct engine *g_engine;
static struct srv *g_srv;

static const char *sig_name(int signum)
{
    switch (signum) {
    case SIGTERM:
        return "SIGTERM";
    case SIGINT:
        return "SIGINT";
    case SIGHUP:
        return "SIGHUP";
    case SIGUSR1:
        return "SIGUSR1";
    case SIGUSR2:
        return "SIGUSR2";
    default:
        return "SIGALRM";
    }
}

static void signal_set(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGUSR1);
    sigaddset(set, SIGUSR2);
    sigaddset(set, SIGALRM);
}

/* The signal thread: every signal above arrives here, never in another thread. */
static void *signal_main(void *arg)
{
    (void)arg;
    sigset_t set;
    signal_set(&set);
    int stops = 0;
    for (;;) {
        int signum;
        if (sigwait(&set, &signum))
            continue;
        if (signum == SIGTERM || signum == SIGINT) {
            if (++stops > 1) {
                static const char msg[] = "cinfer: second signal: exiting now\n";
                ssize_t k = write(STDERR_FILENO, msg, sizeof(msg) - 1);
                (void)k;
                _exit(1);
            }
            pthread_mutex_lock(&g_sig_mu);
            if (g_engine)
                eng_drain(g_engine); /* at once: /health/ready says 503 from now on */
            g_signum = signum;
            pthread_cond_signal(&g_sig_cv);
            pthread_mutex_unlock(&g_sig_mu);
        } else if (signum == SIGUSR1) {
            struct eng_stats st = {0};
            pthread_mutex_lock(&g_sig_mu);
            int loading = !g_engine, open = g_srv ? srv_inflight(g_srv) : 0;
            if (g_engine)
                eng_get_stats(g_engine, &st);
            pthread_mutex_unlock(&g_sig_mu);
            srv_log("SIGUSR1: %s; %d running, %d waiting, KV cache %d of %d blocks, "
                    "%d HTTP requests open",
                    loading       ? "loading"
                    : st.draining ? "draining"
                                  : "serving",
                    st.running, st.waiting, st.kv_used, st.kv_total, open);
        } else {
            srv_log("%s: ignored (cinfer has nothing to reload; SIGTERM drains)", sig_name(signum));
        }
    }
    return NULL;
}

/*
 * Blocks the signals in this thread (and so in every thread started after)
 * and starts the thread that takes them.  0, or -1 when it cannot start.
 */
static int signals_start(void)
{
    signal(SIGPIPE, SIG_IGN);
    sigset_t set;
    signal_set(&set);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL))
        return -1;
    pthread_t t;
    if (pthread_create(&t, NULL, signal_main, NULL))
        return -1;
    pthread_detach(t);
    return 0;
}

/* The API key from --api-key-file (first line), or NULL with a message. */
static char *read_key_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cinfer serve: cannot open --api-key-file %s: %s\n", path, strerror(errno));
        return NULL;
    }
    char line[1024];
    char *k = fgets(line, sizeof(line), f) ? line : NULL;
    fclose(f);
    if (k)
        k[strcspn(k, "\r\n")] = '\0';
    if (!k || !*k) {
        fprintf(stderr, "cinfer serve: --api-key-file %s is empty\n", path);
        return NULL;
    }
    return strdup(k);
}

/* The model id: the file name without its directory and .gguf. */
static char *model_id(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char *id = strdup(base);
    size_t n = id ? strlen(id) : 0;
    if (n > 5 && !strcmp(id + n - 5, ".gguf"))
        id[n - 5] = '\0';
    return id;
}

int cli_serve(int argc, char **argv)
{
    double t0 = util_now_s();
    struct srv_config cfg;
    int print = 0;
    int rc = srv_config_load(argc, argv, &cfg, &print);
    if (rc) {
        srv_config_free(&cfg);
        return rc == 1 ? 0 : rc;
    }
    if (print) {
        cJSON *o = srv_config_json(&cfg);
        char *s = o ? cJSON_Print(o) : NULL;
        cJSON_Delete(o);
        if (s)
            printf("%s\n", s);
        free(s);
        srv_config_free(&cfg);
        return s ? 0 : EXIT_FAILURE;
    }
    char err[512];
    if (eng_device_check(cfg.device, cfg.kernels, err,
                         sizeof(err))) { /* before listening: nothing to serve */
        fprintf(stderr, "cinfer serve: %s\n", err);
        srv_config_free(&cfg);
        return CLI_EXIT_BADINPUT;
    }
    char *key = NULL;
    if (*cfg.api_key_file && !(key = read_key_file(cfg.api_key_file))) {
        srv_config_free(&cfg);
        return CLI_EXIT_BADINPUT;
    }
    if (!key && *cfg.api_key)
        key = strdup(cfg.api_key);

    if (signals_start()) {
        fprintf(stderr, "cinfer serve: cannot start the signal thread\n");
        free(key);
        srv_config_free(&cfg);
        return EXIT_FAILURE;
    }

    srv_metrics_init();
    char *id = model_id(cfg.model);
    struct srv_model model = {.id = id ? id : "model",
                              .alias = *cfg.model_alias ? cfg.model_alias : NULL,
                              .created = (long)time(NULL)};
    struct srv *s = NULL;
    if ((rc = srv_start(&cfg, &model, &s, err, sizeof(err))) || srv_set_api_key(s, key)) {
        fprintf(stderr, "cinfer serve: %s\n", rc ? err : "out of memory");
        srv_stop(s);
        free(key);
        free(id);
        srv_config_free(&cfg);
        return CLI_EXIT_BADINPUT;
    }
    pthread_mutex_lock(&g_sig_mu);
    g_srv = s;
    pthread_mutex_unlock(&g_sig_mu);
    int keyed = key != NULL;
    free(key);
    srv_log("listening on http://%s%s%s:%u%s, %u connections at most on %lld threads",
            strchr(cfg.host, ':') ? "[" : "", cfg.host, strchr(cfg.host, ':') ? "]" : "",
            srv_port(s), keyed ? " (API key required)" : "", srv_max_connections(s),
            (long long)cfg.http_threads);
    struct util_cpus cpus = {.n = (int)cfg.threads};
    if (cfg.threads == 0) { /* the CPUs this container or process may really use */
        util_cpus_usable(NULL, 0, &cpus);
        srv_log("CPU threads: %d (%s)", cpus.n, cpus.why);
    }
    struct eng_config ec = {
        .device = cfg.device,
        .kernels = cfg.kernels,
        .exact_llamacpp = cfg.exact_llamacpp != 0,
        .threads = cpus.n,
        .ctx = (int)cfg.ctx,
        .kv_block = (int)cfg.kv_block,
        .kv_memory_mib = cfg.kv_memory,
        .kv_type = strcmp(cfg.kv_type, "f32") ? ENG_KV_F16 : ENG_KV_F32,
        .max_seqs = (int)cfg.max_seqs,
        .max_batch_tokens = (int)cfg.max_batch_tokens,
        .max_step_ms = cfg.max_step_ms ? (int)cfg.max_step_ms : -1,
        .max_queue = (int)cfg.max_queue,
        .max_queue_tokens = cfg.max_queue_tokens,
        .no_prefix_cache = !cfg.prefix_cache,
        .request_timeout = (double)cfg.request_timeout,
        /* half the HTTP workers at most, so slow schemas leave the others free */
        .max_grammar_compiles = cfg.http_threads > 1 ? (int)cfg.http_threads / 2 : 1,
    };
    struct engine *e = NULL;
    if ((rc = eng_create(cfg.model, &ec, &e, err, sizeof(err)))) {
        fprintf(stderr, "cinfer serve: %s: %s\n", cfg.model, err);
        pthread_mutex_lock(&g_sig_mu);
        g_srv = NULL;
        pthread_mutex_unlock(&g_sig_mu);
        srv_stop(s);
        free(id);
        srv_config_free(&cfg);
        return rc == -ENOMEM ? EXIT_FAILURE : CLI_EXIT_BADINPUT;
    }
    struct eng_info info;
    eng_get_info(e, &info);
    struct srv_chat chat;
    if ((rc = srv_chat_load(&chat, e, cfg.chat_template, err, sizeof(err)))) {
        if (*cfg.chat_template || rc == -ENOMEM) {
            fprintf(stderr, "cinfer serve: %s\n", err);
            pthread_mutex_lock(&g_sig_mu);
            g_srv = NULL;
            pthread_mutex_unlock(&g_sig_mu);
            srv_stop(s);
            eng_destroy(e);
            srv_chat_free(&chat);
            free(id);
            srv_config_free(&cfg);
            return rc == -ENOMEM ? EXIT_FAILURE : CLI_EXIT_BADINPUT;
        }
        /* the GGUF's own template is broken: say so, and use the format its markers name */
        srv_log("warning: %s; using the built-in %s format", err, tok_chat_name(info.chat));
        srv_chat_use_builtin(&chat, info.chat);
        snprintf(chat.origin, sizeof chat.origin, "built-in %s (the model's template failed)",
                 tok_chat_name(info.chat));
    }
    if (info.device_note[0])
        srv_log("%s; running on the CPU", info.device_note);
    srv_set_engine(s, e, &chat);
    pthread_mutex_lock(&g_sig_mu);
    g_engine = e;
    if (g_signum) /* it came while the model loaded */
        eng_drain(e);
    pthread_mutex_unlock(&g_sig_mu);
    srv_log("ready in %.2f s: model %s (%s), context %d, KV cache %d blocks of %d tokens, "
            "device %s (kernels %s), chat: %s",
            util_now_s() - t0, model.id, info.arch, info.n_ctx, info.kv_blocks, info.kv_block,
            info.backend, info.kernels, chat.origin);

    pthread_mutex_lock(&g_sig_mu);
    while (!g_signum)
        pthread_cond_wait(&g_sig_cv, &g_sig_mu);
    int sig = g_signum;
    pthread_mutex_unlock(&g_sig_mu);
    /* the engine refuses new work now; wait for what is in flight */
    srv_log("%s: draining (up to %lld s; a second signal exits at once)",
            sig == SIGINT ? "SIGINT" : "SIGTERM", (long long)cfg.shutdown_timeout);
    double until = util_now_s() + (double)cfg.shutdown_timeout;
    while ((!eng_idle(e) || srv_inflight(s) > 0) && util_now_s() < until)
        usleep(20000);
    if (!eng_idle(e))
        srv_log("shutdown timeout: ending the requests still open");
    srv_quiesce(s);
    eng_stop(e); /* what is left ends; its connections finish */
    pthread_mutex_lock(&g_sig_mu);
    g_srv = NULL;
    g_engine = NULL;
    pthread_mutex_unlock(&g_sig_mu);
    srv_stop(s);
    eng_destroy(e);
    srv_chat_free(&chat);
    free(id);
    srv_config_free(&cfg);
    srv_log("stopped");
    return 0;
}

/*
 * server/serve.c - `cinfer serve`: settings, listening at once (so /health
 * answers 503 while the model loads), loading the engine, then serving.
 * SIGTERM or SIGINT (caught by the engine loop) starts a drain: new work gets
 * 503 and /health/ready says 503, requests in flight finish (up to
 * --shutdown-timeout seconds; the rest are ended), then the process exits 0.
 * A second signal exits at once, with status 1.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/cli.h"
#include "server/srv.h"
#include "util/clock.h"
#include "util/quant.h"

static pthread_mutex_t g_sig_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_sig_cv = PTHREAD_COND_INITIALIZER;
static int g_signum;

/* On the engine thread: the first signal wakes main to drain; another ends it now. */
static void on_signal(int signum, int count, void *arg)
{
    (void)arg;
    if (count > 1) {
        static const char msg[] = "cinfer: second signal: exiting now\n";
        ssize_t k = write(STDERR_FILENO, msg, sizeof(msg) - 1);
        (void)k;
        _exit(1);
    }
    pthread_mutex_lock(&g_sig_mu);
    g_signum = signum;
    pthread_cond_signal(&g_sig_cv);
    pthread_mutex_unlock(&g_sig_mu);
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
    char *key = NULL;
    if (*cfg.api_key_file && !(key = read_key_file(cfg.api_key_file))) {
        srv_config_free(&cfg);
        return CLI_EXIT_BADINPUT;
    }
    if (!key && *cfg.api_key)
        key = strdup(cfg.api_key);

    signal(SIGPIPE, SIG_IGN);

    srv_metrics_init();
    char *id = model_id(cfg.model);
    struct srv_model model = {.id = id ? id : "model",
                              .alias = *cfg.model_alias ? cfg.model_alias : NULL,
                              .created = (long)time(NULL)};
    char err[512];
    struct srv *s = NULL;
    if ((rc = srv_start(&cfg, &model, &s, err, sizeof(err))) || srv_set_api_key(s, key)) {
        fprintf(stderr, "cinfer serve: %s\n", rc ? err : "out of memory");
        srv_stop(s);
        free(key);
        free(id);
        srv_config_free(&cfg);
        return CLI_EXIT_BADINPUT;
    }
    int keyed = key != NULL;
    free(key);
    srv_log("listening on http://%s%s%s:%u%s", strchr(cfg.host, ':') ? "[" : "", cfg.host,
            strchr(cfg.host, ':') ? "]" : "", srv_port(s), keyed ? " (API key required)" : "");
    struct eng_config ec = {
        .threads = (int)cfg.threads,
        .ctx = (int)cfg.ctx,
        .kv_block = (int)cfg.kv_block,
        .kv_memory_mib = cfg.kv_memory,
        .kv_type = strcmp(cfg.kv_type, "f32") ? QT_F16 : QT_F32,
        .max_seqs = (int)cfg.max_seqs,
        .max_batch_tokens = (int)cfg.max_batch_tokens,
        .max_queue = (int)cfg.max_queue,
        .max_queue_tokens = cfg.max_queue_tokens,
        .no_prefix_cache = !cfg.prefix_cache,
        .request_timeout = (double)cfg.request_timeout,
        .on_signal = on_signal,
    };
    struct engine *e = NULL;
    if ((rc = eng_create(cfg.model, &ec, &e, err, sizeof(err)))) {
        fprintf(stderr, "cinfer serve: %s: %s\n", cfg.model, err);
        srv_stop(s);
        free(id);
        srv_config_free(&cfg);
        return rc == -ENOMEM ? EXIT_FAILURE : CLI_EXIT_BADINPUT;
    }
    struct eng_info info;
    eng_get_info(e, &info);
    if (!info.chat_known)
        srv_log("warning: the model's chat template is not one cinfer knows; using chatml");
    srv_set_engine(s, e);
    srv_log("ready in %.2f s: model %s (%s), context %d, KV cache %d blocks of %d tokens, "
            "kernels %s, chat format %s",
            util_now_s() - t0, model.id, info.arch, info.n_ctx, info.kv_blocks, info.kv_block,
            info.kernels, tok_chat_name(info.chat));

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
    srv_stop(s);
    eng_destroy(e);
    free(id);
    srv_config_free(&cfg);
    srv_log("stopped");
    return 0;
}

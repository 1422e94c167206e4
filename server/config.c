/*
 * server/config.c - the settings of `cinfer serve`, from four places: the
 * defaults, a JSON config file, CINFER_* environment variables and flags,
 * each overriding the one before.  One table names every setting once; the
 * flag (--kv-memory), the variable (CINFER_KV_MEMORY) and the file key
 * (kv_memory) all come from it.  configs/default.json lists the same table.
 * An unknown key or a bad value anywhere is an error naming where it was.
 */
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/srv.h"

enum kind { K_STR, K_INT, K_BOOL };

#define STR(x) #x
#define XSTR(x) STR(x) /* a macro's value as text */

struct setting {
    const char *name;
    enum kind kind;
    size_t off;
    int64_t lo, hi;  /* K_INT range */
    const char *def; /* default, as text */
    const char *arg; /* for --help */
    const char *help;
    const char *choices; /* K_STR: "a|b" allowed values, or NULL for any */
};

#define S(f) offsetof(struct srv_config, f)
static const struct setting k_settings[] = {
    {"model", K_STR, S(model), 0, 0, "", "FILE", "GGUF model to serve (required)", NULL},
    {"host", K_STR, S(host), 0, 0, "127.0.0.1", "ADDR", "address to listen on", NULL},
    {"port", K_INT, S(port), 0, 65535, "8080", "N", "TCP port (0: any free port)", NULL},
    {"api_key", K_STR, S(api_key), 0, 0, "", "KEY", "require 'Authorization: Bearer KEY'", NULL},
    {"api_key_file", K_STR, S(api_key_file), 0, 0, "", "FILE", "read the API key from FILE", NULL},
    {"allowed_origins", K_STR, S(allowed_origins), 0, 0, "*", "LIST",
     "CORS: the origins whose web pages may call the API, * or a comma-separated list of "
     "scheme://host[:port] ('': none)",
     NULL},
    {"model_alias", K_STR, S(model_alias), 0, 0, "", "NAME", "another name clients may use", NULL},
    {"chat_template", K_STR, S(chat_template), 0, 0, "", "FILE",
     "a Jinja chat template to use instead of the model's", NULL},
    {"device", K_STR, S(device), 0, 0, "auto", "NAME",
     "backend: auto (a PPU when built in and present, else the CPU), cpu or ppu", "auto|cpu|ppu"},
    {"kernels", K_STR, S(kernels), 0, 0, "auto", "NAME",
     "CPU inner loops: auto (the widest this CPU has), scalar, avx2, avx512, avxvnni or "
     "avx512vnni; same results",
     "auto|scalar|avx2|avx512|avxvnni|avx512vnni"},
    {"exact_llamacpp", K_BOOL, S(exact_llamacpp), 0, 1, "false", "",
     "CPU: follow llama.cpp's AVX2 arithmetic step for step, to check results against it (slower)",
     NULL},
    {"threads", K_INT, S(threads), 0, 1024, "0", "N",
     "CPU threads (0: the CPUs this process may use, cgroup quota included)", NULL},
    {"ctx", K_INT, S(ctx), 0, 1 << 24, "0", "N", "context per sequence (0: the model's)", NULL},
    {"kv_memory", K_INT, S(kv_memory), 0, 1 << 24, "0", "MIB",
     "KV cache size (0: 4 full contexts, at most half the free RAM)", NULL},
    {"kv_block", K_INT, S(kv_block), 1, 4096, XSTR(ENG_DEFAULT_KV_BLOCK), "N",
     "tokens per KV block", NULL},
    {"kv_type", K_STR, S(kv_type), 0, 0, "f16", "TYPE", "KV cache storage: f16 or f32", "f16|f32"},
    {"max_body", K_INT, S(max_body), 1024, (int64_t)1 << 32, "8388608", "BYTES",
     "largest request body (413 past it)", NULL},
    {"max_body_total", K_INT, S(max_body_total), 1024, (int64_t)1 << 40, "67108864", "BYTES",
     "request body bytes held at once, all connections together (503 past it)", NULL},
    {"max_connections", K_INT, S(max_connections), 1, 1 << 20, "20000", "N",
     "open connections at most (new ones are refused past it)", NULL},
    {"max_connections_per_ip", K_INT, S(max_connections_per_ip), 0, 1 << 20, "0", "N",
     "open connections from one client address (0: no limit)", NULL},
    {"idle_timeout", K_INT, S(idle_timeout), 1, 1 << 20, "15", "SECONDS",
     "close a connection idle this long with no request in flight", NULL},
    {"http_threads", K_INT, S(http_threads), 1, 256, "4", "N",
     "threads serving connections (an epoll loop each)", NULL},
    {"max_seqs", K_INT, S(max_seqs), 1, 4096, "64", "N", "sequences in one forward pass", NULL},
    {"max_batch_tokens", K_INT, S(max_batch_tokens), 1, 1 << 20, "512", "N",
     "tokens in one forward pass", NULL},
    {"max_step_ms", K_INT, S(max_step_ms), 0, 1 << 20, "100", "MS",
     "a forward pass's estimated time at most: prefill chunks shrink to fit (0: no bound)", NULL},
    {"max_queue", K_INT, S(max_queue), 1, 1 << 20, "256", "N",
     "sequences waiting at most, each choice of each prompt one (429 past it)", NULL},
    {"max_queue_tokens", K_INT, S(max_queue_tokens), 0, (int64_t)1 << 40, "0", "N",
     "prompt tokens waiting at most (0: 64 full contexts)", NULL},
    {"prefix_cache", K_BOOL, S(prefix_cache), 0, 1, "true", "",
     "reuse cached prompt blocks (--no-prefix-cache: off)", NULL},
    {"request_timeout", K_INT, S(request_timeout), 0, 1 << 30, "0", "SECONDS",
     "end a request this long after it arrived (0: never)", NULL},
    {"shutdown_timeout", K_INT, S(shutdown_timeout), 0, 1 << 20, "30", "SECONDS",
     "on SIGTERM, how long open requests may take to finish", NULL},
    {"metrics_compat", K_STR, S(metrics_compat), 0, 0, "none", "MODE",
     "GET /metrics also under vLLM's own names (vllm:...): vllm or none", "vllm|none"},
    {"embeddings", K_BOOL, S(embeddings), 0, 1, "false", "",
     "serve POST /v1/embeddings (--no-embeddings: a 404 there)", NULL},
    {"pooling", K_STR, S(pooling), 0, 0, "auto", "MODE",
     "embeddings: auto (the model's pooling type, else mean), mean, cls or last",
     "auto|mean|cls|last"},
    {"log_format", K_STR, S(log_format), 0, 0, "text", "FMT", "access log: text or json",
     "text|json"},
};
#define N_SETTINGS (sizeof(k_settings) / sizeof(k_settings[0]))

static const char *const k_serve_help_head =
    "usage: cinfer serve -m MODEL [options]\n"
    "\n"
    "Serves the OpenAI HTTP API (/v1/chat/completions, /v1/completions,\n"
    "/v1/responses, /v1/embeddings, /v1/models, /tokenize, /detokenize,\n"
    "/apply-template, /health, /metrics, /version).\n"
    "Every option is also a CINFER_<NAME> environment variable and a key of a\n"
    "JSON config file (--config); flags > environment > file > defaults.\n"
    "\n";

static void flag_name(const struct setting *s, char *out, size_t cap)
{
    snprintf(out, cap, "%s", s->name);
    for (char *p = out; *p; p++)
        if (*p == '_')
            *p = '-';
}

static void env_name(const struct setting *s, char *out, size_t cap)
{
    snprintf(out, cap, "CINFER_%s", s->name);
    for (char *p = out; *p; p++)
        *p = (char)toupper((unsigned char)*p);
}

static void print_help(void)
{
    fputs(k_serve_help_head, stdout);
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const struct setting *s = &k_settings[i];
        char f[64], left[96];
        flag_name(s, f, sizeof(f));
        if (s->kind == K_BOOL)
            snprintf(left, sizeof(left), "    --[no-]%s", f);
        else
            snprintf(left, sizeof(left), "%s--%s %s", strcmp(s->name, "model") ? "    " : "-m, ", f,
                     s->arg);
        int show = *s->def && strcmp(s->def, "0"); /* "0: ..." helps say what 0 means */
        printf("  %-28s %s%s%s%s\n", left, s->help, show ? " (default " : "", show ? s->def : "",
               show ? ")" : "");
    }
    printf("  %-28s %s\n", "    --config FILE", "JSON config file (keys as above, with _)");
    printf("  %-28s %s\n", "    --print-config", "print the merged settings as JSON and exit");
    printf("  %-28s %s\n", "-h, --help", "this help");
    printf("  %-28s %s\n", "    --version", "the version");
}

static int is_name_char(char ch)
{
    return isalnum((unsigned char)ch) || ch == '-' || ch == '.';
}

/* Whether p[0..n) is an origin: scheme://host[:port], host a name or an [IPv6] literal. */
static int is_origin(const char *p, size_t n)
{
    size_t i = 0;
    if (!n || !isalpha((unsigned char)p[0]))
        return 0;
    while (i < n && (is_name_char(p[i]) || p[i] == '+'))
        i++;
    if (n - i < 3 || strncmp(p + i, "://", 3))
        return 0;
    size_t h = i += 3;
    if (i < n && p[i] == '[') {
        while (++i < n && (isxdigit((unsigned char)p[i]) || p[i] == ':' || p[i] == '.'))
            ;
        if (i >= n || p[i] != ']' || i == h + 1)
            return 0;
        i++;
    } else {
        while (i < n && is_name_char(p[i]))
            i++;
        if (i == h)
            return 0;
    }
    if (i == n)
        return 1;
    if (p[i] != ':' || n - i < 2 || n - i > 6)
        return 0;
    long port = 0;
    for (size_t k = i + 1; k < n; k++) {
        if (!isdigit((unsigned char)p[k]))
            return 0;
        port = port * 10 + (p[k] - '0');
    }
    return port <= 65535;
}

const char *srv_list_item(const char *p, const char **a, const char **b)
{
    size_t len = strcspn(p, ",");
    *a = p;
    *b = p + len;
    while (*a < *b && **a == ' ')
        (*a)++;
    while (*b > *a && (*b)[-1] == ' ')
        (*b)--;
    return p + len;
}

int srv_origins_check(const char *v, char *msg, size_t cap)
{
    int n = 0, star = 0;
    if (!v[strspn(v, " ")])
        return 0; /* no origin: CORS off */
    for (const char *p = v;; p++) {
        const char *a, *b;
        p = srv_list_item(p, &a, &b);
        if (b - a == 1 && *a == '*') {
            star = 1;
        } else if (!is_origin(a, (size_t)(b - a))) {
            int k = b - a > 80 ? 80 : (int)(b - a);
            snprintf(msg, cap,
                     "* or origins scheme://host[:port] separated by commas ('%.*s' is "
                     "not one)",
                     k, a);
            return -1;
        }
        n++;
        if (!*p)
            break;
    }
    if (star && n > 1) {
        snprintf(msg, cap, "* alone or a list of origins without *");
        return -1;
    }
    return 0;
}

/* Sets one setting from text; `where` names the source for the error. */
static int set_value(struct srv_config *cfg, const struct setting *s, const char *v,
                     const char *where)
{
    char *base = (char *)cfg;
    if (s->kind == K_BOOL) {
        int v1 = !strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on");
        int v0 = !strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off");
        if (!v1 && !v0) {
            fprintf(stderr, "cinfer serve: %s must be true or false, not '%s'\n", where, v);
            return -1;
        }
        *(int64_t *)(void *)(base + s->off) = v1;
        return 0;
    }
    if (s->kind == K_INT) {
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (errno || end == v || *end || x < s->lo || x > s->hi) {
            fprintf(stderr, "cinfer serve: %s must be a whole number from %lld to %lld, not '%s'\n",
                    where, (long long)s->lo, (long long)s->hi, v);
            return -1;
        }
        *(int64_t *)(void *)(base + s->off) = x;
        return 0;
    }
    if (s->choices) {
        size_t n = strlen(v);
        const char *c = s->choices;
        int ok = 0;
        while (*c && !ok) {
            const char *bar = strchr(c, '|');
            size_t len = bar ? (size_t)(bar - c) : strlen(c);
            ok = len == n && !strncmp(c, v, n);
            c += len + (bar ? 1 : 0);
        }
        if (!ok) {
            fprintf(stderr, "cinfer serve: %s must be one of %s, not '%s'\n", where, s->choices, v);
            return -1;
        }
    }
    char msg[160]; /* the one string with a syntax of its own */
    if (!strcmp(s->name, "allowed_origins") && srv_origins_check(v, msg, sizeof(msg))) {
        fprintf(stderr, "cinfer serve: %s must be %s, not '%.200s'\n", where, msg, v);
        return -1;
    }
    char **slot = (char **)(void *)(base + s->off);
    char *dup = strdup(v);
    if (!dup) {
        fprintf(stderr, "cinfer serve: out of memory\n");
        return -1;
    }
    free(*slot);
    *slot = dup;
    return 0;
}

static int load_file(struct srv_config *cfg, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cinfer serve: cannot open config file %s: %s\n", path, strerror(errno));
        return -1;
    }
    struct buf b = {0};
    char chunk[4096];
    size_t k;
    int rc = 0;
    while ((k = fread(chunk, 1, sizeof(chunk), f)) > 0 && !rc)
        if (buf_append(&b, chunk, k) || b.n > (1u << 20))
            rc = -1;
    fclose(f);
    if (rc) {
        fprintf(stderr, "cinfer serve: config file %s is too large\n", path);
        free(b.p);
        return -1;
    }
    cJSON *root = cJSON_ParseWithLength(b.p ? b.p : "", b.n);
    free(b.p);
    if (!cJSON_IsObject(root)) {
        fprintf(stderr, "cinfer serve: config file %s is not a JSON object\n", path);
        cJSON_Delete(root);
        return -1;
    }
    for (cJSON *it = root->child; it && !rc; it = it->next) {
        const struct setting *s = NULL;
        for (size_t i = 0; i < N_SETTINGS && !s; i++)
            if (!strcmp(k_settings[i].name, it->string))
                s = &k_settings[i];
        char where[256];
        snprintf(where, sizeof(where), "key \"%s\" in %s", it->string, path);
        if (!s) {
            fprintf(stderr, "cinfer serve: unknown %s\n", where);
            rc = -1;
        } else if (s->kind == K_INT && cJSON_IsNumber(it)) {
            char num[64];
            double d = it->valuedouble;
            if (d != (double)(long long)d) {
                fprintf(stderr, "cinfer serve: %s must be a whole number\n", where);
                rc = -1;
            } else {
                snprintf(num, sizeof(num), "%lld", (long long)d);
                rc = set_value(cfg, s, num, where);
            }
        } else if (s->kind == K_STR && cJSON_IsString(it)) {
            rc = set_value(cfg, s, it->valuestring, where);
        } else if (s->kind == K_BOOL && cJSON_IsBool(it)) {
            rc = set_value(cfg, s, cJSON_IsTrue(it) ? "true" : "false", where);
        } else {
            fprintf(stderr, "cinfer serve: %s must be a %s\n", where,
                    s->kind == K_INT    ? "number"
                    : s->kind == K_BOOL ? "boolean"
                                        : "string");
            rc = -1;
        }
    }
    cJSON_Delete(root);
    return rc;
}

cJSON *srv_config_json(const struct srv_config *cfg)
{
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; o && i < N_SETTINGS; i++) {
        const struct setting *s = &k_settings[i];
        const char *base = (const char *)cfg;
        if (s->kind == K_INT)
            cJSON_AddNumberToObject(o, s->name,
                                    (double)*(const int64_t *)(const void *)(base + s->off));
        else if (s->kind == K_BOOL)
            cJSON_AddBoolToObject(o, s->name, *(const int64_t *)(const void *)(base + s->off) != 0);
        else if (!strcmp(s->name, "api_key") && **(char *const *)(const void *)(base + s->off))
            cJSON_AddStringToObject(o, s->name, "(set)"); /* never echo the secret */
        else
            cJSON_AddStringToObject(o, s->name, *(char *const *)(const void *)(base + s->off));
    }
    return o;
}

void srv_config_free(struct srv_config *cfg)
{
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (k_settings[i].kind == K_STR)
            free(*(char **)(void *)((char *)cfg + k_settings[i].off));
    memset(cfg, 0, sizeof(*cfg));
}

int srv_usage(const char *msg)
{
    fprintf(stderr, "cinfer serve: %s (try 'cinfer serve --help')\n", msg);
    return SRV_EXIT_BADINPUT;
}

int srv_config_load(int argc, char **argv, struct srv_config *cfg, int *print_config)
{
    memset(cfg, 0, sizeof(*cfg));
    *print_config = 0;
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (set_value(cfg, &k_settings[i], k_settings[i].def, k_settings[i].name))
            return SRV_EXIT_BADINPUT;
    /* first pass over the flags: help, version and the config file */
    const char *file = getenv("CINFER_CONFIG");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            print_help();
            return 1;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("cinfer %s\n", CINFER_VERSION);
            return 1;
        }
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc)
                return srv_usage("--config needs a file");
            file = argv[++i];
        } else if (!strncmp(argv[i], "--config=", 9)) {
            file = argv[i] + 9;
        }
    }
    if (file && *file && load_file(cfg, file))
        return SRV_EXIT_BADINPUT;
    for (size_t i = 0; i < N_SETTINGS; i++) {
        char env[64];
        env_name(&k_settings[i], env, sizeof(env));
        const char *v = getenv(env);
        if (v && set_value(cfg, &k_settings[i], v, env))
            return SRV_EXIT_BADINPUT;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--config")) {
            i++;
            continue;
        }
        if (!strncmp(a, "--config=", 9))
            continue;
        if (!strcmp(a, "--print-config")) {
            *print_config = 1;
            continue;
        }
        const struct setting *s = NULL;
        const char *val = NULL;
        if (!strcmp(a, "-m")) {
            s = &k_settings[0];
        } else if (!strncmp(a, "--", 2)) {
            const char *eq = strchr(a, '=');
            size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            for (size_t k = 0; k < N_SETTINGS && !s; k++) {
                char f[64];
                flag_name(&k_settings[k], f, sizeof(f));
                if (strlen(f) == len && !strncmp(f, a + 2, len))
                    s = &k_settings[k];
            }
            if (eq)
                val = eq + 1;
            for (size_t k = 0; k < N_SETTINGS && !s && !eq; k++) { /* --no-prefix-cache */
                char f[64];
                flag_name(&k_settings[k], f, sizeof(f));
                if (k_settings[k].kind == K_BOOL && !strncmp(a + 2, "no-", 3) &&
                    !strcmp(a + 5, f)) {
                    s = &k_settings[k];
                    val = "false";
                }
            }
            if (s && s->kind == K_BOOL && !val)
                val = "true";
        }
        if (!s) {
            char msg[160];
            snprintf(msg, sizeof(msg), "unknown option '%.100s'", a);
            return srv_usage(msg);
        }
        if (!val) {
            if (i + 1 >= argc) {
                char msg[160];
                snprintf(msg, sizeof(msg), "%.100s needs a value", a);
                return srv_usage(msg);
            }
            val = argv[++i];
        }
        char where[128];
        snprintf(where, sizeof(where), "%.100s", a);
        char *eq = strchr(where, '=');
        if (eq)
            *eq = '\0';
        if (set_value(cfg, s, val, where))
            return SRV_EXIT_BADINPUT;
    }
    if (!*cfg->model && !*print_config)
        return srv_usage("-m MODEL is required (or CINFER_MODEL, or \"model\" in --config)");
    return 0;
}

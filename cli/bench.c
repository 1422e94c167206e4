/*
 * cli/bench.c - `cinfer bench`: prompt and generation speed, like
 * llama-bench.  It runs the model directly (no scheduler) so that each
 * measurement is one shape: a pp prompt in one pass, or tg decode steps of
 * `batch` sequences.  Sequences get contiguous KV blocks of their own.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli/cli.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "util/buf.h"
#include "util/clock.h"
#include "util/cpus.h"
#include "util/quant.h"

#define BLOCK ENG_DEFAULT_KV_BLOCK

struct loaded {
    struct gguf_file *g;
    struct dev dev;
    struct model *m;
};

static void unload(struct loaded *l)
{
    model_free(l->m);
    if (l->dev.ops)
        dev_destroy(&l->dev);
    gguf_close(l->g);
}

/* Opens the model; prints the error and returns the exit status on failure. */
static int load(const char *cmd, const char *path, const char *device, const char *kernels,
                int threads, struct loaded *l)
{
    char err[512];
    memset(l, 0, sizeof(*l));
    /* the backend first: a device the build or machine lacks is said before any loading */
    struct dev_config cfg = {.threads = threads, .kernels = kernels};
    int rc = dev_create(device, &cfg, &l->dev, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "cinfer %s: %s\n", cmd, err);
        return rc == -ENOMEM ? EXIT_FAILURE : CLI_EXIT_BADINPUT;
    }
    rc = gguf_open(path, &l->g, err, sizeof(err));
    if (!rc)
        rc = model_load(l->g, &l->dev, &l->m, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "cinfer %s: %s: %s\n", cmd, path, err);
        unload(l);
        return rc == -ENOMEM ? EXIT_FAILURE : CLI_EXIT_BADINPUT;
    }
    return 0;
}

/* ---- bench ---------------------------------------------------------------- */

static const char *const k_bench_help =
    "usage: cinfer bench -m MODEL [options]\n"
    "\n"
    "Measures like llama-bench: ppP = one prompt of P random tokens in one pass;\n"
    "tgN = N single-token decode steps from an empty cache (with --batch B, B\n"
    "sequences decode together and tokens/s is the aggregate).  With -d D, each\n"
    "sequence first gets D random tokens, untimed (\"tg128 @ d128\").  The KV cache\n"
    "is cleared before each repetition; one warm-up run is not counted.\n"
    "\n"
    "  -m, --model FILE   GGUF model (required)\n"
    "  -p N               prompt tokens (default 512; 0 skips pp)\n"
    "  -n N               generated tokens (default 128; 0 skips tg)\n"
    "  -r N               repetitions (default 5)\n"
    "  -d N               tokens already in the cache (default 0)\n"
    "      --batch B      sequences decoded together in tg (default 1)\n"
    "  -t, --threads N    worker threads (default: the CPUs this process may use)\n"
    "      --device NAME  backend: auto (default, or CINFER_DEVICE), cpu or ppu\n"
    "      --kernels NAME CPU inner loops: auto (default), scalar, avx2, avx512,\n"
    "                     avxvnni or avx512vnni (same results)\n"
    "      --json         one JSON object per line per test\n"
    "      --grammar FILE constrained decoding instead (repeatable): compile time and\n"
    "                     mask time per token for FILE's schema over its documents\n"
    "                     ({\"schema\": ..., \"docs\": [...]}; or \"kind\" and \"source\"),\n"
    "                     -r rounds; the model's weights are not loaded\n"
    "  -h, --help         this help\n"
    "      --version      the version\n";

struct bench_ctx {
    struct loaded l;
    struct model_kv kv;
    int32_t per_seq; /* blocks of each sequence: sequence i has 1 + i * per_seq ... */
    int32_t *tables; /* [batch][per_seq] */
    float *logits;
};

static void bench_tokens(int32_t *ids, int n, int V, uint64_t *rng)
{
    for (int i = 0; i < n; i++) {
        *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((*rng >> 33) % (uint64_t)V);
    }
}

/* One timed run: pp (batch = 0) or tg with `batch` sequences, each after
 * `depth` untimed tokens; returns seconds or < 0. */
static double bench_once(struct bench_ctx *c, int pp, int tg, int batch, int depth, uint64_t *rng)
{
    int V = c->l.m->hp.n_vocab, n_seq = pp ? 1 : batch, n = pp ? pp : batch;
    int nbuf = n > depth ? n : depth;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)nbuf);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)nbuf);
    int32_t *seq = calloc((size_t)nbuf, sizeof(int32_t));
    uint8_t *want = calloc((size_t)nbuf, 1);
    const int32_t **tabs = malloc(sizeof(*tabs) * (size_t)n_seq);
    int32_t *nbl = malloc(sizeof(int32_t) * (size_t)n_seq);
    double t = -1.0;
    int rc = !ids || !pos || !seq || !want || !tabs || !nbl ? -ENOMEM : 0;
    for (int i = 0; !rc && i < n_seq; i++) {
        tabs[i] = c->tables + (size_t)i * c->per_seq;
        nbl[i] = c->per_seq;
    }
    for (int i = 0; i < n_seq && depth > 0 && !rc; i++) { /* the context, one prompt each */
        bench_tokens(ids, depth, V, rng);
        for (int p = 0; p < depth; p++) {
            pos[p] = p;
            want[p] = p == depth - 1;
        }
        struct model_batch b = {depth, ids, pos, seq, want, NULL, 1, &tabs[i], &nbl[i], NULL, NULL};
        rc = model_forward(c->l.m, &c->kv, &b, c->logits);
    }
    int steps = pp ? 1 : tg;
    double t0 = util_now_s();
    for (int s = 0; s < steps && !rc; s++) {
        bench_tokens(ids, n, V, rng);
        if (pp) {
            for (int i = 0; i < pp; i++) { /* a prompt chunk, as the engine computes one */
                pos[i] = depth + i;
                seq[i] = 0;
                want[i] = i == pp - 1;
            }
        } else {
            for (int i = 0; i < n_seq; i++) {
                pos[i] = depth + s;
                seq[i] = i;
                want[i] = 1;
            }
        }
        struct model_batch b = {n, ids, pos, seq, want, NULL, n_seq, tabs, nbl, NULL, NULL};
        rc = model_forward(c->l.m, &c->kv, &b, c->logits);
    }
    if (!rc)
        t = util_now_s() - t0;
    free(ids);
    free(pos);
    free(seq);
    free(want);
    free(tabs);
    free(nbl);
    return t;
}

static void bench_report(const char *name, const double *tps, int r, int threads, int json)
{
    double mean = 0.0, var = 0.0;
    for (int i = 0; i < r; i++)
        mean += tps[i] / r;
    for (int i = 0; i < r; i++)
        var += (tps[i] - mean) * (tps[i] - mean) / (r > 1 ? r - 1 : 1);
    if (json)
        printf("{\"test\": \"%s\", \"tokens_per_s\": %.3f, \"stddev\": %.3f, \"threads\": %d}\n",
               name, mean, sqrt(var), threads);
    else
        printf("| %-18s | %10.2f ± %-8.2f | %7d |\n", name, mean, sqrt(var), threads);
    fflush(stdout);
}

/* ---- bench --grammar ---- */

static int bench_grammars(const char *model, const char *const *files, int n, int rounds, int json)
{
    char err[512];
    struct eng_vocab *ev;
    if (eng_vocab_open(model, NULL, &ev, err, sizeof(err))) {
        fprintf(stderr, "cinfer bench: %s: %s\n", model, err);
        return CLI_EXIT_BADINPUT;
    }
    if (!json)
        printf("| grammar | vocab | rules | positions | compile ms | tables MiB | tokens | "
               "first doc mean / p99 / max us | all rounds mean / p50 / p99 / max us |\n"
               "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |\n");
    int status = 0;
    for (int i = 0; i < n && !status; i++) {
        size_t len;
        char *text = cli_read_file(files[i], &len);
        cJSON *doc = text ? cJSON_ParseWithLength(text, len) : NULL;
        free(text);
        const cJSON *schema = cJSON_GetObjectItemCaseSensitive(doc, "schema");
        const cJSON *source = cJSON_GetObjectItemCaseSensitive(doc, "source");
        const cJSON *kind = cJSON_GetObjectItemCaseSensitive(doc, "kind");
        const cJSON *docs = cJSON_GetObjectItemCaseSensitive(doc, "docs");
        int nd = cJSON_IsArray(docs) ? cJSON_GetArraySize(docs) : 0;
        const char **dv = nd ? calloc((size_t)nd, sizeof(*dv)) : NULL;
        int k = 0;
        for (const cJSON *d = docs ? docs->child : NULL; dv && d; d = d->next)
            if (cJSON_IsString(d))
                dv[k++] = d->valuestring;
        char *src = schema                   ? cJSON_PrintUnformatted(schema)
                    : cJSON_IsString(source) ? strdup(source->valuestring)
                                             : NULL;
        if (!doc || !src || !k || k != nd) {
            fprintf(stderr,
                    "cinfer bench: %s: needs a JSON object with \"schema\" (or \"kind\" and "
                    "\"source\") and \"docs\", an array of strings\n",
                    files[i]);
            status = CLI_EXIT_BADINPUT;
        } else {
            struct eng_gbench r;
            const char *kd = cJSON_IsString(kind) ? kind->valuestring : "json_schema";
            int rc =
                eng_grammar_bench(ev, kd, src, strlen(src), dv, k, rounds, &r, err, sizeof(err));
            const char *name = strrchr(files[i], '/') ? strrchr(files[i], '/') + 1 : files[i];
            if (rc) {
                fprintf(stderr, "cinfer bench: %s: %s\n", files[i], err);
                status = rc == -ENOMEM ? EXIT_FAILURE : CLI_EXIT_BADINPUT;
            } else if (json)
                printf("{\"grammar\":\"%s\",\"n_vocab\":%d,\"rules\":%d,\"positions\":%d,"
                       "\"compile_ms\":%.1f,\"tables_ms\":%.1f,\"table_mib\":%.2f,\"tokens\":%d,"
                       "\"first_mean_us\":%.2f,\"first_p99_us\":%.2f,\"first_max_us\":%.2f,"
                       "\"mean_us\":%.2f,\"p50_us\":%.2f,\"p99_us\":%.2f,\"max_us\":%.2f}\n",
                       name, r.n_vocab, r.rules, r.positions, r.compile_ms, r.tables_ms,
                       r.table_mib, r.all.n, r.first_doc.mean_us, r.first_doc.p99_us,
                       r.first_doc.max_us, r.all.mean_us, r.all.p50_us, r.all.p99_us, r.all.max_us);
            else
                printf(
                    "| %s | %d | %d | %d | %.1f | %.2f | %d | %.1f / %.1f / %.1f | %.1f / %.1f / "
                    "%.1f / %.1f |\n",
                    name, r.n_vocab, r.rules, r.positions, r.compile_ms, r.table_mib, r.all.n,
                    r.first_doc.mean_us, r.first_doc.p99_us, r.first_doc.max_us, r.all.mean_us,
                    r.all.p50_us, r.all.p99_us, r.all.max_us);
        }
        free(src);
        free(dv);
        cJSON_Delete(doc);
    }
    eng_vocab_close(ev);
    return status;
}

int cli_bench(int argc, char **argv)
{
    enum { O_BATCH = 256, O_JSON, O_DEV, O_KERN, O_VERSION, O_GRAMMAR };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},
        {"batch", required_argument, 0, O_BATCH},
        {"device", required_argument, 0, O_DEV},
        {"threads", required_argument, 0, 't'},
        {"json", no_argument, 0, O_JSON},
        {"help", no_argument, 0, 'h'},
        {"kernels", required_argument, 0, O_KERN},
        {"version", no_argument, 0, O_VERSION},
        {"grammar", required_argument, 0, O_GRAMMAR},
        {0, 0, 0, 0},
    };
    const char *grammars[64];
    int n_grammars = 0, reps_given = 0;
    const char *model = NULL, *device = cli_default_device(), *kernels = NULL;
    int pp = 512, tg = 128, reps = 5, batch = 1, threads = 0, json = 0, depth = 0, c;
    double v;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":m:p:n:r:d:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'p':
        case 'n':
            if (cli_parse_num(optarg, 0, 1 << 20, &v))
                return cli_usage("bench", "-p and -n take a number of tokens");
            *(c == 'p' ? &pp : &tg) = (int)v;
            break;
        case 'd':
            if (cli_parse_num(optarg, 0, 1 << 20, &v))
                return cli_usage("bench", "-d takes a number of tokens");
            depth = (int)v;
            break;
        case 'r':
            if (cli_parse_num(optarg, 1, 1000, &v))
                return cli_usage("bench", "-r takes a number from 1 to 1000");
            reps = (int)v;
            reps_given = 1;
            break;
        case O_GRAMMAR:
            if (n_grammars == 64)
                return cli_usage("bench", "at most 64 --grammar files");
            grammars[n_grammars++] = optarg;
            break;
        case O_BATCH:
            if (cli_parse_num(optarg, 1, 4096, &v))
                return cli_usage("bench", "--batch takes a number from 1 to 4096");
            batch = (int)v;
            break;
        case 't':
            if (cli_parse_num(optarg, 1, 1024, &v))
                return cli_usage("bench", "--threads takes a number from 1 to 1024");
            threads = (int)v;
            break;
        case O_JSON:
            json = 1;
            break;
        case O_DEV:
            device = optarg;
            break;
        case O_KERN:
            kernels = optarg;
            break;
        case 'h':
            fputs(k_bench_help, stdout);
            return 0;
        case O_VERSION:
            cli_print_version();
            return 0;
        case ':':
            return cli_usage("bench", "an option is missing its value");
        default:
            return cli_usage("bench", "unknown option");
        }
    }
    if (!model)
        return cli_usage("bench", "-m MODEL is required");
    if (n_grammars)
        return bench_grammars(model, grammars, n_grammars, reps_given ? reps : 3, json);
    struct bench_ctx b = {0};
    if (threads <= 0) { /* found once: the backend runs it, the table reports it */
        struct util_cpus cpus;
        util_cpus_usable(NULL, 0, &cpus);
        threads = cpus.n;
    }
    int rc = load("bench", model, device, kernels, threads, &b.l);
    if (rc)
        return rc;
    int tokens = pp > tg * batch ? pp : tg * batch;
    int per_seq = depth + (pp > tg ? pp : tg);
    b.per_seq = (per_seq + BLOCK - 1) / BLOCK;
    int32_t n_blocks = batch * b.per_seq + 1; /* block 0 is the null block */
    int rows = batch > 1 ? batch : 1;
    b.logits = malloc(sizeof(float) * (size_t)b.l.m->hp.n_vocab * (size_t)rows);
    b.tables = malloc(sizeof(int32_t) * (size_t)(n_blocks - 1));
    rc = b.logits && b.tables ? 0 : -ENOMEM;
    for (int32_t i = 0; !rc && i < n_blocks - 1; i++)
        b.tables[i] = i + 1;
    rc = rc ? rc : model_kv_init(b.l.m, &b.kv, n_blocks, BLOCK, QT_F16);
    double *tps = malloc(sizeof(double) * (size_t)reps);
    if (rc || !tps || tokens <= 0) {
        fprintf(stderr, "cinfer bench: %s\n",
                tokens <= 0 ? "nothing to measure (-p 0 -n 0)" : "out of memory for the KV cache");
        rc = tokens <= 0 ? CLI_EXIT_BADINPUT : EXIT_FAILURE;
        goto done;
    }
    if (!json)
        printf("| %-18s | %21s | %7s |\n| ------------------ | --------------------- | ------- |\n",
               "test", "tokens/s", "threads");
    uint64_t rng = 1234;
    char name[64];
    for (int test = 0; test < 2 && !rc; test++) {
        int p = test == 0 ? pp : 0, n = test == 1 ? tg : 0;
        if ((test == 0 && !pp) || (test == 1 && !tg))
            continue;
        int bsz = test == 1 ? batch : 1;
        if (bench_once(&b, p, n, bsz, depth, &rng) < 0) { /* warm-up */
            rc = EXIT_FAILURE;
            break;
        }
        for (int i = 0; i < reps && !rc; i++) {
            double t = bench_once(&b, p, n, bsz, depth, &rng);
            if (t <= 0)
                rc = EXIT_FAILURE;
            else
                tps[i] = (test == 0 ? pp : (double)tg * bsz) / t;
        }
        int len;
        if (test == 0)
            len = snprintf(name, sizeof(name), "pp%d", pp);
        else if (batch > 1)
            len = snprintf(name, sizeof(name), "tg%d@b%d", tg, batch);
        else
            len = snprintf(name, sizeof(name), "tg%d", tg);
        if (depth > 0)
            snprintf(name + len, sizeof(name) - (size_t)len, " @ d%d", depth);
        if (!rc)
            bench_report(name, tps, reps, threads, json);
    }
    if (rc)
        fprintf(stderr, "cinfer bench: a forward pass failed\n");
    if (!json)
        fprintf(stderr, "cinfer bench: kernels %s; weights read per token %.1f MB\n",
                dev_kernels_name(&b.l.dev), (double)model_weight_bytes(b.l.m) / 1e6);
done:
    free(tps);
    free(b.logits);
    free(b.tables);
    if (b.kv.layers)
        model_kv_free(b.l.m, &b.kv);
    unload(&b.l);
    return rc;
}

/*
 * server/cli_run.c - `cinfer run` (generate text from a prompt) and
 * `cinfer bench` (prompt and generation speed, like llama-bench), both
 * driving the model directly, one process, no server.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "kv-cache/kv.h"
#include "server/cli.h"
#include "util/clock.h"
#include "util/quant.h"

#define BLOCK 16
#define PREFILL_CHUNK 512

struct loaded {
    struct gguf_file *g;
    struct tok *tok;
    struct dev dev;
    struct model *m;
};

static void unload(struct loaded *l)
{
    model_free(l->m);
    if (l->dev.ops)
        dev_destroy(&l->dev);
    tok_destroy(l->tok);
    gguf_close(l->g);
}

/* Opens the model; prints the error and returns the exit status on failure. */
static int load(const char *cmd, const char *path, const char *device, int threads,
                struct loaded *l)
{
    char err[512];
    memset(l, 0, sizeof(*l));
    /* the backend first: a device the build or machine lacks is said before any loading */
    struct dev_config cfg = {.threads = threads};
    int rc = dev_create(device, &cfg, &l->dev, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "cinfer %s: %s\n", cmd, err);
        return rc == -ENOMEM ? EXIT_FAILURE : CLI_EXIT_BADINPUT;
    }
    rc = gguf_open(path, &l->g, err, sizeof(err));
    if (!rc)
        rc = eng_tokenizer_load(l->g, NULL, &l->tok, err, sizeof(err));
    if (!rc)
        rc = model_load(l->g, &l->dev, &l->m, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "cinfer %s: %s: %s\n", cmd, path, err);
        unload(l);
        return rc == -ENOMEM ? EXIT_FAILURE : CLI_EXIT_BADINPUT;
    }
    return 0;
}

/* --device's default: CINFER_DEVICE, else auto. */
static const char *default_device(void)
{
    const char *d = getenv("CINFER_DEVICE");
    return d && *d ? d : "auto";
}

/* Parses a number in [lo, hi]; returns 0 or -1. */
static int parse_num(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

/* ---- run ------------------------------------------------------------------ */

static const char *const k_run_help =
    "usage: cinfer run -m MODEL -p PROMPT [options]\n"
    "\n"
    "Generates text from PROMPT and streams only the generated text to stdout\n"
    "(diagnostics go to stderr).\n"
    "\n"
    "  -m, --model FILE        GGUF model (required)\n"
    "  -p, --prompt TEXT       the prompt (raw text; BOS added as the model says)\n"
    "  -n, --n-predict N       tokens to generate at most (default 256)\n"
    "      --chat              wrap the prompt in the model's chat template\n"
    "      --chat-template T   chatml, llama2, llama3, mistral or gemma\n"
    "      --system TEXT       a system message (with --chat)\n"
    "      --temp T            temperature (default 0.8; 0 = greedy)\n"
    "      --top-k K           (default 40; 0 = off)\n"
    "      --top-p P           (default 0.95)\n"
    "      --min-p P           (default 0.05)\n"
    "      --repeat-penalty R  (default 1.0 = off)\n"
    "      --seed S            random seed (default: from the clock)\n"
    "      --ignore-eos        keep going past end-of-text tokens\n"
    "  -t, --threads N         worker threads (default: the number of cores)\n"
    "      --kv-type TYPE      f16 (default) or f32\n"
    "      --device NAME       backend: auto (default, or CINFER_DEVICE), cpu or ppu\n"
    "  -h, --help              this help\n"
    "      --version           the version\n";

struct run_opts {
    const char *model, *prompt, *chat_name, *system, *device;
    int n_predict, chat, threads, ignore_eos;
    uint32_t kv_type;
    struct smp_params sp;
    int have_seed;
};

static int run_parse(int argc, char **argv, struct run_opts *o)
{
    enum {
        O_CHAT = 256,
        O_TMPL,
        O_SYS,
        O_TEMP,
        O_TOPK,
        O_TOPP,
        O_MINP,
        O_REP,
        O_SEED,
        O_EOS,
        O_KV,
        O_DEV,
        O_VERSION
    };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},
        {"prompt", required_argument, 0, 'p'},
        {"n-predict", required_argument, 0, 'n'},
        {"chat", no_argument, 0, O_CHAT},
        {"chat-template", required_argument, 0, O_TMPL},
        {"system", required_argument, 0, O_SYS},
        {"temp", required_argument, 0, O_TEMP},
        {"top-k", required_argument, 0, O_TOPK},
        {"top-p", required_argument, 0, O_TOPP},
        {"min-p", required_argument, 0, O_MINP},
        {"repeat-penalty", required_argument, 0, O_REP},
        {"seed", required_argument, 0, O_SEED},
        {"ignore-eos", no_argument, 0, O_EOS},
        {"threads", required_argument, 0, 't'},
        {"kv-type", required_argument, 0, O_KV},
        {"device", required_argument, 0, O_DEV},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, O_VERSION},
        {0, 0, 0, 0},
    };
    memset(o, 0, sizeof(*o));
    o->n_predict = 256;
    o->kv_type = QT_F16;
    o->device = default_device();
    smp_params_default(&o->sp);
    o->sp.temperature = 0.8f;
    o->sp.top_k = 40;
    o->sp.top_p = 0.95f;
    o->sp.min_p = 0.05f;
    int c;
    double v;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":m:p:n:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            o->model = optarg;
            break;
        case 'p':
            o->prompt = optarg;
            break;
        case 'n':
            if (parse_num(optarg, 0, 1 << 24, &v))
                return cli_usage("run", "-n takes a number of tokens (0 or more)");
            o->n_predict = (int)v;
            break;
        case O_CHAT:
            o->chat = 1;
            break;
        case O_TMPL:
            o->chat = 1;
            o->chat_name = optarg;
            break;
        case O_SYS:
            o->system = optarg;
            break;
        case O_TEMP:
            if (parse_num(optarg, 0, 100, &v))
                return cli_usage("run", "--temp takes a number from 0 to 100");
            o->sp.temperature = (float)v;
            break;
        case O_TOPK:
            if (parse_num(optarg, 0, 1 << 24, &v))
                return cli_usage("run", "--top-k takes a whole number, 0 or more");
            o->sp.top_k = (int)v;
            break;
        case O_TOPP:
            if (parse_num(optarg, 1e-9, 1, &v))
                return cli_usage("run", "--top-p takes a number in (0, 1]");
            o->sp.top_p = (float)v;
            break;
        case O_MINP:
            if (parse_num(optarg, 0, 1, &v))
                return cli_usage("run", "--min-p takes a number in [0, 1]");
            o->sp.min_p = (float)v;
            break;
        case O_REP:
            if (parse_num(optarg, 1e-3, 100, &v))
                return cli_usage("run", "--repeat-penalty takes a positive number");
            o->sp.repetition_penalty = (float)v;
            break;
        case O_SEED:
            if (parse_num(optarg, 0, 18446744073709551615.0, &v))
                return cli_usage("run", "--seed takes a whole number, 0 or more");
            o->sp.seed = (uint64_t)v;
            o->have_seed = 1;
            break;
        case O_EOS:
            o->ignore_eos = 1;
            break;
        case 't':
            if (parse_num(optarg, 1, 1024, &v))
                return cli_usage("run", "--threads takes a number from 1 to 1024");
            o->threads = (int)v;
            break;
        case O_KV:
            if (strcmp(optarg, "f16") && strcmp(optarg, "f32"))
                return cli_usage("run", "--kv-type is f16 or f32");
            o->kv_type = strcmp(optarg, "f16") ? QT_F32 : QT_F16;
            break;
        case O_DEV:
            o->device = optarg;
            break;
        case 'h':
            fputs(k_run_help, stdout);
            return -1;
        case O_VERSION:
            cli_print_version();
            return -1;
        case ':':
            return cli_usage("run", "an option is missing its value");
        default:
            return cli_usage("run", "unknown option");
        }
    }
    if (!o->model)
        return cli_usage("run", "-m MODEL is required");
    if (!o->prompt)
        return cli_usage("run", "-p PROMPT is required");
    if (optind < argc)
        return cli_usage("run", "unexpected argument");
    if (!o->have_seed)
        o->sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    return 0;
}

/* The prompt as token ids (malloc'd). */
static int run_prompt(const struct run_opts *o, struct loaded *l, int32_t **ids, int *n)
{
    struct tok_buf text = {0};
    unsigned flags = tok_add_bos(l->tok) ? TOK_ADD_BOS : 0;
    int rc = 0;
    if (o->chat) {
        enum tok_chat fmt = TOK_CHAT_CHATML;
        struct gguf_str t;
        if (o->chat_name) {
            if (tok_chat_from_name(o->chat_name, &fmt)) {
                fprintf(stderr,
                        "cinfer run: unknown chat template '%s' (chatml, llama2, llama3, "
                        "mistral, gemma)\n",
                        o->chat_name);
                return CLI_EXIT_BADINPUT;
            }
        } else if (gguf_get_str(l->g, "tokenizer.chat_template", &t) != 0 ||
                   tok_chat_detect(t.p, t.n, &fmt) != 0) {
            fprintf(stderr, "cinfer run: warning: the model's chat template is not one cinfer "
                            "knows; using chatml\n");
        }
        struct tok_msg msgs[2];
        int nm = 0;
        if (o->system)
            msgs[nm++] = (struct tok_msg){"system", o->system};
        msgs[nm++] = (struct tok_msg){"user", o->prompt};
        rc = tok_chat_render(fmt, msgs, nm, 1, &text);
        flags |= TOK_PARSE_SPECIAL;
    } else {
        rc = tok_buf_append(&text, o->prompt, strlen(o->prompt));
    }
    *ids = NULL;
    int64_t k = rc ? -ENOMEM : tok_encode_alloc(l->tok, text.p, text.n, flags, ids);
    free(text.p);
    if (k < 0) {
        fprintf(stderr, "cinfer run: cannot encode the prompt: %s\n", strerror((int)-k));
        return EXIT_FAILURE;
    }
    *n = (int)k;
    return 0;
}

int cli_run(int argc, char **argv)
{
    struct run_opts o;
    int rc = run_parse(argc, argv, &o);
    if (rc)
        return rc < 0 ? 0 : rc;
    struct loaded l;
    double t0 = util_now_s();
    if ((rc = load("run", o.model, o.device, o.threads, &l)))
        return rc;
    int32_t *ids = NULL;
    int n_prompt = 0;
    if ((rc = run_prompt(&o, &l, &ids, &n_prompt))) {
        unload(&l);
        return rc;
    }
    int V = l.m->hp.n_vocab, total = n_prompt + o.n_predict;
    if (n_prompt == 0) {
        fprintf(stderr, "cinfer run: the prompt is empty\n");
        free(ids);
        unload(&l);
        return CLI_EXIT_BADINPUT;
    }
    int32_t n_blocks = (total + BLOCK - 1) / BLOCK + 1;
    struct kv_pool *pool = NULL;
    struct model_kv kv = {0};
    struct kv_seq seq;
    struct smp smp;
    kv_seq_init(&seq);
    float *logits = malloc(sizeof(float) * (size_t)V);
    int32_t *all = realloc(ids, sizeof(int32_t) * (size_t)(total + 1));
    struct dev_tokpos *tp = malloc(sizeof(*tp) * PREFILL_CHUNK);
    uint8_t *want = calloc(PREFILL_CHUNK, 1);
    rc = (!logits || !all || !tp || !want) ? -ENOMEM : 0;
    if (all)
        ids = all;
    rc = rc ? rc : kv_pool_create(n_blocks + 1, BLOCK, &pool);
    rc = rc ? rc : model_kv_init(l.m, &kv, n_blocks + 1, BLOCK, o.kv_type);
    rc = rc ? rc : smp_init(&smp, &o.sp, V, ids, n_prompt);
    if (rc) {
        fprintf(stderr, "cinfer run: %s\n",
                rc == -ENOMEM ? "out of memory for the KV cache" : "bad sampling parameters");
        goto done;
    }
    double t1 = util_now_s();
    // prefill in chunks
    for (int start = 0; start < n_prompt && !rc; start += PREFILL_CHUNK) {
        int cnt = n_prompt - start < PREFILL_CHUNK ? n_prompt - start : PREFILL_CHUNK;
        rc = kv_alloc_slots(pool, &seq, cnt);
        for (int i = 0; i < cnt && !rc; i++) {
            tp[i] = (struct dev_tokpos){seq.blocks, start + i, 0};
            want[i] = start + i == n_prompt - 1;
        }
        struct model_batch b = {cnt, ids + start, tp, want, NULL};
        rc = rc ? rc : model_forward(l.m, &kv, &b, logits);
    }
    double t2 = util_now_s();
    // decode: sample, print, feed back
    struct tok_detok d;
    struct tok_buf out = {0};
    tok_detok_init(&d, l.tok, 0);
    int n_gen = 0, pos = n_prompt;
    while (!rc && n_gen < o.n_predict) {
        struct smp_result r;
        smp_sample(&smp, logits, &r);
        smp_accept(&smp, r.token);
        n_gen++;
        if (!o.ignore_eos && tok_is_eog(l.tok, r.token))
            break;
        out.n = 0;
        rc = tok_detok_feed(&d, r.token, &out);
        if (!rc && out.n) {
            fwrite(out.p, 1, out.n, stdout);
            fflush(stdout);
        }
        if (n_gen == o.n_predict)
            break;
        ids[pos] = r.token;
        rc = rc ? rc : kv_alloc_slots(pool, &seq, 1);
        struct dev_tokpos t1p = {seq.blocks, pos, 0};
        uint8_t w = 1;
        struct model_batch b = {1, &ids[pos], &t1p, &w, NULL};
        rc = rc ? rc : model_forward(l.m, &kv, &b, logits);
        pos++;
    }
    out.n = 0;
    if (!rc && !tok_detok_flush(&d, &out) && out.n)
        fwrite(out.p, 1, out.n, stdout);
    if (isatty(STDOUT_FILENO))
        fputc('\n', stdout); /* a terminal gets its line end; pipes get the text only */
    fflush(stdout);
    free(out.p);
    double t3 = util_now_s();
    if (rc)
        fprintf(stderr, "cinfer run: generation failed: %s\n", strerror(-rc));
    fprintf(stderr,
            "cinfer run: load %.2f s; prompt %d tokens in %.3f s (%.1f tok/s); "
            "generated %d tokens in %.3f s (%.1f tok/s); kernels %s, seed %llu\n",
            t1 - t0, n_prompt, t2 - t1, n_prompt / (t2 - t1 + 1e-12), n_gen, t3 - t2,
            n_gen / (t3 - t2 + 1e-12), dev_kernels_name(&l.dev), (unsigned long long)o.sp.seed);
    smp_free(&smp);
done:
    kv_free_seq(pool, &seq);
    kv_pool_destroy(pool);
    if (kv.layers)
        model_kv_free(l.m, &kv);
    free(logits);
    free(ids);
    free(tp);
    free(want);
    unload(&l);
    return rc ? EXIT_FAILURE : 0;
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
    "  -t, --threads N    worker threads (default: the number of cores)\n"
    "      --device NAME  backend: auto (default, or CINFER_DEVICE), cpu or ppu\n"
    "      --json         one JSON object per line per test\n"
    "  -h, --help         this help\n"
    "      --version      the version\n";

struct bench_ctx {
    struct loaded l;
    struct kv_pool *pool;
    struct model_kv kv;
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
    struct kv_seq *seqs = calloc((size_t)n_seq, sizeof(*seqs));
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)nbuf);
    struct dev_tokpos *tp = malloc(sizeof(*tp) * (size_t)nbuf);
    uint8_t *want = calloc((size_t)nbuf, 1);
    double t = -1.0;
    if (!seqs || !ids || !tp || !want)
        goto out;
    int rc = 0;
    for (int i = 0; i < n_seq; i++)
        kv_seq_init(&seqs[i]);
    for (int i = 0; i < n_seq && depth > 0 && !rc; i++) { /* the context, one prompt each */
        bench_tokens(ids, depth, V, rng);
        rc = kv_alloc_slots(c->pool, &seqs[i], depth);
        for (int p = 0; p < depth; p++) {
            tp[p] = (struct dev_tokpos){seqs[i].blocks, p, depth > 1};
            want[p] = p == depth - 1;
        }
        struct model_batch b = {depth, ids, tp, want, NULL};
        rc = rc ? rc : model_forward(c->l.m, &c->kv, &b, c->logits);
    }
    int steps = pp ? 1 : tg;
    double t0 = util_now_s();
    for (int s = 0; s < steps && !rc; s++) {
        bench_tokens(ids, n, V, rng);
        if (pp) {
            rc = kv_alloc_slots(c->pool, &seqs[0], pp);
            for (int i = 0; i < pp; i++) {
                /* a prompt chunk, as the engine computes one */
                tp[i] = (struct dev_tokpos){seqs[0].blocks, depth + i, pp > 1};
                want[i] = i == pp - 1;
            }
        } else {
            for (int i = 0; i < n_seq && !rc; i++) {
                rc = kv_alloc_slots(c->pool, &seqs[i], 1);
                tp[i] = (struct dev_tokpos){seqs[i].blocks, depth + s, 0};
                want[i] = 1;
            }
        }
        struct model_batch b = {n, ids, tp, want, NULL};
        rc = rc ? rc : model_forward(c->l.m, &c->kv, &b, c->logits);
    }
    if (!rc)
        t = util_now_s() - t0;
    for (int i = 0; i < n_seq; i++)
        kv_free_seq(c->pool, &seqs[i]);
out:
    free(seqs);
    free(ids);
    free(tp);
    free(want);
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

int cli_bench(int argc, char **argv)
{
    enum { O_BATCH = 256, O_JSON, O_DEV, O_VERSION };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},    {"batch", required_argument, 0, O_BATCH},
        {"device", required_argument, 0, O_DEV}, {"threads", required_argument, 0, 't'},
        {"json", no_argument, 0, O_JSON},        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, O_VERSION},  {0, 0, 0, 0},
    };
    const char *model = NULL, *device = default_device();
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
            if (parse_num(optarg, 0, 1 << 20, &v))
                return cli_usage("bench", "-p and -n take a number of tokens");
            *(c == 'p' ? &pp : &tg) = (int)v;
            break;
        case 'd':
            if (parse_num(optarg, 0, 1 << 20, &v))
                return cli_usage("bench", "-d takes a number of tokens");
            depth = (int)v;
            break;
        case 'r':
            if (parse_num(optarg, 1, 1000, &v))
                return cli_usage("bench", "-r takes a number from 1 to 1000");
            reps = (int)v;
            break;
        case O_BATCH:
            if (parse_num(optarg, 1, 4096, &v))
                return cli_usage("bench", "--batch takes a number from 1 to 4096");
            batch = (int)v;
            break;
        case 't':
            if (parse_num(optarg, 1, 1024, &v))
                return cli_usage("bench", "--threads takes a number from 1 to 1024");
            threads = (int)v;
            break;
        case O_JSON:
            json = 1;
            break;
        case O_DEV:
            device = optarg;
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
    struct bench_ctx b = {0};
    int rc = load("bench", model, device, threads, &b.l);
    if (rc)
        return rc;
    if (threads <= 0)
        threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int tokens = pp > tg * batch ? pp : tg * batch;
    int per_seq = depth + (pp > tg ? pp : tg);
    int32_t n_blocks = batch * ((per_seq + BLOCK - 1) / BLOCK) + 2;
    int rows = batch > 1 ? batch : 1;
    b.logits = malloc(sizeof(float) * (size_t)b.l.m->hp.n_vocab * (size_t)rows);
    rc = b.logits ? 0 : -ENOMEM;
    rc = rc ? rc : kv_pool_create(n_blocks, BLOCK, &b.pool);
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
        fprintf(stderr, "cinfer bench: kernels %s\n", dev_kernels_name(&b.l.dev));
done:
    free(tps);
    free(b.logits);
    if (b.kv.layers)
        model_kv_free(b.l.m, &b.kv);
    kv_pool_destroy(b.pool);
    unload(&b.l);
    return rc;
}

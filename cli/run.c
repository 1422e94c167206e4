/*
 * cli/run.c - `cinfer run`: generate text from one prompt and stream it to
 * stdout.  It drives the engine through eng_submit like any client: the
 * same scheduler, batching and sampling as `cinfer serve`, no second loop.
 */
#include <cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "engine/engine.h"
#include "server/srv.h"
#include "util/clock.h"

static const char *const k_run_help =
    "usage: cinfer run -m MODEL -p PROMPT [options]\n"
    "\n"
    "Generates text from PROMPT and streams only the generated text to stdout\n"
    "(diagnostics go to stderr).  It runs the serving engine in-process, so the\n"
    "text is what `cinfer serve` gives for the same request.\n"
    "\n"
    "  -m, --model FILE        GGUF model (required)\n"
    "  -p, --prompt TEXT       the prompt (raw text; BOS added as the model says)\n"
    "  -n, --n-predict N       tokens to generate at most (default 256; the context may cut it)\n"
    "      --chat              wrap the prompt in the model's own chat template\n"
    "      --chat-template T   a Jinja template FILE instead (implies --chat), or a\n"
    "                          built-in format: chatml, llama2, llama3, mistral, gemma\n"
    "      --system TEXT       a system message (with --chat)\n"
    "      --temp T            temperature (default 0.8; 0 = greedy)\n"
    "      --top-k K           (default 40; 0 = off)\n"
    "      --top-p P           (default 0.95)\n"
    "      --min-p P           (default 0.05)\n"
    "      --repeat-penalty R  (default 1.0 = off)\n"
    "      --seed S            random seed (default: from the clock)\n"
    "      --ignore-eos        keep going past end-of-text tokens\n"
    "  -t, --threads N         worker threads (default: the CPUs this process may use)\n"
    "      --kv-type TYPE      f16 (default) or f32\n"
    "      --device NAME       backend: auto (default, or CINFER_DEVICE), cpu or ppu\n"
    "      --kernels NAME      CPU inner loops: auto (default), scalar, avx2, avx512,\n"
    "                          avxvnni or avx512vnni (same results)\n"
    "  -h, --help              this help\n"
    "      --version           the version\n";

struct run_opts {
    const char *model, *prompt, *chat_name, *system, *device, *kernels;
    int n_predict, chat, threads, ignore_eos;
    enum eng_kv_type kv_type;
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
        O_KERN,
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
        {"kernels", required_argument, 0, O_KERN},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, O_VERSION},
        {0, 0, 0, 0},
    };
    memset(o, 0, sizeof(*o));
    o->n_predict = 256;
    o->kv_type = ENG_KV_F16;
    o->device = cli_default_device();
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
            if (cli_parse_num(optarg, 0, 1 << 24, &v))
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
            if (cli_parse_num(optarg, 0, 100, &v))
                return cli_usage("run", "--temp takes a number from 0 to 100");
            o->sp.temperature = (float)v;
            break;
        case O_TOPK:
            if (cli_parse_num(optarg, 0, 1 << 24, &v))
                return cli_usage("run", "--top-k takes a whole number, 0 or more");
            o->sp.top_k = (int)v;
            break;
        case O_TOPP:
            if (cli_parse_num(optarg, 1e-9, 1, &v))
                return cli_usage("run", "--top-p takes a number in (0, 1]");
            o->sp.top_p = (float)v;
            break;
        case O_MINP:
            if (cli_parse_num(optarg, 0, 1, &v))
                return cli_usage("run", "--min-p takes a number in [0, 1]");
            o->sp.min_p = (float)v;
            break;
        case O_REP:
            if (cli_parse_num(optarg, 1e-3, 100, &v))
                return cli_usage("run", "--repeat-penalty takes a positive number");
            o->sp.repetition_penalty = (float)v;
            break;
        case O_SEED:
            if (cli_parse_num(optarg, 0, 18446744073709551615.0, &v))
                return cli_usage("run", "--seed takes a whole number, 0 or more");
            o->sp.seed = (uint64_t)v;
            o->have_seed = 1;
            break;
        case O_EOS:
            o->ignore_eos = 1;
            break;
        case 't':
            if (cli_parse_num(optarg, 1, 1024, &v))
                return cli_usage("run", "--threads takes a number from 1 to 1024");
            o->threads = (int)v;
            break;
        case O_KV:
            if (strcmp(optarg, "f16") && strcmp(optarg, "f32"))
                return cli_usage("run", "--kv-type is f16 or f32");
            o->kv_type = strcmp(optarg, "f16") ? ENG_KV_F32 : ENG_KV_F16;
            break;
        case O_DEV:
            o->device = optarg;
            break;
        case O_KERN:
            o->kernels = optarg;
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

/*
 * The chat prompt, by the server's own code (server/chat.c): the model's
 * template, a --chat-template FILE, or a built-in format named by it.
 */
static int run_chat_text(const struct run_opts *o, struct engine *e, struct buf *text,
                         unsigned *flags)
{
    enum tok_chat fmt;
    int builtin = o->chat_name && !tok_chat_from_name(o->chat_name, &fmt);
    char err[512];
    struct srv_chat chat;
    int rc = srv_chat_load(&chat, e, builtin ? NULL : o->chat_name, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "cinfer run: %s\n", err);
        srv_chat_free(&chat);
        return rc == -ENOMEM ? EXIT_FAILURE : CLI_EXIT_BADINPUT;
    }
    if (builtin)
        srv_chat_use_builtin(&chat, fmt);
    cJSON *root = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(root, "messages");
    for (int i = 0; i < 2 && msgs; i++) {
        const char *content = i ? o->prompt : o->system;
        cJSON *m = content ? cJSON_CreateObject() : NULL;
        if (!content)
            continue;
        if (!m || !cJSON_AddStringToObject(m, "role", i ? "user" : "system") ||
            !cJSON_AddStringToObject(m, "content", content) || !cJSON_AddItemToArray(msgs, m)) {
            cJSON_Delete(m);
            msgs = NULL;
        }
    }
    struct srv_error se = {0};
    int add_bos = 0;
    if (!msgs) {
        fprintf(stderr, "cinfer run: out of memory\n");
        rc = EXIT_FAILURE;
    } else if (srv_chat_prompt(&chat, root, text, &add_bos, &se)) {
        fprintf(stderr, "cinfer run: %s\n", se.message);
        rc = se.status >= 500 ? EXIT_FAILURE : CLI_EXIT_BADINPUT;
    }
    *flags = TOK_PARSE_SPECIAL | (add_bos ? TOK_ADD_BOS : 0);
    cJSON_Delete(root);
    srv_chat_free(&chat);
    return rc;
}

/* The prompt as token ids (malloc'd); 0 or an exit status. */
static int run_prompt(const struct run_opts *o, struct engine *e, int32_t **ids, int *n)
{
    const struct tok *tk = eng_tok(e);
    struct buf text = {0};
    unsigned flags = tok_add_bos(tk) ? TOK_ADD_BOS : 0;
    int rc = 0;
    if (o->chat) {
        if ((rc = run_chat_text(o, e, &text, &flags))) {
            free(text.p);
            return rc;
        }
    } else {
        rc = buf_append(&text, o->prompt, strlen(o->prompt));
    }
    *ids = NULL;
    int64_t k = rc ? -ENOMEM : tok_encode_alloc(tk, text.p, text.n, flags, ids);
    free(text.p);
    if (k < 0) {
        fprintf(stderr, "cinfer run: cannot encode the prompt: %s\n", strerror((int)-k));
        return EXIT_FAILURE;
    }
    if (k == 0) {
        fprintf(stderr, "cinfer run: the prompt is empty\n");
        return CLI_EXIT_BADINPUT;
    }
    *n = (int)k;
    return 0;
}

/* Streams the request's text to stdout until its end; 0, or 1 after saying why. */
static int run_stream(struct eng_req *r, struct eng_event *end)
{
    for (;;) {
        struct eng_event ev;
        if (eng_req_next(r, &ev, -1))
            return EXIT_FAILURE;
        if (ev.n_text && ev.kind == ENG_EV_TOKEN) {
            fwrite(ev.text, 1, ev.n_text, stdout);
            fflush(stdout);
        }
        if (ev.kind == ENG_EV_END) {
            *end = ev;
            if (ev.finish == ENG_FINISH_ERROR || ev.finish == ENG_FINISH_TIMEOUT) {
                fprintf(stderr, "cinfer run: generation failed: %.*s\n", (int)ev.n_text, ev.text);
                return EXIT_FAILURE;
            }
            if (ev.n_text)
                fwrite(ev.text, 1, ev.n_text, stdout);
            return 0;
        }
        eng_event_clear(&ev);
    }
}

int cli_run(int argc, char **argv)
{
    struct run_opts o;
    int rc = run_parse(argc, argv, &o);
    if (rc)
        return rc < 0 ? 0 : rc;
    char err[512];
    if (eng_device_check(o.device, o.kernels, err, sizeof(err))) {
        fprintf(stderr, "cinfer run: %s\n", err);
        return CLI_EXIT_BADINPUT;
    }
    double t0 = util_now_s();
    /* one client: prefill chunks of up to 512 tokens, no time bound per pass */
    struct eng_config cfg = {.device = o.device,
                             .kernels = o.kernels,
                             .threads = o.threads,
                             .kv_type = o.kv_type,
                             .max_seqs = 1,
                             .max_step_ms = -1};
    struct engine *e = NULL;
    rc = eng_create(o.model, &cfg, &e, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "cinfer run: %s: %s\n", o.model, err);
        return rc == -ENOMEM ? EXIT_FAILURE : CLI_EXIT_BADINPUT;
    }
    double t1 = util_now_s();
    struct eng_info ei;
    eng_get_info(e, &ei);
    if (ei.device_note[0])
        fprintf(stderr, "cinfer run: %s; running on the CPU\n", ei.device_note);
    int32_t *ids = NULL;
    int n_prompt = 0;
    if ((rc = run_prompt(&o, e, &ids, &n_prompt))) {
        eng_destroy(e);
        return rc;
    }
    struct eng_event end = {0};
    struct eng_params p = {.sp = o.sp, .max_tokens = o.n_predict, .ignore_eos = o.ignore_eos};
    struct eng_req *r = NULL;
    if (o.n_predict > 0) {
        rc = eng_submit(e, ids, n_prompt, &p, &r, err, sizeof(err));
        if (rc) {
            fprintf(stderr, "cinfer run: %s\n", err);
            rc = rc == -ENOMEM ? EXIT_FAILURE : CLI_EXIT_BADINPUT;
        } else {
            rc = run_stream(r, &end);
        }
    }
    if (isatty(STDOUT_FILENO))
        fputc('\n', stdout); /* a terminal gets its line end; pipes get the text only */
    fflush(stdout);
    if (!rc && !r) {
        fprintf(stderr, "cinfer run: load %.2f s; prompt %d tokens; nothing to generate (-n 0)\n",
                t1 - t0, n_prompt);
    } else if (!rc) {
        double first = end.t_first_token ? end.t_first_token : end.t;
        double pp = first - end.t_scheduled, tg = end.t - first;
        struct eng_info info;
        eng_get_info(e, &info);
        fprintf(stderr,
                "cinfer run: load %.2f s; prompt %d tokens in %.3f s (%.1f tok/s); "
                "generated %d tokens in %.3f s (%.1f tok/s); %s backend, kernels %s, seed %llu\n",
                t1 - t0, n_prompt, pp, n_prompt / (pp + 1e-12), end.completion_tokens, tg,
                end.completion_tokens / (tg + 1e-12), info.backend, info.kernels,
                (unsigned long long)o.sp.seed);
    }
    eng_event_clear(&end);
    if (r)
        eng_req_release(r);
    free(ids);
    eng_destroy(e);
    return rc;
}

/*
 * cli/main.c - the cinfer command line: one binary, several subcommands.
 *
 *   cinfer tokenize -m MODEL [--stdin] [--bos] [--special] [--pieces] TEXT
 *   cinfer run                   (cli/run.c: through the engine, like a client)
 *   cinfer bench                 (cli/bench.c: the model alone, one shape at a time)
 *   cinfer template              (cli/template.c: the chat prompt, by server/chat.c)
 *   cinfer serve                 (cli/serve.c over server/)
 *
 * Exit status: 0 on success, 2 for bad input (usage, a model that does not
 * load, a text that does not encode), 1 for anything else.
 */
#include <cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "cli/cli.h"

static const char *const k_main_help =
    "usage: cinfer <command> [options]\n"
    "\n"
    "An OpenAI-compatible LLM inference server in one binary.\n"
    "\n"
    "commands:\n"
    "  tokenize   print the token ids of a text for a GGUF model\n"
    "  run        generate text from a prompt\n"
    "  bench      measure prompt and generation speed (like llama-bench)\n"
    "  template   print the prompt a chat request's messages become\n"
    "  serve      serve the OpenAI HTTP API\n"
    "  health     ask a server's /health (exit 0 on 200): a probe without curl\n"
    "\n"
    "  cinfer <command> --help    options of a command\n"
    "  cinfer --version           the version\n";

static const char *const k_tokenize_help =
    "usage: cinfer tokenize -m MODEL [options] TEXT\n"
    "       cinfer tokenize -m MODEL --stdin [options] < FILE\n"
    "\n"
    "Prints the token ids of TEXT as one JSON array on one line.\n"
    "\n"
    "  -m, --model FILE      GGUF model whose tokenizer to use (required)\n"
    "      --tokenizer FILE  SentencePiece tokenizer.model to use instead of the GGUF's\n"
    "      --stdin           read the text from standard input\n"
    "      --bos             prepend the BOS token (not added otherwise)\n"
    "      --special         parse special tokens written in the text (<|im_start|> ...)\n"
    "      --pieces          print [{\"id\": N, \"piece\": \"...\"}, ...] instead of ids\n"
    "  -h, --help            this help\n"
    "      --version         the version\n";

void cli_print_version(void)
{
    printf("cinfer %s\n", CINFER_VERSION);
}

const char *cli_default_device(void)
{
    const char *d = getenv("CINFER_DEVICE");
    return d && *d ? d : "auto";
}

int cli_parse_num(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

int cli_usage(const char *cmd, const char *msg)
{
    fprintf(stderr, "cinfer %s: %s (try 'cinfer %s --help')\n", cmd, msg, cmd);
    return CLI_EXIT_BADINPUT;
}

char *cli_read_file(const char *path, size_t *len)
{
    FILE *f = path ? fopen(path, "rb") : stdin;
    if (!f)
        return NULL;
    struct buf b = {0};
    char chunk[65536];
    int rc = 0;
    for (size_t k; !rc && (k = fread(chunk, 1, sizeof(chunk), f)) > 0;)
        rc = buf_append(&b, chunk, k);
    int bad = rc || ferror(f);
    if (f != stdin)
        fclose(f);
    if (bad || buf_append(&b, "", 1)) {
        free(b.p);
        errno = rc ? ENOMEM : EIO;
        return NULL;
    }
    *len = b.n - 1;
    return b.p;
}

/* The output text of one token with any broken UTF-8 shown as U+FFFD. */
static char *piece_text(const struct tok *t, int32_t id)
{
    struct tok_detok d;
    struct buf b = {0};
    tok_detok_init(&d, t, TOK_DETOK_SPECIAL);
    if (tok_detok_feed(&d, id, &b) || tok_detok_flush(&d, &b) || buf_append(&b, "", 0)) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

static int print_ids(const struct tok *t, const int32_t *ids, size_t n, int pieces)
{
    cJSON *arr = cJSON_CreateArray();
    int ok = arr != NULL;
    for (size_t i = 0; i < n && ok; i++) {
        cJSON *item;
        if (pieces) {
            char *p = piece_text(t, ids[i]);
            item = cJSON_CreateObject();
            ok = p && item && cJSON_AddNumberToObject(item, "id", ids[i]) &&
                 cJSON_AddStringToObject(item, "piece", p);
            free(p);
        } else {
            item = cJSON_CreateNumber(ids[i]);
            ok = item != NULL;
        }
        if (item && !cJSON_AddItemToArray(arr, item)) {
            cJSON_Delete(item);
            ok = 0;
        }
    }
    char *s = ok ? cJSON_PrintUnformatted(arr) : NULL;
    cJSON_Delete(arr);
    if (!s) {
        fprintf(stderr, "cinfer tokenize: out of memory\n");
        return EXIT_FAILURE;
    }
    puts(s);
    cJSON_free(s);
    return fflush(stdout) == 0 ? 0 : EXIT_FAILURE;
}

static int cmd_tokenize(int argc, char **argv)
{
    enum { O_STDIN = 256, O_BOS, O_SPECIAL, O_PIECES, O_TOKENIZER, O_VERSION };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},
        {"tokenizer", required_argument, 0, O_TOKENIZER},
        {"stdin", no_argument, 0, O_STDIN},
        {"bos", no_argument, 0, O_BOS},
        {"special", no_argument, 0, O_SPECIAL},
        {"pieces", no_argument, 0, O_PIECES},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, O_VERSION},
        {0, 0, 0, 0},
    };
    const char *model = NULL, *spm = NULL;
    int use_stdin = 0, pieces = 0;
    unsigned flags = 0;
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":m:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case O_TOKENIZER:
            spm = optarg;
            break;
        case O_STDIN:
            use_stdin = 1;
            break;
        case O_BOS:
            flags |= TOK_ADD_BOS;
            break;
        case O_SPECIAL:
            flags |= TOK_PARSE_SPECIAL;
            break;
        case O_PIECES:
            pieces = 1;
            break;
        case 'h':
            fputs(k_tokenize_help, stdout);
            return 0;
        case O_VERSION:
            cli_print_version();
            return 0;
        case ':':
            return cli_usage("tokenize", "an option is missing its value");
        default:
            return cli_usage("tokenize", "unknown option");
        }
    }
    if (!model)
        return cli_usage("tokenize", "-m MODEL is required");
    int n_text = argc - optind;
    if (use_stdin ? n_text != 0 : n_text != 1)
        return cli_usage("tokenize", use_stdin ? "TEXT and --stdin exclude each other"
                                               : "give exactly one TEXT argument or --stdin");

    char err[512];
    struct eng_vocab *v = NULL;
    int rc = eng_vocab_open(model, spm, &v, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "cinfer tokenize: %s: %s\n", model, err);
        return rc == -ENOMEM ? EXIT_FAILURE : CLI_EXIT_BADINPUT;
    }
    const struct tok *t = eng_vocab_tok(v);
    size_t len = 0;
    char *text = NULL;
    if (use_stdin) {
        text = cli_read_file(NULL, &len);
        if (!text) {
            fprintf(stderr, "cinfer tokenize: cannot read standard input\n");
            eng_vocab_close(v);
            return EXIT_FAILURE;
        }
    }
    const char *src = use_stdin ? text : argv[optind];
    if (!use_stdin)
        len = strlen(src);
    int status = EXIT_FAILURE;
    int32_t *ids;
    int64_t n = tok_encode_alloc(t, src, len, flags, &ids);
    if (n < 0)
        fprintf(stderr, "cinfer tokenize: cannot encode the text: %s\n", strerror((int)-n));
    else
        status = print_ids(t, ids, (size_t)n, pieces);
    free(ids);
    free(text);
    eng_vocab_close(v);
    return status;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(k_main_help, stderr);
        return CLI_EXIT_BADINPUT;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        fputs(k_main_help, stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        cli_print_version();
        return 0;
    }
    if (strcmp(cmd, "tokenize") == 0)
        return cmd_tokenize(argc - 1, argv + 1);
    if (strcmp(cmd, "run") == 0)
        return cli_run(argc - 1, argv + 1);
    if (strcmp(cmd, "bench") == 0)
        return cli_bench(argc - 1, argv + 1);
    if (strcmp(cmd, "template") == 0)
        return cli_template(argc - 1, argv + 1);
    if (strcmp(cmd, "serve") == 0)
        return cli_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "health") == 0)
        return cli_health(argc - 1, argv + 1);
    fprintf(stderr, "cinfer: unknown command '%s' (try 'cinfer --help')\n", cmd);
    return CLI_EXIT_BADINPUT;
}

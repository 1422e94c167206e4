/*
 * cli/template.c - `cinfer template`: the prompt text a chat request
 * becomes, by the same code as the server's chat route (server/chat.c):
 * the model's own Jinja template, or --chat-template FILE.
 */
#include <cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "engine/engine.h"
#include "server/srv.h"

static const char *const k_template_help =
    "usage: cinfer template -m MODEL --messages FILE [options]\n"
    "\n"
    "Prints the prompt text that a chat request's messages become, rendered by\n"
    "the model's own chat template exactly as `cinfer serve` renders them, and\n"
    "its token count on stderr.  FILE (- for standard input) holds a JSON array\n"
    "of messages, or a chat request body: {\"messages\": [...], \"tools\": [...],\n"
    "\"chat_template_kwargs\": {...}, \"add_generation_prompt\": true}.\n"
    "\n"
    "  -m, --model FILE          GGUF model (required)\n"
    "      --messages FILE       the messages (required)\n"
    "      --chat-template FILE  a Jinja template to use instead of the model's\n"
    "  -h, --help                this help\n"
    "      --version             the version\n";

/* The file's JSON as a request body; NULL after saying why. */
static cJSON *load_body(const char *path)
{
    size_t len; /* unused: the text is NUL-terminated */
    char *text = cli_read_file(strcmp(path, "-") ? path : NULL, &len);
    if (!text) {
        fprintf(stderr, "cinfer template: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) {
        fprintf(stderr, "cinfer template: %s: not valid JSON\n", path);
        return NULL;
    }
    if (cJSON_IsArray(j)) {
        cJSON *root = cJSON_CreateObject();
        if (!root || !cJSON_AddItemToObject(root, "messages", j)) {
            cJSON_Delete(root);
            cJSON_Delete(j);
            fprintf(stderr, "cinfer template: out of memory\n");
            return NULL;
        }
        return root;
    }
    if (!cJSON_IsObject(j) || !cJSON_GetObjectItemCaseSensitive(j, "messages")) {
        fprintf(stderr,
                "cinfer template: %s: give an array of messages or an object with \"messages\"\n",
                path);
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

int cli_template(int argc, char **argv)
{
    enum { O_MSGS = 256, O_TMPL, O_VERSION };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},
        {"messages", required_argument, 0, O_MSGS},
        {"chat-template", required_argument, 0, O_TMPL},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, O_VERSION},
        {0, 0, 0, 0},
    };
    const char *model = NULL, *msgs = NULL, *tmpl = NULL;
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":m:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case O_MSGS:
            msgs = optarg;
            break;
        case O_TMPL:
            tmpl = optarg;
            break;
        case 'h':
            fputs(k_template_help, stdout);
            return 0;
        case O_VERSION:
            cli_print_version();
            return 0;
        case ':':
            return cli_usage("template", "an option is missing its value");
        default:
            return cli_usage("template", "unknown option");
        }
    }
    if (!model)
        return cli_usage("template", "-m MODEL is required");
    if (!msgs)
        return cli_usage("template", "--messages FILE is required");
    if (optind < argc)
        return cli_usage("template", "unexpected argument");
    cJSON *root = load_body(msgs);
    if (!root)
        return CLI_EXIT_BADINPUT;
    char err[512];
    /* the weights are mapped, not read; the KV pool is the smallest there is */
    struct eng_config cfg = {.device = "cpu", .threads = 1, .max_seqs = 1, .kv_memory_mib = 1};
    struct engine *e = NULL;
    int rc = eng_create(model, &cfg, &e, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "cinfer template: %s: %s\n", model, err);
        cJSON_Delete(root);
        return rc == -ENOMEM ? EXIT_FAILURE : CLI_EXIT_BADINPUT;
    }
    struct srv_chat chat;
    rc = srv_chat_load(&chat, e, tmpl, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "cinfer template: %s\n", err);
        srv_chat_free(&chat);
        eng_destroy(e);
        cJSON_Delete(root);
        return rc == -ENOMEM ? EXIT_FAILURE : CLI_EXIT_BADINPUT;
    }
    struct buf prompt = {0};
    struct srv_error se = {0};
    int add_bos = 0, status = 0;
    if (srv_chat_prompt(&chat, root, &prompt, &add_bos, &se)) {
        fprintf(stderr, "cinfer template: %s\n", se.message);
        status = se.status >= 500 ? EXIT_FAILURE : CLI_EXIT_BADINPUT;
    } else {
        int32_t *ids = NULL;
        unsigned flags = TOK_PARSE_SPECIAL | (add_bos ? TOK_ADD_BOS : 0);
        int64_t n = tok_encode_alloc(eng_tok(e), prompt.p ? prompt.p : "", prompt.n, flags, &ids);
        free(ids);
        if (prompt.n)
            fwrite(prompt.p, 1, prompt.n, stdout);
        if (fflush(stdout))
            status = EXIT_FAILURE;
        if (n < 0)
            fprintf(stderr, "cinfer template: the prompt does not encode: %s\n", strerror((int)-n));
        else
            fprintf(stderr, "cinfer template: %lld prompt tokens%s (%s)\n", (long long)n,
                    add_bos ? " with BOS" : "", chat.origin);
    }
    free(prompt.p);
    srv_chat_free(&chat);
    eng_destroy(e);
    cJSON_Delete(root);
    return status;
}

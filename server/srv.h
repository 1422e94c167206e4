/*
 * server/srv.h - private to server/: the settings of `cinfer serve`, the
 * metrics registry, the OpenAI request and response shapes, and the HTTP
 * front end.  Nothing here knows about tensors: the engine is reached only
 * through engine/engine.h.
 */
#ifndef CINFER_SERVER_SRV_H
#define CINFER_SERVER_SRV_H

#include <cJSON.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"

/* ---- settings (server/config.c) ------------------------------------------- */

struct srv_config {
    char *model;
    char *host;
    int64_t port;
    char *api_key;
    char *api_key_file;
    char *allowed_origins; /* CORS: "*", "" or origins separated by commas */
    char *model_alias;
    char *chat_template;
    char *device;
    char *kernels;
    int64_t exact_llamacpp; /* bool */
    int64_t threads;
    int64_t ctx;
    int64_t kv_memory;
    int64_t kv_block;
    char *kv_type;
    int64_t max_body;
    int64_t max_body_total;
    int64_t max_connections;
    int64_t max_connections_per_ip;
    int64_t idle_timeout;
    int64_t http_threads;
    int64_t max_seqs;
    int64_t max_batch_tokens;
    int64_t max_step_ms;
    int64_t max_queue;
    int64_t max_queue_tokens;
    int64_t prefix_cache; /* bool */
    int64_t request_timeout;
    int64_t shutdown_timeout;
    char *metrics_compat; /* "vllm": /metrics also under vLLM's names; "none" */
    int64_t embeddings;   /* bool: serve /v1/embeddings */
    char *pooling;        /* "auto", "mean", "cls" or "last" */
    char *log_format;
};

/*
 * Fills cfg from defaults < the JSON config file (--config, or CINFER_CONFIG)
 * < CINFER_* environment variables < command-line flags.  Returns 0, 1 when
 * help or the version was printed, or 2 after printing a one-line error
 * naming the flag, variable or key.  print_config: set when --print-config
 * was given (print the merged settings as JSON and exit).
 */
int srv_config_load(int argc, char **argv, struct srv_config *cfg, int *print_config);
/* The exit status for bad input (usage, a bad setting, a model that does not load). */
#define SRV_EXIT_BADINPUT 2
/* Prints "cinfer serve: MSG (try 'cinfer serve --help')"; returns SRV_EXIT_BADINPUT. */
int srv_usage(const char *msg);
void srv_config_free(struct srv_config *cfg);
/* The settings as a JSON object (for --print-config); NULL on no memory. */
cJSON *srv_config_json(const struct srv_config *cfg);
/* One item of a comma-separated list at p: [*a, *b) without spaces around; returns the ',' or
 * the end after it. */
const char *srv_list_item(const char *p, const char **a, const char **b);
/*
 * Whether v is a valid --allowed-origins: "*", "" (no origin: CORS off), or
 * origins scheme://host[:port] separated by commas (spaces around them are
 * ignored).  0, or -1 with what the value must be in msg.
 */
int srv_origins_check(const char *v, char *msg, size_t cap);

/* ---- metrics (server/metrics.c) -------------------------------------------- */

/* The histograms fed per token or per request (vLLM's series of the same names). */
enum srv_hist {
    SRV_H_TTFT,              /* time_to_first_token_seconds: submit to first token */
    SRV_H_ITL,               /* inter_token_latency_seconds: between two tokens of a request */
    SRV_H_E2E,               /* e2e_request_latency_seconds: submit to end */
    SRV_H_QUEUE,             /* request_queue_time_seconds: submit to scheduled */
    SRV_H_PREFILL,           /* request_prefill_time_seconds: scheduled to first token */
    SRV_H_DECODE,            /* request_decode_time_seconds: first token to end */
    SRV_H_INFERENCE,         /* request_inference_time_seconds: scheduled to end */
    SRV_H_PROMPT_TOKENS,     /* request_prompt_tokens: a request's prompt */
    SRV_H_GENERATION_TOKENS, /* request_generation_tokens: a request's output */
    SRV_H_MAX_GENERATION,    /* request_max_num_generation_tokens: the most of a prompt's n */
    SRV_H_N
};

void srv_metrics_init(void);
struct srv_model;
/*
 * What every series says of the server: model_name="<served name>" (the
 * model's alias, else its id: the first name /v1/models lists), the KV
 * cache settings (cache_config_info), and cfg->metrics_compat.  Call before
 * serving; srv_start does.
 */
void srv_metrics_configure(const struct srv_config *cfg, const struct srv_model *model);
/* One observation: seconds, or tokens for the *_TOKENS / MAX_GENERATION histograms. */
void srv_metrics_observe(enum srv_hist h, double value);
void srv_metrics_tokens(int prompt, int generated);
void srv_metrics_finished(const char *reason);
void srv_metrics_http(const char *route, unsigned status);
/* The Prometheus text of every metric; gauges read from the engine (may be NULL). */
char *srv_metrics_render(struct engine *e, size_t *len);

/* ---- OpenAI shapes (server/openai.c) --------------------------------------- */

struct srv_error {
    unsigned status;
    const char *type;
    const char *code; /* or NULL */
    char param[64];   /* "" for none */
    int retry_after;  /* seconds, for 429 and 503; 0: no header */
    char message[512];
};

/* Sets err; returns -1 (for `return srv_fail(...)`). */
int srv_fail(struct srv_error *err, unsigned status, const char *param, const char *code,
             const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* {"error": {...}} as text (malloc'd). */
char *srv_error_json(const struct srv_error *err);

/* The routes that run the model: chat, completions, responses (chat underneath), embeddings. */
enum srv_kind { SRV_CHAT, SRV_COMPLETION, SRV_RESPONSES, SRV_EMBED };

/* How a model writes tool calls (server/tools.c), chosen from its chat template. */
enum srv_tool_fmt { SRV_TOOLS_GENERIC = 0, SRV_TOOLS_HERMES, SRV_TOOLS_LLAMA3, SRV_TOOLS_MISTRAL };
/* tool_choice: none (no tools rendered, none parsed), auto, required, a named function. */
enum srv_tool_mode { SRV_TOOL_NONE = 0, SRV_TOOL_AUTO, SRV_TOOL_REQUIRED, SRV_TOOL_NAMED };

/* One validated completion request: its prompts and generation settings. */
struct srv_request {
    enum srv_kind kind;
    int stream, include_usage, echo;
    int n; /* choices per prompt */
    int n_prompts;
    int32_t **prompts; /* token ids of each prompt */
    int *n_prompt;
    struct eng_params p;
    int max_tokens_given;
    int top_logprobs; /* alternatives (chat top_logprobs, completions logprobs) */
    char **stop;
    char *model;          /* the name the client asked for */
    struct gram *grammar; /* the output constraint, compiled (p.grammar), or NULL */
    /* chat: tool calls and reasoning in the output (server/tools.c) */
    enum srv_tool_mode tool_mode;
    enum srv_tool_fmt tool_fmt;
    int parallel_tool_calls;
    char **tool_names; /* the functions of tools (for tool_mode other than none) */
    int n_tool_names;
    int reasoning;  /* split <think>...</think> into reasoning_content */
    int think_open; /* the prompt ends inside <think>: the output starts as reasoning */
    /* vLLM's extras */
    int prompt_lp;        /* prompt_logprobs: alternatives, or -1 */
    int echo_lp;          /* completions echo with logprobs: the prompt's logprobs too */
    int continuous_usage; /* stream_options.continuous_usage_stats */
    int32_t *stop_ids;    /* stop_token_ids (p.stop_ids) */
    /* responses: the request's settings the response object repeats (srv_resp_translate) */
    cJSON *resp_echo;
    /* embeddings: base64 (else float arrays) */
    int base64;
};

struct srv_chat;
struct srv_model {
    const char *id;    /* the GGUF's basename without .gguf */
    const char *alias; /* --model-alias, or NULL */
    long created;
    const struct srv_chat *chat; /* how chat messages become a prompt; set with the engine */
    int embeddings;              /* --embeddings: /v1/embeddings is served */
    int pooling;                 /* --pooling as enum eng_pool; ENG_POOL_NONE: auto */
};

/*
 * A request body as a JSON object, or NULL with a 400 in err: the body must
 * be strict UTF-8 without raw control bytes or \u0000 (which cJSON would let
 * through or cut a string at), one JSON object and nothing after it.
 */
cJSON *srv_parse_json(const char *body, size_t len, struct srv_error *err);
/*
 * Token-id arrays read without a cJSON node per id: srv_parse_json, except
 * that every array of 32 or more plain integers is read into ids and stands
 * in the tree as an object srv_ids_get recognises (its key is a random
 * nonce of this parse: clients cannot forge it).
 */
struct srv_ids {
    int32_t *v; /* every run's values */
    size_t n, cap;
    size_t *start, *len; /* run i: v[start[i]] .. v[start[i] + len[i]) */
    int n_runs, cap_runs;
    char key[24]; /* the stand-in object's key: this parse's nonce */
};
cJSON *srv_parse_json_ids(const char *body, size_t len, struct srv_ids *ids, struct srv_error *err);
/* 1 with the ids when v stands for a run of ids, else 0. */
int srv_ids_get(const struct srv_ids *ids, const cJSON *v, const int32_t **out, int *n);
void srv_ids_free(struct srv_ids *ids);
/* Parses and checks a chat or completion body; 0, or -1 with err set. */
int srv_parse_request(enum srv_kind kind, const char *body, size_t len, struct engine *e,
                      const struct srv_model *model, struct srv_request *req,
                      struct srv_error *err);
/* A /v1/embeddings body (input, encoding_format, dimensions); 0, or -1 with err set. */
int srv_parse_embeddings(const char *body, size_t len, struct engine *e,
                         const struct srv_model *model, struct srv_request *req,
                         struct srv_error *err);
/* A /v1/responses body, checked as the chat body it becomes (srv_resp_translate). */
int srv_parse_responses(const char *body, size_t len, struct engine *e,
                        const struct srv_model *model, struct srv_request *req,
                        struct srv_error *err);
void srv_request_free(struct srv_request *req);

/* ---- the Responses API (server/responses.c) ---------------------------------- */

/*
 * A /v1/responses body as the chat completions body that runs it: input
 * (a string or a list of messages with text parts) and instructions become
 * messages; max_output_tokens, temperature, top_p, stream and text.format
 * map to their chat fields.  *echo gets the settings the response object
 * repeats.  NULL with a 400 in err naming a field cinfer cannot honour
 * (store true, previous_response_id, tools, background...).
 */
cJSON *srv_resp_translate(const cJSON *root, cJSON **echo, struct srv_error *err);
/* The chat field a parse error named, as the Responses field ("messages" -> "input"). */
void srv_resp_param(struct srv_error *err);
/*
 * The response object: status "in_progress", "completed", "incomplete"
 * (max_output_tokens) or "failed"; msg: the chat message the output is
 * ({"reasoning_content", "content", "tool_calls"}: a reasoning item when
 * there is reasoning, a message item unless it is only calls, then a
 * function_call item per call), or NULL: no output yet.
 */
struct srv_resp {
    const char *id, *msg_id, *rs_id, *model;
    long created;
    const cJSON *echo;
    int input_tokens, output_tokens, cached_tokens, reasoning_tokens;
};
cJSON *srv_resp_object(const struct srv_resp *r, const char *status, const cJSON *msg,
                       const char *error);
/* An output_text part, and a message item holding one (text NULL: no part yet). */
cJSON *srv_resp_text_part(const char *text);
cJSON *srv_resp_message_item(const char *id, const char *text, const char *status);
/* A reasoning output item (text NULL: no content part yet). */
cJSON *srv_resp_reasoning_item(const char *id, const char *text, const char *status);
/* A function_call output item for a tool call (its id: fc_ and the call id's suffix). */
cJSON *srv_resp_call_item(const char *call_id, const char *name, const char *args,
                          const char *status);
/* One streamed event: `event: TYPE` and `data: {"type": TYPE, "sequence_number": N, ...o}`. */
int srv_resp_event(struct buf *out, const char *type, int *seq, cJSON *o);

/*
 * A running completion: every choice of a request submitted to the engine,
 * and the output it has produced so far in OpenAI's shape (server/openai.c).
 */
struct srv_job;
enum { SRV_JOB_WAIT = 0, SRV_JOB_MORE = 1, SRV_JOB_DONE = 2 };
/* Called on the engine's thread whenever one of the job's choices has an event (see eng_notify). */
struct srv_wake {
    void (*cb)(void *arg);
    void *arg;
};
/*
 * Submits every choice as one admission decision (all or none); takes req
 * over (also on failure).  wake may be NULL.  0, or -1 with err set: 400
 * when the fan-out could never be queued, 429 when it could be later.
 */
int srv_job_start(struct engine *e, const struct srv_model *model, struct srv_request *req,
                  const struct srv_wake *wake, struct srv_job **out, struct srv_error *err);
/*
 * Appends whatever is ready to out: SSE events, or the whole JSON response
 * once every choice has ended.  Waits up to timeout_ms when nothing is.
 * Returns SRV_JOB_MORE (appended; call again), SRV_JOB_WAIT (nothing yet) or
 * SRV_JOB_DONE (the last output is appended), or -ENOMEM.
 */
int srv_job_pump(struct srv_job *j, struct buf *out, int timeout_ms);
int srv_job_stream(const struct srv_job *j);
/* 200, or once SRV_JOB_DONE was returned for a failed job, the status its error names */
int srv_job_status(const struct srv_job *j);
void srv_job_usage(const struct srv_job *j, int *prompt, int *completion);
void srv_job_cancel(struct srv_job *j);
void srv_job_free(struct srv_job *j);

/* ---- HTTP (server/http.c) ---------------------------------------------------- */

struct srv;

/* Starts listening (the engine may still be loading: /health says 503). */
int srv_start(const struct srv_config *cfg, const struct srv_model *model, struct srv **out,
              char *err, size_t errlen);
/*
 * Requires 'Authorization: Bearer key' on every route but /health and /metrics, never of
 * OPTIONS (a CORS preflight); NULL: no key.
 */
int srv_set_api_key(struct srv *s, const char *key);
/* Hands the loaded engine and its chat template to the server; from now on requests are served. */
void srv_set_engine(struct srv *s, struct engine *e, const struct srv_chat *chat);
unsigned srv_port(const struct srv *s);
/* The connection limit in effect (--max-connections, or less when the open-file limit says so). */
unsigned srv_max_connections(const struct srv *s);
/* Stops accepting connections (those open go on). */
void srv_quiesce(struct srv *s);
/* HTTP requests being answered now. */
int srv_inflight(struct srv *s);
/* Stops listening and waits for the connection threads. */
void srv_stop(struct srv *s);

/* Appends to a log line in the configured format (server/http.c). */
void srv_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- chat templates (server/chat.c) ---------------------------------------- */

struct srv_chat {
    struct tpl *tpl;            /* the Jinja template, or NULL: the built-in format */
    enum tok_chat builtin;      /* the fallback for a GGUF without a template */
    char origin[320];           /* where the template came from, for logs */
    char *bos, *eos;            /* the texts of the model's BOS and EOS tokens ("" if none) */
    int add_bos;                /* the model wants a BOS first */
    enum srv_tool_fmt tool_fmt; /* how its template has the model call tools */
    int think;                  /* its template knows <think> ... </think> */
};
/*
 * The chat template of the engine's model, or of file when set (the
 * --chat-template override).  0, or a negative code with a one-line message
 * (a file that cannot be read, a template that does not compile).
 */
int srv_chat_load(struct srv_chat *c, struct engine *e, const char *file, char *err, size_t errlen);
void srv_chat_free(struct srv_chat *c);
/* Renders with the built-in format fmt from now on, not the template (`run --chat-template NAME`).
 */
void srv_chat_use_builtin(struct srv_chat *c, enum tok_chat fmt);
/*
 * A chat request body's messages (with tools, chat_template_kwargs and
 * add_generation_prompt) rendered to prompt text; *add_bos says whether
 * the tokenizer should put a BOS first.  0, or -1 with err set (400 naming
 * the field, or what the template said).
 */
int srv_chat_prompt(const struct srv_chat *c, const cJSON *root, struct buf *prompt, int *add_bos,
                    struct srv_error *err);

/* ---- tool calls and reasoning (server/tools.c) -------------------------------- */

/* Sets c->tool_fmt and c->think from a template's source. */
void srv_chat_detect(struct srv_chat *c, const char *src, size_t n);
/*
 * A chat body's tools, tool_choice and parallel_tool_calls, into r; for
 * tool_choice required or a named function *spec is the GRAM_TOOL_CALLS
 * spec (kind "tool_calls") to compile (caller frees).  0 or -1 with err set.
 */
int srv_tools_request(const cJSON *root, const struct srv_chat *chat, struct srv_request *r,
                      cJSON **spec, struct srv_error *err);

/* One choice's output, split as it streams into content, reasoning and tool calls. */
struct srv_outp {
    enum srv_tool_fmt fmt;
    int tools, reasoning, max_calls; /* max_calls -1: no bound */
    int state;
    int started;        /* content other than space has been released */
    const char *marker; /* what opened the call being held */
    struct buf hold;    /* text not yet decided */
    int n_calls;
    const char *const *names; /* the request's functions (its srv_request outlives this) */
    int n_names;
    /* a call the grammar forces (hermes), streamed as it comes: see forced_call */
    int forced, inc_stage, inc_index, inc_depth, inc_str, inc_esc;
    size_t inc_pos, inc_sent;
};
/*
 * What one feed released: text to append, and call deltas: {"index", "id",
 * "name"} opens a call, {"index", "arguments"} adds to its arguments.
 */
struct srv_outp_out {
    struct buf content, reasoning;
    cJSON *calls; /* an array of deltas, or NULL */
};
void srv_outp_init(struct srv_outp *p, const struct srv_request *r);
/* 1 when the request asks for any splitting at all. */
int srv_outp_active(const struct srv_outp *p);
/* 0 or -ENOMEM; the output goes to o (appended). */
int srv_outp_feed(struct srv_outp *p, const char *text, size_t n, struct srv_outp_out *o);
/* The end: what was held is decided.  0 or -ENOMEM. */
int srv_outp_finish(struct srv_outp *p, struct srv_outp_out *o);
void srv_outp_free(struct srv_outp *p);
void srv_outp_out_free(struct srv_outp_out *o);

/* ---- text (server/openai.c) ------------------------------------------------- */

/* 64 bits from the clock, the pid and a counter: ids and default seeds. */
uint64_t srv_random(void);

/* A NUL-terminated copy of n bytes as strict UTF-8 (see tok_utf8_clean); NULL on no memory. */
char *srv_utf8_dup(const char *p, size_t n);

#endif

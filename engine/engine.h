/*
 * engine/engine.h - the engine's public face: a loaded model served by one
 * engine thread (a libuv loop) that batches every running request into each
 * forward pass.  Callers hand it token ids with eng_submit() and read each
 * request's output channel from their own thread; nothing here knows HTTP.
 *
 * Also: building a model's tokenizer from its GGUF metadata.
 */
#ifndef CINFER_ENGINE_H
#define CINFER_ENGINE_H

#include <stddef.h>

#include <pthread.h>
#include <stdint.h>

#include "engine/sampler.h"
#include "tokenizer/tokenizer.h"

/*
 * A model's tokenizer without its weights (for `cinfer tokenize`): opens
 * the GGUF at path and builds the tokenizer its tokenizer.ggml.* metadata
 * describes (`spm_model`, when not NULL, is a tokenizer.model to use for a
 * SentencePiece model instead of the GGUF's pieces).  Returns 0, or a
 * negative code with a one-line message naming the missing or malformed
 * key.  eng_vocab_close accepts NULL.
 */
struct eng_vocab;
int eng_vocab_open(const char *path, const char *spm_model, struct eng_vocab **out, char *err,
                   size_t errlen);
const struct tok *eng_vocab_tok(const struct eng_vocab *v);
void eng_vocab_close(struct eng_vocab *v);

/* ---- the serving engine (engine/loop.c, engine/sched.c, engine/request.c) ---- */

enum eng_kv_type { ENG_KV_F16 = 0, ENG_KV_F32 };

/* Tokens per KV block unless eng_config.kv_block says otherwise. */
#define ENG_DEFAULT_KV_BLOCK 16

struct eng_config {
    const char *device;       /* backend: "cpu", "ppu" or "auto" (NULL: auto); see dev_create */
    int threads;              /* CPU worker threads; 0: the number of cores */
    const char *kernels;      /* CPU inner loops: NULL/"auto", "scalar", "avx2"... (dev_config) */
    int exact_llamacpp;       /* CPU: llama.cpp's AVX2 arithmetic step for step (dev_config) */
    int ctx;                  /* tokens per sequence at most; 0: the model's trained context */
    int kv_block;             /* tokens per KV block; 0: ENG_DEFAULT_KV_BLOCK */
    int64_t kv_memory_mib;    /* KV pool size; 0: 4 full contexts, capped by free RAM */
    enum eng_kv_type kv_type; /* the K/V cache's number format */
    int max_seqs;             /* sequences in one forward pass; 0: 64 */
    int max_batch_tokens;     /* tokens in one forward pass; 0: 512 */
    /*
     * A forward pass's time at most, in ms, as the engine estimates it from
     * the passes it has timed: prefill chunks are sized to fit what the
     * running sequences' decode tokens leave (at least one KV block a step).
     * 0: the default (100); < 0: no time bound, only max_batch_tokens.
     */
    int max_step_ms;
    int max_queue;            /* sequences waiting at most (each choice one); 0: 256 */
    int64_t max_queue_tokens; /* prompt tokens waiting at most; 0: 64 full contexts */
    int no_prefix_cache;      /* 1: do not reuse cached prompt blocks */
    double request_timeout;   /* seconds from submit to the end; 0: none */
    /*
     * Grammars compiling at once at most (eng_grammar_compile runs on its
     * caller's thread, e.g. an HTTP worker; past this, -EBUSY at once, so
     * that slow schemas cannot take every worker); 0: 2.
     */
    int max_grammar_compiles;
    /*
     * Tests only: no engine thread.  The caller drives the engine on its own
     * thread through engine/sched.h (eng_take_incoming, sched_step,
     * sched_update or eng_step); eng_destroy ends what is left.
     */
    int manual;
};

struct engine;
struct eng_req;
struct gram;

/* What a loaded engine serves. */
struct eng_info {
    int n_ctx, n_vocab;
    int kv_block;
    int32_t kv_blocks;         /* usable blocks in the pool */
    const char *arch;          /* "llama", "qwen2", "qwen3" */
    const char *backend;       /* "cpu" or "ppu" */
    const char *kernels;       /* the backend's kernels: "avx2", "scalar"... */
    enum tok_chat chat;        /* the model's chat format (chatml when unknown) */
    int chat_known;            /* 0: the template was not recognised */
    const char *chat_template; /* tokenizer.chat_template (not NUL-terminated), or NULL */
    size_t chat_template_len;
    int n_embd;            /* the hidden state's width */
    int pooling;           /* the GGUF's pooling type as enum eng_pool, or -1: it has none */
    char device_note[160]; /* why --device auto passed over a built-in PPU ("" when it did not) */
};

/*
 * Loads the GGUF at path, builds its tokenizer, device and KV pool, and
 * starts the engine thread.  Returns 0, or a negative code with a one-line
 * message: -EINVAL (bad model or config), -ENOMEM, or another errno.
 */
int eng_create(const char *path, const struct eng_config *cfg, struct engine **out, char *err,
               size_t errlen);
/*
 * Stops the engine thread: every queued or running request ends with
 * ENG_FINISH_ERROR ("the server is shutting down") and later submits fail.
 * Handles stay valid (their channels can still be read) until released.
 */
void eng_stop(struct engine *e);
/* eng_stop, then frees it all; NULL is fine.  Release every handle first. */
void eng_destroy(struct engine *e);
const struct tok *eng_tok(const struct engine *e);
void eng_get_info(const struct engine *e, struct eng_info *out);

/*
 * 0 when eng_config.device `name` can run on this build and machine, else
 * -EINVAL with a one-line message (an unknown name, or a backend this build
 * or machine lacks); cheap, for checking a setting before loading.
 */
int eng_device_check(const char *name, const char *kernels, char *err, size_t errlen);
/* The CPU kernel paths this build and CPU can run: "scalar avx2" (dev_kernels_here). */
const char *eng_kernels_here(void);

/* The device backends this build has, space-separated ("cpu", "cpu ppu"). */
const char *eng_devices_built(void);

/* vLLM's iteration_tokens_total buckets: 1, 8, 16, 32, ... 16384 tokens. */
#define ENG_STEP_BUCKETS 13
#define ENG_STEP_LE(i) ((i) ? 4 << (i) : 1)

/* Gauges and counters, read without stopping the engine. */
struct eng_stats {
    int running, waiting;
    int32_t kv_used, kv_total; /* blocks */
    uint64_t preemptions;
    uint64_t prefix_queries, prefix_hits; /* prompt tokens looked up / found cached */
    int draining;
    /*
     * Tokens per forward pass, counted as vLLM's iteration_tokens_total
     * counts them: each token sampled, plus a sequence's whole prompt in the
     * pass that samples its first token.  step_n[i]: the passes with more
     * than step_le[i - 1] and at most step_le[i] (step_n[ENG_STEP_BUCKETS]:
     * more than the last bound); step_tokens: their sum.
     */
    int step_le[ENG_STEP_BUCKETS];
    uint64_t step_n[ENG_STEP_BUCKETS + 1];
    uint64_t step_tokens;
};
/* Refuses new requests from now on (-ESHUTDOWN); running and queued ones go on. */
void eng_drain(struct engine *e);
/* 1 when no request is queued or running. */
int eng_idle(struct engine *e);
/* 1 when the waiting queue is at --max-queue (the next request would get -EBUSY). */
int eng_queue_full(struct engine *e);
void eng_get_stats(struct engine *e, struct eng_stats *out);
/*
 * How long the engine thread has given no sign of life, in seconds, when
 * that is over ENG_STALL_MIN_S and over ENG_STALL_STEPS times its longest
 * step so far (it ticks every 100 ms and beats after every step); else 0.
 * GET /health answers 503 then, so a liveness probe restarts a wedged
 * engine instead of trusting a server that still accepts connections.
 */
#define ENG_STALL_MIN_S 30.0
#define ENG_STALL_STEPS 10.0
double eng_stalled_s(struct engine *e);

/*
 * A wake-up several requests share, so that one reader can wait for the
 * next event of any of them (n choices, several prompts).  It must outlive
 * the handles that use it: the engine stops touching it once
 * eng_req_release() returns for each of them.
 */
struct eng_notify {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t count; /* bumped on every event */
    /*
     * Also called on every event, on the engine's thread with mu held (NULL:
     * none; set before the first submit).  It must not block nor call back
     * into the engine: an event loop's "wake up" (a resume, a write to a
     * pipe) is what it is for.
     */
    void (*wake_cb)(void *arg);
    void *wake_arg;
};
void eng_notify_init(struct eng_notify *n);
void eng_notify_destroy(struct eng_notify *n);
/* Waits up to timeout_ms for count to move past *seen; updates *seen.  0 or -EAGAIN. */
int eng_notify_wait(struct eng_notify *n, uint64_t *seen, int timeout_ms);

/* One request's generation settings; eng_submit copies everything. */
struct eng_params {
    struct smp_params sp;
    int max_tokens;          /* >= 0 (0: the prompt only); cut to what the context leaves */
    int ignore_eos;          /* keep going past end-of-generation tokens */
    const char *const *stop; /* n_stop NUL-terminated stop strings (non-empty) */
    int n_stop;
    int logprobs;              /* 1: report each token's logprob and sp.n_logprobs alternatives */
    struct eng_notify *notify; /* also signalled on each event, or NULL */
    /*
     * The grammar the output must follow (eng_grammar_compile), or NULL.
     * Each sampled token is one the grammar allows next; an end token only
     * where the grammar may end; the sequence ends ("stop") as soon as the
     * grammar is complete.  Logprobs stay the model's raw distribution.
     * The engine takes its own reference.
     */
    struct gram *grammar;
    /*
     * vLLM's extras.  min_tokens: no end-of-generation token, stop token or
     * stop string ends the output before this many tokens.  stop_ids: tokens
     * that end it ("stop"), even with ignore_eos; a control token's text is
     * left out, another's is kept.  include_stop: the stop string that ends
     * it is released with the text.  keep_special: control tokens' text
     * appears in the output (vLLM's skip_special_tokens false).
     */
    int min_tokens;
    const int32_t *stop_ids;
    int n_stop_ids;
    int include_stop;
    int keep_special;
    /*
     * Log-probabilities of the prompt's tokens: prompt_logprobs 1 asks for
     * an ENG_EV_PROMPT event for each prompt token after the first, in
     * order, before any generated token, with its rank and prompt_top
     * alternatives (0 to SMP_MAX_LOGPROBS).  Tokens found in the prefix
     * cache are computed again where their logits are needed.
     */
    int prompt_logprobs, prompt_top;
    /*
     * Not ENG_POOL_NONE: an embedding request.  Nothing is generated
     * (max_tokens is ignored); the END event ("stop") carries the pooled
     * final hidden state (after the output norm), L2-normalised.
     */
    int pooling; /* enum eng_pool */
};

/* How an embedding request pools its tokens' hidden states. */
enum eng_pool { ENG_POOL_NONE = 0, ENG_POOL_MEAN, ENG_POOL_CLS, ENG_POOL_LAST };

/*
 * Compiles a constraint for this engine's vocabulary: kind "json_schema"
 * (src: the schema's JSON text), "json_object" (any object; src ignored),
 * "regex", "choice" (a JSON array of strings), "gbnf" or "tool_calls" (the
 * spec of GRAM_TOOL_CALLS in grammar/gram.h).  Thread-safe;
 * recent sources are cached.  Returns 0 with *out (release it with
 * eng_grammar_release once submitted or given up), or a negative code with a
 * one-line message naming the problem (for a schema, its JSON pointer);
 * -EBUSY when max_grammar_compiles others are compiling (a cached source
 * is always served).
 */
int eng_grammar_compile(struct engine *e, const char *kind, const char *src, size_t len,
                        struct gram **out, char *err, size_t errlen);
void eng_grammar_release(struct gram *g);

/*
 * For `cinfer bench --grammar`: compiles src for the vocabulary of ev, then
 * walks each document's tokens (rounds times, a fresh matcher each time, the
 * grammar's caches kept as a server keeps them) timing each token's mask.
 * Returns 0, or a negative code with a message (a document that does not
 * follow the grammar is an error).
 */
struct eng_gbench_times {
    int n;
    double mean_us, p50_us, p99_us, max_us;
};
struct eng_gbench {
    int n_vocab, rules, positions;
    double compile_ms, tables_ms, table_mib;
    struct eng_gbench_times first_doc; /* the first document, with nothing cached */
    struct eng_gbench_times all;       /* every token of every round */
};
int eng_grammar_bench(const struct eng_vocab *ev, const char *kind, const char *src, size_t len,
                      const char *const *docs, int n_docs, int rounds, struct eng_gbench *out,
                      char *err, size_t errlen);

enum eng_finish {
    ENG_FINISH_NONE = 0,
    ENG_FINISH_STOP,      /* an end-of-generation token or a stop string */
    ENG_FINISH_LENGTH,    /* max_tokens or the context */
    ENG_FINISH_CANCELLED, /* eng_cancel() */
    ENG_FINISH_ERROR,     /* the engine failed; see the event's text */
    ENG_FINISH_TIMEOUT,   /* ran past eng_config.request_timeout; the text says so */
};
const char *eng_finish_name(enum eng_finish f); /* "stop", "length", ... */

/*
 * One event of a request's output channel.  ENG_EV_TOKEN: one sampled
 * token, with the text it released (possibly empty: held back as a partial
 * character or a partial stop string; possibly more than its own piece).
 * ENG_EV_END: the request is over; `text` has any text released at the end,
 * or the error message for ENG_FINISH_ERROR.  ENG_EV_PROMPT: the log-
 * probability of one prompt token (eng_params.prompt_logprobs), no text.
 * The reader owns the event until eng_event_clear().
 */
enum eng_ev_kind { ENG_EV_TOKEN = 1, ENG_EV_END, ENG_EV_PROMPT };
struct eng_event {
    enum eng_ev_kind kind;
    char *text;
    size_t n_text;
    double t; /* when it was produced (CLOCK_MONOTONIC seconds) */
    /* ENG_EV_TOKEN */
    int32_t token;
    float logprob;
    int n_top;
    struct smp_result *top; /* the sampler's result (token, logprob, alternatives) */
    /* ENG_EV_PROMPT: token (a prompt token), logprob, rank (1: the most likely), top */
    int rank;
    /* ENG_EV_END */
    enum eng_finish finish;
    float *embd; /* an embedding request's vector (n_embd floats), or NULL */
    int n_embd;
    int prompt_tokens, completion_tokens, cached_tokens;
    double t_submit, t_scheduled, t_first_token; /* 0 when it never happened */
};
void eng_event_clear(struct eng_event *ev);

/*
 * Queues a request; never waits for the forward pass.  On success *out is a
 * handle the caller must eventually give to eng_req_release().  Returns 0,
 * -EINVAL (empty prompt, bad token id, bad parameters; message in err),
 * -E2BIG (prompt too long for the context or the pool; message with the
 * numbers), -EBUSY (the waiting queue is full: --max-queue or
 * --max-queue-tokens), -ESHUTDOWN (draining or stopping), -ENOMEM.
 */
int eng_submit(struct engine *e, const int32_t *prompt, int n_prompt, const struct eng_params *p,
               struct eng_req **out, char *err, size_t errlen);

/* One sequence of eng_submit_n. */
struct eng_sub {
    const int32_t *prompt;
    int n_prompt;
    const struct eng_params *p;
};
/*
 * Queues n sequences (a request's prompts x choices) as one decision: all of
 * them, or none.  out has room for n handles, filled on success.  Returns
 * what eng_submit does, and -ERANGE when the n sequences together exceed
 * what the queue can ever hold (--max-queue, --max-queue-tokens), so that
 * retrying could not help (unlike -EBUSY).
 */
int eng_submit_n(struct engine *e, int n, const struct eng_sub *subs, struct eng_req **out,
                 char *err, size_t errlen);
/*
 * Takes the next event: waits up to timeout_ms (0: do not wait, < 0: for
 * ever).  Returns 0 with *ev filled, -EAGAIN when nothing came in time, or
 * -ENODATA after the END event was taken.
 */
int eng_req_next(struct eng_req *r, struct eng_event *ev, int timeout_ms);
/* Asks the engine to stop the request (queued or running) within a step. */
void eng_cancel(struct eng_req *r);
/* Drops the caller's handle (cancelling the request if it still runs). */
void eng_req_release(struct eng_req *r);

#endif

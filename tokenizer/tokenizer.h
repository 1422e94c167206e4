/*
 * tokenizer/tokenizer.h - text <-> token ids for the models cinfer serves.
 *
 * Two families, picked by the GGUF's tokenizer.ggml.model:
 *   "gpt2"  - byte-level BPE (SmolLM2, Qwen2/2.5/3, Llama 3): a pre-tokenizer
 *             regex (PCRE2, Unicode properties) named by tokenizer.ggml.pre,
 *             then merges by rank;
 *   "llama" - SentencePiece (Llama 2, TinyLlama, Mistral, Gemma) through the
 *             sentencepiece library (see spm_c.h).
 * Special tokens (control tokens such as <|im_start|>) are matched in text
 * only when the caller passes TOK_PARSE_SPECIAL; user-defined (added) tokens
 * are always matched, as in llama.cpp and Hugging Face tokenizers.
 *
 * This module knows nothing about GGUF: the caller describes the vocabulary
 * in a struct tok_desc.  A struct tok is immutable after tok_create() and may
 * be used from several threads at once.
 */
#ifndef CINFER_TOKENIZER_H
#define CINFER_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

/* Token types, numbered as in GGUF (tokenizer.ggml.token_type) and SentencePiece. */
enum tok_type {
    TOK_TYPE_UNDEFINED = 0,
    TOK_TYPE_NORMAL = 1,
    TOK_TYPE_UNKNOWN = 2,
    TOK_TYPE_CONTROL = 3,
    TOK_TYPE_USER_DEFINED = 4,
    TOK_TYPE_UNUSED = 5,
    TOK_TYPE_BYTE = 6,
};

/* A byte string that is not NUL-terminated. */
struct tok_bytes {
    const char *p;
    size_t n;
};

struct tok_desc {
    const char *model; /* "gpt2" or "llama" */
    const char *pre;   /* pre-tokenizer name (BPE), NULL for the default */
    size_t n_vocab;
    const struct tok_bytes *tokens; /* n_vocab token texts */
    const float *scores;            /* n_vocab scores, or NULL */
    const int32_t *types;           /* n_vocab enum tok_type, or NULL (all normal) */
    size_t n_merges;
    const struct tok_bytes *merges;  /* "left right", rank = index (BPE only) */
    int32_t bos, eos, eot, unk, pad; /* -1 when the model has none */
    int add_bos;                     /* the model wants BOS prepended: 1, 0, -1 for the default */
    int add_space_prefix;            /* SentencePiece dummy prefix: 1, 0, or -1 for the default */
    int remove_extra_whitespaces;    /* SentencePiece normalizer flag */
    const char *spm_model_path;      /* a tokenizer.model to use instead of the tokens (SPM) */
};

struct tok;

/* Flags for tok_encode(). */
#define TOK_ADD_BOS 1u       /* prepend the BOS token */
#define TOK_PARSE_SPECIAL 2u /* match control tokens written in the text */

/*
 * Builds a tokenizer.  Returns 0 and sets *out, or a negative errno-style code
 * with a one-line message in err: -EINVAL for an unknown tokenizer model or
 * pre-tokenizer, a malformed vocabulary or merge list; -ENOMEM.
 */
int tok_create(const struct tok_desc *d, struct tok **out, char *err, size_t errlen);
void tok_destroy(struct tok *t);

/*
 * Encodes `len` bytes of `text` (invalid UTF-8 is read as U+FFFD).  Writes up
 * to `cap` ids and returns how many the whole text needs, which is never more
 * than 3 * len + 2; call again with a larger buffer when the result exceeds cap.
 * Returns a negative code on failure: -ENOMEM, or -EINVAL when the
 * vocabulary cannot spell the text (sentencepiece refuses it).
 */
int64_t tok_encode(const struct tok *t, const char *text, size_t len, unsigned flags, int32_t *ids,
                   size_t cap);

/*
 * tok_encode into a buffer it allocates: *out (the caller frees it; NULL on
 * failure) holds the ids.  Returns their count or a negative code as
 * tok_encode does.
 */
int64_t tok_encode_alloc(const struct tok *t, const char *text, size_t len, unsigned flags,
                         int32_t **out);
size_t tok_n_vocab(const struct tok *t);
int32_t tok_bos(const struct tok *t);
int32_t tok_eos(const struct tok *t);
int tok_add_bos(const struct tok *t);            /* what the model's metadata asks */
int tok_is_eog(const struct tok *t, int32_t id); /* EOS, EOT or another end-of-generation token */
enum tok_type tok_type(const struct tok *t, int32_t id);

/* The vocabulary entry of `id` as stored in the model (e.g. "Ġthe"), or NULL. */
const char *tok_text(const struct tok *t, int32_t id, size_t *len);

/*
 * The bytes `id` stands for in output text, or NULL for an id out of range.
 * Control and unknown tokens are empty unless `special` is set.
 */
const char *tok_piece(const struct tok *t, int32_t id, int special, size_t *len);

/* Incremental detokenizer: never emits a broken UTF-8 sequence. */
struct tok_detok {
    const struct tok *t;
    unsigned flags;
    int started;
    size_t n_hold;
    unsigned char hold[4]; /* bytes of an unfinished character */
};

#define TOK_DETOK_SPECIAL 1u /* render control tokens' text */
#define TOK_DETOK_STRIP_SPACE                                                                      \
    2u /* drop the SentencePiece dummy-prefix space of the first                                   \
          piece with text: for decoding a whole prompt */

void tok_detok_init(struct tok_detok *d, const struct tok *t, unsigned flags);

/*
 * Appends the text of `id` to out: complete characters only; bytes of a
 * character still being spelled by byte tokens are held; bytes that can never
 * form a valid character become U+FFFD.  Returns 0, -EINVAL for an id out of
 * range, or -ENOMEM.
 */
int tok_detok_feed(struct tok_detok *d, int32_t id, struct buf *out);

/* End of stream: held bytes become U+FFFD.  Returns 0 or -ENOMEM. */
int tok_detok_flush(struct tok_detok *d, struct buf *out);

/*
 * Appends text to out as strict UTF-8 (no overlong forms, surrogates or code
 * points past U+10FFFF): each byte that does not begin a valid character
 * becomes U+FFFD.  For text bound for JSON.  Returns 0 or -ENOMEM.
 */
int tok_utf8_clean(const char *text, size_t len, struct buf *out);

/* ---- chat templates (tokenizer/chat.c) ---------------------------------- */

/* Built-in chat formats; a model's Jinja template is recognised, not run. */
enum tok_chat {
    TOK_CHAT_CHATML,  /* <|im_start|>role\n...<|im_end|> (SmolLM2, Qwen) */
    TOK_CHAT_LLAMA2,  /* [INST] <<SYS>>...<</SYS>> ... [/INST] */
    TOK_CHAT_LLAMA3,  /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
    TOK_CHAT_MISTRAL, /* [INST] ... [/INST] */
    TOK_CHAT_GEMMA,   /* <start_of_turn>role\n...<end_of_turn> */
};

struct tok_msg {
    const char *role; /* "system", "developer", "user", "assistant", "tool" */
    const char *content;
};

/* The format a tokenizer.chat_template uses: 0, or -ENOENT when unknown. */
int tok_chat_detect(const char *tmpl, size_t len, enum tok_chat *out);
/* A format by name ("chatml", "llama2", "llama3", "mistral", "gemma"): 0 or -ENOENT. */
int tok_chat_from_name(const char *name, enum tok_chat *out);
const char *tok_chat_name(enum tok_chat c);

/*
 * Renders messages as prompt text (special tokens spelled out, to be encoded
 * with TOK_PARSE_SPECIAL), ending with the assistant's turn opening when
 * add_generation_prompt is set.  Returns 0, -EINVAL for an unknown role, or
 * -ENOMEM.  No BOS is written; encode with TOK_ADD_BOS as the model asks.
 */
int tok_chat_render(enum tok_chat c, const struct tok_msg *msgs, int n, int add_generation_prompt,
                    struct buf *out);

#endif

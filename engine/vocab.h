/*
 * engine/vocab.h - private to engine/ (and its tests): the tokenizer a
 * GGUF's metadata describes.
 */
#ifndef CINFER_ENGINE_VOCAB_H
#define CINFER_ENGINE_VOCAB_H

#include <stddef.h>

#include "engine/gguf.h"
#include "tokenizer/tokenizer.h"

/*
 * Builds the tokenizer a GGUF describes (tokenizer.ggml.*).  `spm_model`, when
 * not NULL, is a tokenizer.model to use for a SentencePiece model instead of
 * the GGUF's pieces.  Returns 0 and sets *out, or a negative code with a
 * one-line message naming the missing or malformed key.
 */
int eng_tokenizer_load(const struct gguf_file *g, const char *spm_model, struct tok **out,
                       char *err, size_t errlen);

#endif

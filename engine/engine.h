/*
 * engine/engine.h - the engine's public face.
 *
 * For now: building a model's tokenizer from its GGUF metadata.  The request
 * interface of DESIGN.md (engine_submit / engine_cancel / output channels)
 * joins it with the engine issue.
 */
#ifndef CINFER_ENGINE_H
#define CINFER_ENGINE_H

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

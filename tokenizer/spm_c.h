/*
 * tokenizer/spm_c.h - a small C API over the sentencepiece library.
 *
 * The library only takes a serialized ModelProto; we build one from the
 * pieces, scores and token types a GGUF carries (BPE model, identity
 * normalizer, byte fallback when the vocabulary has byte pieces), or load a
 * tokenizer.model file as it is.  The implementation is one C++ file
 * (spm_c.cc) with extern "C" entry points; nothing C++ leaks out, and no
 * call throws or aborts.
 */
#ifndef CINFER_TOKENIZER_SPM_C_H
#define CINFER_TOKENIZER_SPM_C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct spm_c;

/* Same layout as struct tok_bytes. */
struct spm_c_bytes {
    const char *p;
    size_t n;
};

/* A vocabulary as a GGUF describes it (types use SentencePiece's numbering). */
struct spm_c_vocab {
    size_t n;
    const struct spm_c_bytes *pieces;
    const float *scores;  /* NULL: all 0 */
    const int32_t *types; /* NULL: all normal */
    int add_dummy_prefix;
    int remove_extra_whitespaces;
};

/* Builds a processor from a vocabulary: 0, or -EINVAL/-ENOMEM with a message. */
int spm_c_create(const struct spm_c_vocab *v, struct spm_c **out, char *err, size_t errlen);

/* Loads a tokenizer.model file: 0, or a negative code with a message. */
int spm_c_create_from_file(const char *path, struct spm_c **out, char *err, size_t errlen);

void spm_c_destroy(struct spm_c *sp);

/*
 * The processor's vocabulary (pieces, scores, types, add_dummy_prefix); the
 * pointers stay valid until spm_c_destroy.  Returns 0.
 */
int spm_c_get_vocab(const struct spm_c *sp, struct spm_c_vocab *out);

/*
 * Encodes text and appends the ids to the growable array (*ids, *n, *cap),
 * which is realloc'd as needed.  Returns 0, -EINVAL when the library refuses
 * the input, or -ENOMEM.
 */
int spm_c_encode(const struct spm_c *sp, const char *text, size_t len, int32_t **ids, size_t *n,
                 size_t *cap);

/* Serializes a ModelProto for the vocabulary into a malloc'd buffer (tests, fuzzing). */
int spm_c_model_proto(const struct spm_c_vocab *v, char **out, size_t *len);

#ifdef __cplusplus
}
#endif

#endif

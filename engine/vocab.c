/*
 * engine/vocab.c - turns a GGUF's tokenizer.ggml.* metadata into a
 * struct tok_desc and builds the tokenizer.  Every array is checked for its
 * element type and length before use; scores and types are copied out of
 * the (unaligned) file data.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/vocab.h"

static int bad(char *err, size_t errlen, int rc, const char *key, const char *what)
{
    snprintf(err, errlen, "%s %s", key, what);
    return rc;
}

/* A GGUF string as a NUL-terminated copy (for names such as "gpt2"). */
static char *dup_str(const struct gguf_str *s)
{
    char *p = malloc(s->n + 1);
    if (p) {
        memcpy(p, s->p, s->n);
        p[s->n] = '\0';
    }
    return p;
}

static int32_t get_id(const struct gguf_file *g, const char *key, int32_t dflt)
{
    int64_t v;
    if (gguf_get_int(g, key, &v) != 0 || v < 0 || v > INT32_MAX)
        return dflt; /* absent or unusable: the tokenizer range-checks ids too */
    return (int32_t)v;
}

static int get_flag(const struct gguf_file *g, const char *key, int dflt)
{
    int v;
    return gguf_get_bool(g, key, &v) == 0 ? v : dflt;
}

int eng_tokenizer_load(const struct gguf_file *g, const char *spm_model, struct tok **out,
                       char *err, size_t errlen)
{
    struct tok_desc d = {0};
    struct gguf_str s;
    const struct gguf_value *v;
    char *model = NULL, *pre = NULL;
    struct tok_bytes *tokens = NULL, *merges = NULL;
    float *scores = NULL;
    int32_t *types = NULL;
    int rc = 0;

    *out = NULL;
    if (gguf_get_str(g, "tokenizer.ggml.model", &s) != 0)
        return bad(err, errlen, -EINVAL, "tokenizer.ggml.model", "is missing or not a string");
    model = dup_str(&s);
    if (gguf_get_str(g, "tokenizer.ggml.pre", &s) == 0)
        pre = dup_str(&s);
    int is_spm = model && strcmp(model, "llama") == 0;

    rc = gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &v);
    if (rc == 0) {
        d.n_vocab = (size_t)v->v.arr.n;
        tokens = malloc((d.n_vocab ? d.n_vocab : 1) * sizeof(*tokens));
        if (!tokens)
            goto oom;
        for (size_t i = 0; i < d.n_vocab; i++)
            tokens[i] = (struct tok_bytes){v->v.arr.items[i].v.str.p, v->v.arr.items[i].v.str.n};
    } else if (!(is_spm && spm_model)) {
        rc = bad(err, errlen, -EINVAL, "tokenizer.ggml.tokens", "is missing or not a string array");
        goto done;
    }
    rc = gguf_get_arr(g, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, &v);
    if (rc == 0) {
        if (v->v.arr.n != d.n_vocab) {
            rc = bad(err, errlen, -EINVAL, "tokenizer.ggml.scores",
                     "does not have one entry per token");
            goto done;
        }
        scores = malloc((d.n_vocab ? d.n_vocab : 1) * sizeof(*scores));
        if (!scores)
            goto oom;
        memcpy(scores, v->v.arr.data, d.n_vocab * sizeof(*scores));
    } else if (rc == -EINVAL) {
        rc = bad(err, errlen, -EINVAL, "tokenizer.ggml.scores", "is not a float32 array");
        goto done;
    }
    rc = gguf_get_arr(g, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, &v);
    if (rc == 0) {
        if (v->v.arr.n != d.n_vocab) {
            rc = bad(err, errlen, -EINVAL, "tokenizer.ggml.token_type",
                     "does not have one entry per token");
            goto done;
        }
        types = malloc((d.n_vocab ? d.n_vocab : 1) * sizeof(*types));
        if (!types)
            goto oom;
        memcpy(types, v->v.arr.data, d.n_vocab * sizeof(*types));
    } else if (rc == -EINVAL) {
        rc = bad(err, errlen, -EINVAL, "tokenizer.ggml.token_type", "is not an int32 array");
        goto done;
    }
    rc = gguf_get_arr(g, "tokenizer.ggml.merges", GGUF_TYPE_STRING, &v);
    if (rc == 0) {
        d.n_merges = (size_t)v->v.arr.n;
        merges = malloc((d.n_merges ? d.n_merges : 1) * sizeof(*merges));
        if (!merges)
            goto oom;
        for (size_t i = 0; i < d.n_merges; i++)
            merges[i] = (struct tok_bytes){v->v.arr.items[i].v.str.p, v->v.arr.items[i].v.str.n};
    } else if (model && strcmp(model, "gpt2") == 0) {
        rc = bad(err, errlen, -EINVAL, "tokenizer.ggml.merges", "is missing or not a string array");
        goto done;
    }

    d.model = model;
    d.pre = pre;
    d.tokens = tokens;
    d.scores = scores;
    d.types = types;
    d.merges = merges;
    d.bos = get_id(g, "tokenizer.ggml.bos_token_id", is_spm ? 1 : -1);
    d.eos = get_id(g, "tokenizer.ggml.eos_token_id", is_spm ? 2 : -1);
    d.eot = get_id(g, "tokenizer.ggml.eot_token_id", -1);
    d.unk = get_id(g, "tokenizer.ggml.unknown_token_id", is_spm ? 0 : -1);
    d.pad = get_id(g, "tokenizer.ggml.padding_token_id", -1);
    d.add_bos = get_flag(g, "tokenizer.ggml.add_bos_token", -1);
    d.add_space_prefix = get_flag(g, "tokenizer.ggml.add_space_prefix", -1);
    d.remove_extra_whitespaces = get_flag(g, "tokenizer.ggml.remove_extra_whitespaces", 0);
    d.spm_model_path = spm_model;
    rc = tok_create(&d, out, err, errlen);
    goto done;
oom:
    rc = bad(err, errlen, -ENOMEM, "tokenizer", "does not fit in memory");
done:
    free(model);
    free(pre);
    free(tokens);
    free(merges);
    free(scores);
    free(types);
    return rc;
}

struct eng_vocab {
    struct gguf_file *g;
    struct tok *t;
};

int eng_vocab_open(const char *path, const char *spm_model, struct eng_vocab **out, char *err,
                   size_t errlen)
{
    *out = calloc(1, sizeof(**out));
    if (!*out)
        return bad(err, errlen, -ENOMEM, "tokenizer", "cannot be built: out of memory");
    int rc = gguf_open(path, &(*out)->g, err, errlen);
    rc = rc ? rc : eng_tokenizer_load((*out)->g, spm_model, &(*out)->t, err, errlen);
    if (rc) {
        eng_vocab_close(*out);
        *out = NULL;
    }
    return rc;
}

const struct tok *eng_vocab_tok(const struct eng_vocab *v)
{
    return v->t;
}

void eng_vocab_close(struct eng_vocab *v)
{
    if (!v)
        return;
    tok_destroy(v->t);
    gguf_close(v->g);
    free(v);
}

/*
 * tests/ppu/make_gguf.c - random-weight GGUF models of real shapes, made on
 * the GPU machine itself (the real models do not fit in what may travel
 * there).  Enough for `cinfer bench`, for comparing backends on one file
 * and for `cinfer serve` under load: a byte-level BPE tokenizer of the
 * model's vocabulary size comes along (the 256 byte tokens, then tokens
 * "r256".. no merge makes, so text is tokenized byte by byte; no end token,
 * so every request runs to its max_tokens).  Never evidence of correctness
 * on their own.
 *
 *   make_gguf SHAPE OUT.gguf     SHAPE: smollm2-135m | qwen2.5-0.5b | llama-3.2-1b | llama-3.1-8b
 */
#include <stdio.h>
#include <string.h>

#include "engine/gguf.h"
#include "tests/ppu/tweights.h"
#include "tests/unit/gguf_writer.h"

struct shape {
    const char *name, *arch;
    int embd, layers, heads, kv_heads, ff, vocab;
    uint32_t t_attn, t_v, t_ffn, t_down, t_embd, t_out; /* t_out 0: tied */
};

static const struct shape k_shapes[] = {
    {"smollm2-135m", "llama", 576, 30, 9, 3, 1536, 49152, QT_Q4_1, QT_Q4_1, QT_Q4_1, QT_Q4_1,
     QT_Q8_0, 0},
    /* as llama.cpp's Q4_K_M makes it: rows of 896 cannot be K-quants (not a multiple of
     * 256), so Q5_0 and Q8_0 stand in; ffn_down's rows of 4864 are Q6_K */
    {"qwen2.5-0.5b", "qwen2", 896, 24, 14, 2, 4864, 151936, QT_Q5_0, QT_Q8_0, QT_Q5_0, QT_Q6_K,
     QT_Q8_0, 0},
    {"llama-3.2-1b", "llama", 2048, 16, 32, 8, 8192, 128256, QT_Q4_0, QT_Q4_0, QT_Q4_0, QT_Q4_0,
     QT_Q8_0, 0},
    {"llama-3.1-8b", "llama", 4096, 32, 32, 8, 14336, 128256, QT_Q4_K, QT_Q4_K, QT_Q4_K, QT_Q6_K,
     QT_Q4_K, QT_Q6_K},
};

/* GPT-2's byte-to-unicode map, as UTF-8: the printable bytes stand for themselves */
static void byte_token(int b, char *out)
{
    int cp = b, k = 0;
    if (!((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff))) {
        for (int c = 0; c < b; c++)
            k +=
                !((c >= 0x21 && c <= 0x7e) || (c >= 0xa1 && c <= 0xac) || (c >= 0xae && c <= 0xff));
        cp = 256 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        out[2] = 0;
    }
}

/* tokenizer.ggml.tokens of n entries (n >= 256); NULL when out of memory */
static char **vocab_tokens(int n)
{
    char **v = calloc((size_t)n, sizeof(*v));
    for (int i = 0; v && i < n; i++) {
        v[i] = malloc(16);
        if (!v[i])
            return NULL; /* the process ends on it */
        if (i < 256)
            byte_token(i, v[i]);
        else
            snprintf(v[i], 16, "r%d", i);
    }
    return v;
}

struct tdesc {
    char name[64];
    uint32_t type;
    uint64_t ne0, ne1; /* ne1 1: a vector */
};

static int add(struct tdesc *t, int n, const char *name, uint32_t type, uint64_t ne0, uint64_t ne1)
{
    snprintf(t[n].name, sizeof t[n].name, "%s", name);
    t[n].type = type;
    t[n].ne0 = ne0;
    t[n].ne1 = ne1;
    return n + 1;
}

int main(int argc, char **argv)
{
    const struct shape *s = NULL;
    for (size_t i = 0; argc == 3 && i < sizeof k_shapes / sizeof *k_shapes; i++)
        if (!strcmp(argv[1], k_shapes[i].name))
            s = &k_shapes[i];
    if (!s) {
        fprintf(stderr, "usage: make_gguf smollm2-135m|qwen2.5-0.5b|llama-3.2-1b|llama-3.1-8b "
                        "OUT.gguf\n");
        return 2;
    }
    int hd = s->embd / s->heads, qd = s->heads * hd, kvd = s->kv_heads * hd;
    int cap = 16 + s->layers * 12;
    struct tdesc *t = calloc((size_t)cap, sizeof(*t));
    int n = 0;
    n = add(t, n, "token_embd.weight", s->t_embd, s->embd, s->vocab);
    n = add(t, n, "output_norm.weight", QT_F32, s->embd, 1);
    if (s->t_out)
        n = add(t, n, "output.weight", s->t_out, s->embd, s->vocab);
    for (int l = 0; l < s->layers; l++) {
        char b[64];
#define T(suffix, type, a, c)                                                                      \
    (snprintf(b, sizeof b, "blk.%d." suffix, l), n = add(t, n, b, type, a, c))
        T("attn_norm.weight", QT_F32, s->embd, 1);
        T("attn_q.weight", s->t_attn, s->embd, qd);
        T("attn_k.weight", s->t_attn, s->embd, kvd);
        T("attn_v.weight", s->t_v, s->embd, kvd);
        T("attn_output.weight", s->t_attn, qd, s->embd);
        if (!strcmp(s->arch, "qwen2")) {
            T("attn_q.bias", QT_F32, qd, 1);
            T("attn_k.bias", QT_F32, kvd, 1);
            T("attn_v.bias", QT_F32, kvd, 1);
        }
        T("ffn_norm.weight", QT_F32, s->embd, 1);
        T("ffn_gate.weight", s->t_ffn, s->embd, s->ff);
        T("ffn_up.weight", s->t_ffn, s->embd, s->ff);
        T("ffn_down.weight", s->t_down, s->ff, s->embd);
#undef T
    }
    char **vocab = vocab_tokens(s->vocab);
    if (!vocab) {
        fprintf(stderr, "make_gguf: out of memory for the vocabulary\n");
        return 1;
    }
    struct gw w = {0};
    char key[96];
    gw_header(&w, 3, (uint64_t)n, 10);
    gw_kv_str(&w, "general.architecture", s->arch);
    gw_kv_str(&w, "tokenizer.ggml.model", "gpt2");
    gw_kv_arr_str(&w, "tokenizer.ggml.tokens", (size_t)s->vocab, (const char *const *)vocab, NULL);
    gw_kv_arr_str(&w, "tokenizer.ggml.merges", 0, NULL, NULL);
#define KV(suffix, v)                                                                              \
    (snprintf(key, sizeof key, "%s." suffix, s->arch), gw_kv_u32(&w, key, (uint32_t)(v)))
    KV("embedding_length", s->embd);
    KV("block_count", s->layers);
    KV("attention.head_count", s->heads);
    KV("attention.head_count_kv", s->kv_heads);
    KV("feed_forward_length", s->ff);
    KV("context_length", 8192);
#undef KV
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (!qt_row_size(t[i].type, t[i].ne0)) {
            fprintf(stderr, "make_gguf: %s: rows of %llu cannot be %s\n", t[i].name,
                    (unsigned long long)t[i].ne0, qt_info(t[i].type)->name);
            return 1;
        }
        uint64_t ne[2] = {t[i].ne0, t[i].ne1};
        gw_tensor(&w, t[i].name, t[i].ne1 > 1 ? 2 : 1, ne, t[i].type, off);
        off += (qt_row_size(t[i].type, t[i].ne0) * t[i].ne1 + 31) / 32 * 32;
    }
    gw_pad(&w, 32);
    for (int i = 0; i < n; i++) {
        size_t rb;
        if (t[i].ne1 == 1) { /* norms near 1, biases small */
            float *v = malloc(sizeof(float) * t[i].ne0);
            int bias = strstr(t[i].name, ".bias") != NULL;
            for (uint64_t j = 0; v && j < t[i].ne0; j++)
                v[j] = bias ? 0.1f * frand() : 1.0f + 0.1f * frand();
            gw_bytes(&w, v, sizeof(float) * t[i].ne0);
            free(v);
        } else {
            uint8_t *d = make_weight(t[i].type, (int64_t)t[i].ne1, (int64_t)t[i].ne0, &rb);
            if (!d) {
                fprintf(stderr, "make_gguf: out of memory for %s\n", t[i].name);
                return 1;
            }
            gw_bytes(&w, d, rb * t[i].ne1);
            free(d);
        }
        gw_pad(&w, 32);
    }
    if (gw_save(&w, argv[2])) {
        fprintf(stderr, "make_gguf: cannot write %s\n", argv[2]);
        return 1;
    }
    printf("make_gguf: %s: %s, %d tensors, %.1f MB\n", argv[2], s->name, n, (double)w.n / 1e6);
    gw_free(&w);
    free(t);
    return 0;
}

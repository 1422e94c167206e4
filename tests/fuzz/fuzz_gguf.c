/*
 * tests/fuzz/fuzz_gguf.c - libFuzzer target: any bytes as a GGUF file.
 * Parses a private copy of exactly the input (so ASan sees over-reads),
 * reads every value back, dequantizes small tensors, and builds and runs the
 * tokenizer the metadata describes.
 */
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/vocab.h"
#include "tests/fuzz/fuzz_common.h"
#include "util/quant.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t g_sink; /* keeps the reads from being optimized away */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    if (size)
        memcpy(copy, data, size);
    struct gguf_file *f = NULL;
    char err[256];
    if (gguf_parse(copy, size, &f, err, sizeof(err)) != 0) {
        if (!err[0])
            __builtin_trap(); /* every refusal says why */
        free(copy);
        return 0;
    }

    for (uint64_t i = 0; i < f->n_kv; i++) {
        const struct gguf_value *v = &f->kv[i].val;
        char key[128];
        size_t n = f->kv[i].key.n < sizeof(key) - 1 ? f->kv[i].key.n : sizeof(key) - 1;
        memcpy(key, f->kv[i].key.p, n);
        key[n] = '\0';
        int64_t iv;
        double dv;
        struct gguf_str sv;
        if (gguf_get_int(f, key, &iv) == 0)
            g_sink += (uint64_t)iv;
        if (gguf_get_float(f, key, &dv) == 0)
            g_sink += (uint64_t)(dv == dv);
        if (gguf_get_str(f, key, &sv) == 0 && sv.n)
            g_sink += (unsigned char)sv.p[sv.n - 1];
        if (v->type == GGUF_TYPE_ARRAY && v->v.arr.n && v->v.arr.items)
            g_sink += v->v.arr.items[v->v.arr.n - 1].type;
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        const struct qt_info *q = qt_info(t->type);
        if (!q || !q->can_dequant || t->ne[0] > 4096)
            continue;
        float row[4096];
        if (qt_dequant(t->type, t->data, row, t->ne[0]) == 0)
            g_sink += (uint64_t)(row[0] == row[0]);
    }
    struct tok *t = NULL;
    if (eng_tokenizer_load(f, NULL, &t, err, sizeof(err)) == 0) {
        static const uint8_t sample[] = "\x02Hello <s> world <|im_start|> 123 \xe4\xbd\xa0\xf0\x9f";
        fuzz_tokenizer(t, sample, sizeof(sample) - 1);
        tok_destroy(t);
    }
    gguf_close(f);
    free(copy);
    return 0;
}

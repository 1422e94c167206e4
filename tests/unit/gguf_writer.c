/* tests/unit/gguf_writer.c - see gguf_writer.h. */
#include "tests/unit/gguf_writer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"

void gw_free(struct gw *w)
{
    free(w->p);
    w->p = NULL;
    w->n = w->cap = 0;
}

void gw_bytes(struct gw *w, const void *p, size_t n)
{
    if (w->n + n > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->n + n)
            cap *= 2;
        w->p = realloc(w->p, cap);
        if (!w->p) {
            fprintf(stderr, "gguf_writer: out of memory\n");
            exit(1);
        }
        w->cap = cap;
    }
    if (n)
        memcpy(w->p + w->n, p, n);
    w->n += n;
}

static void le(struct gw *w, uint64_t v, int n)
{
    unsigned char b[8];
    for (int i = 0; i < n; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    gw_bytes(w, b, (size_t)n);
}

void gw_u32(struct gw *w, uint32_t v)
{
    le(w, v, 4);
}

void gw_u64(struct gw *w, uint64_t v)
{
    le(w, v, 8);
}

void gw_f32(struct gw *w, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    le(w, u, 4);
}

void gw_strn(struct gw *w, const char *s, size_t n)
{
    gw_u64(w, n);
    gw_bytes(w, s, n);
}

void gw_str(struct gw *w, const char *s)
{
    gw_strn(w, s, strlen(s));
}

void gw_header(struct gw *w, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    gw_bytes(w, "GGUF", 4);
    gw_u32(w, version);
    gw_u64(w, n_tensors);
    gw_u64(w, n_kv);
}

void gw_kv_str(struct gw *w, const char *key, const char *val)
{
    gw_str(w, key);
    gw_u32(w, GGUF_TYPE_STRING);
    gw_str(w, val);
}

void gw_kv_u32(struct gw *w, const char *key, uint32_t v)
{
    gw_str(w, key);
    gw_u32(w, GGUF_TYPE_UINT32);
    gw_u32(w, v);
}

void gw_kv_bool(struct gw *w, const char *key, int v)
{
    unsigned char b = (unsigned char)(v != 0);
    gw_str(w, key);
    gw_u32(w, GGUF_TYPE_BOOL);
    gw_bytes(w, &b, 1);
}

void gw_kv_arr_str(struct gw *w, const char *key, size_t n, const char *const *s,
                   const size_t *lens)
{
    gw_str(w, key);
    gw_u32(w, GGUF_TYPE_ARRAY);
    gw_u32(w, GGUF_TYPE_STRING);
    gw_u64(w, n);
    for (size_t i = 0; i < n; i++)
        gw_strn(w, s[i], lens ? lens[i] : strlen(s[i]));
}

void gw_kv_arr_f32(struct gw *w, const char *key, size_t n, const float *v)
{
    gw_str(w, key);
    gw_u32(w, GGUF_TYPE_ARRAY);
    gw_u32(w, GGUF_TYPE_FLOAT32);
    gw_u64(w, n);
    for (size_t i = 0; i < n; i++)
        gw_f32(w, v[i]);
}

void gw_kv_arr_i32(struct gw *w, const char *key, size_t n, const int32_t *v)
{
    gw_str(w, key);
    gw_u32(w, GGUF_TYPE_ARRAY);
    gw_u32(w, GGUF_TYPE_INT32);
    gw_u64(w, n);
    for (size_t i = 0; i < n; i++)
        gw_u32(w, (uint32_t)v[i]);
}

void gw_tensor(struct gw *w, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
               uint64_t offset)
{
    gw_str(w, name);
    gw_u32(w, n_dims);
    for (uint32_t i = 0; i < n_dims; i++)
        gw_u64(w, ne[i]);
    gw_u32(w, type);
    gw_u64(w, offset);
}

void gw_pad(struct gw *w, size_t alignment)
{
    static const unsigned char zero[64];
    while (w->n % alignment)
        gw_bytes(w, zero, 1);
}

int gw_save(const struct gw *w, const char *path)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t k = w->n ? fwrite(w->p, 1, w->n, f) : 0;
    return (fclose(f) == 0 && k == w->n) ? 0 : -1;
}

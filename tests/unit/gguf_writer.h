/*
 * tests/unit/gguf_writer.h - builds GGUF files byte by byte for tests: valid
 * ones (vocab-only models, every value type) and broken ones (each field can
 * be written with any value).  Test code only: aborts the test on OOM.
 */
#ifndef CINFER_TESTS_GGUF_WRITER_H
#define CINFER_TESTS_GGUF_WRITER_H

#include <stddef.h>
#include <stdint.h>

struct gw {
    unsigned char *p;
    size_t n, cap;
};

void gw_free(struct gw *w);
void gw_bytes(struct gw *w, const void *p, size_t n);
void gw_u32(struct gw *w, uint32_t v);
void gw_u64(struct gw *w, uint64_t v);
void gw_f32(struct gw *w, float v);
void gw_str(struct gw *w, const char *s); /* u64 length + bytes */
void gw_strn(struct gw *w, const char *s, size_t n);
void gw_header(struct gw *w, uint32_t version, uint64_t n_tensors, uint64_t n_kv);
void gw_kv_str(struct gw *w, const char *key, const char *val);
void gw_kv_u32(struct gw *w, const char *key, uint32_t v);
void gw_kv_bool(struct gw *w, const char *key, int v);
void gw_kv_arr_str(struct gw *w, const char *key, size_t n, const char *const *s,
                   const size_t *lens);
void gw_kv_arr_f32(struct gw *w, const char *key, size_t n, const float *v);
void gw_kv_arr_i32(struct gw *w, const char *key, size_t n, const int32_t *v);
void gw_tensor(struct gw *w, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
               uint64_t offset);
void gw_pad(struct gw *w, size_t alignment);       /* zero bytes up to a multiple */
int gw_save(const struct gw *w, const char *path); /* 0 or -1 */

#endif

/*
 * engine/gguf.h - reading GGUF model files (v2 and v3).
 *
 * gguf_open() maps a file read-only and checks every count, length, offset,
 * dimension and type against the file size and sane limits before it is
 * used; a bad file yields a negative error and a one-line message naming
 * what is wrong.  Metadata values and tensor data point into the mapping:
 * nothing is copied, so they live as long as the gguf_file.  This module
 * does not interpret metadata (architectures, tokenizers) - callers do.
 */
#ifndef CINFER_ENGINE_GGUF_H
#define CINFER_ENGINE_GGUF_H

#include <stddef.h>
#include <stdint.h>

/* Metadata value types, as stored in the file. */
enum gguf_type {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT
};

/* Limits a file must respect; chosen far above any real model. */
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_NESTING 8            /* arrays of arrays of ... */
#define GGUF_MAX_KEY_LEN 65535        /* bytes in a metadata key */
#define GGUF_MAX_NAME_LEN 65535       /* bytes in a tensor name */
#define GGUF_MAX_ALIGNMENT (1u << 20) /* general.alignment */

/* A string inside the mapping: not NUL-terminated. */
struct gguf_str {
    const char *p;
    uint64_t n;
};

/* One metadata value.  Scalars are decoded; arrays keep a pointer to their
 * raw little-endian elements, and for string/array elements a decoded item
 * list. */
struct gguf_value {
    uint32_t type; /* enum gguf_type */
    union {
        uint64_t u64; /* every unsigned integer type and bool */
        int64_t i64;  /* every signed integer type */
        double f64;   /* float32 and float64 */
        struct gguf_str str;
        struct {
            uint32_t type;            /* element type */
            uint64_t n;               /* element count */
            const void *data;         /* raw elements (fixed-size types) */
            struct gguf_value *items; /* n decoded items for STRING/ARRAY, else NULL */
        } arr;
    } v;
};

struct gguf_kv {
    struct gguf_str key;
    struct gguf_value val;
};

struct gguf_tensor {
    struct gguf_str name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the contiguous dimension; unused dims are 1 */
    uint32_t type;              /* enum qt_type */
    uint64_t offset;            /* from the start of the data section */
    uint64_t nbytes;
    const void *data; /* into the mapping */
};

struct gguf_file {
    uint32_t version;
    uint64_t n_kv;
    struct gguf_kv *kv;
    uint64_t n_tensors;
    struct gguf_tensor *tensors;
    uint32_t alignment;
    uint64_t data_offset; /* start of the tensor data section */
    const uint8_t *base;  /* the whole file */
    size_t size;
    int mapped; /* 1 when base is our mmap */
};

/*
 * Opens and validates `path`.  On success returns 0 and sets *out (free with
 * gguf_close).  On failure returns a negative errno-style code (-ENOENT,
 * -EINVAL for a malformed file, -ENOMEM, ...) and writes a one-line message
 * into err (errlen bytes, may be 0).
 */
int gguf_open(const char *path, struct gguf_file **out, char *err, size_t errlen);

/* Like gguf_open over a buffer the caller keeps alive (used by the fuzzer). */
int gguf_parse(const void *data, size_t size, struct gguf_file **out, char *err, size_t errlen);

/* Unmaps and frees; accepts NULL. */
void gguf_close(struct gguf_file *f);

/* Index of `key` or -1. */
int64_t gguf_find_key(const struct gguf_file *f, const char *key);

/* The value of `key`, or NULL when absent. */
const struct gguf_value *gguf_get(const struct gguf_file *f, const char *key);

/*
 * Typed look-ups: 0 on success, -ENOENT when the key is absent, -EINVAL when
 * it has an incompatible type or (for gguf_get_int) a value outside int64.
 * Any integer type converts to int64; float32/float64 to double.
 */
int gguf_get_int(const struct gguf_file *f, const char *key, int64_t *out);
int gguf_get_float(const struct gguf_file *f, const char *key, double *out);
int gguf_get_bool(const struct gguf_file *f, const char *key, int *out);
int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out);

/* An array of `elem_type` under `key`: 0, -ENOENT or -EINVAL. */
int gguf_get_arr(const struct gguf_file *f, const char *key, uint32_t elem_type,
                 const struct gguf_value **out);

/*
 * Tells the kernel that bytes [p, p + n) of a mapped file will not be read
 * soon: their pages leave this process's memory and are read from the file
 * again if touched.  Does nothing for a parsed buffer.
 */
void gguf_release(const struct gguf_file *f, const void *p, size_t n);

/* Tensor by name, or NULL. */
const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name);

/* "uint32", "string", ... or "unknown". */
const char *gguf_type_name(uint32_t type);

#endif

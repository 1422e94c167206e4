/*
 * engine/gguf.c - a GGUF v2/v3 reader that survives hostile files.
 *
 * The file is mapped read-only and walked with a bounds-checked cursor: no
 * count, length or offset from the file is used before it is checked against
 * what is left of the file, so a truncated or malicious file yields an error
 * message, never an out-of-bounds read or an allocation larger than a small
 * multiple of the file itself.  It does not interpret what the metadata
 * means and does not convert tensor data.
 */
#include "engine/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/quant.h"

#define GGUF_DEFAULT_ALIGNMENT 32

struct rd {
    const uint8_t *b;
    size_t size;
    size_t pos;
    char *err;
    size_t errlen;
};

static int fail(struct rd *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(struct rd *r, const char *fmt, ...)
{
    if (r->err && r->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->err, r->errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

/* Copies a file string into buf for an error message: printable ASCII only. */
static const char *show(const struct gguf_str *s, char *buf, size_t n)
{
    size_t j = 0;
    for (uint64_t i = 0; i < s->n && j + 4 < n; i++) {
        unsigned char c = (unsigned char)s->p[i];
        buf[j++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (s->n > j && j + 4 <= n) {
        memcpy(buf + j, "...", 3);
        j += 3;
    }
    buf[j] = '\0';
    return buf;
}

static int need(struct rd *r, uint64_t n, const char *what)
{
    if (n > r->size - r->pos)
        return fail(r,
                    "truncated file: %s needs %llu bytes at offset %zu but the file "
                    "ends at %zu",
                    what, (unsigned long long)n, r->pos, r->size);
    return 0;
}

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static int rd_u32(struct rd *r, uint32_t *v, const char *what)
{
    if (need(r, 4, what))
        return -EINVAL;
    *v = (uint32_t)le(r->b + r->pos, 4);
    r->pos += 4;
    return 0;
}

static int rd_u64(struct rd *r, uint64_t *v, const char *what)
{
    if (need(r, 8, what))
        return -EINVAL;
    *v = le(r->b + r->pos, 8);
    r->pos += 8;
    return 0;
}

static int rd_str(struct rd *r, struct gguf_str *s, uint64_t max, const char *what)
{
    uint64_t n;
    if (rd_u64(r, &n, what))
        return -EINVAL;
    if (n > max)
        return fail(r, "%s at offset %zu has length %llu, above the limit %llu", what, r->pos - 8,
                    (unsigned long long)n, (unsigned long long)max);
    if (need(r, n, what))
        return -EINVAL;
    s->p = (const char *)r->b + r->pos;
    s->n = n;
    r->pos += n;
    return 0;
}

/* Bytes of one fixed-size element, 0 for STRING/ARRAY/unknown. */
static size_t type_size(uint32_t t)
{
    switch (t) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_INT8:
    case GGUF_TYPE_BOOL:
        return 1;
    case GGUF_TYPE_UINT16:
    case GGUF_TYPE_INT16:
        return 2;
    case GGUF_TYPE_UINT32:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_FLOAT32:
        return 4;
    case GGUF_TYPE_UINT64:
    case GGUF_TYPE_INT64:
    case GGUF_TYPE_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

const char *gguf_type_name(uint32_t t)
{
    static const char *const names[GGUF_TYPE_COUNT] = {
        "uint8", "int8",   "uint16", "int16",  "uint32", "int32",   "float32",
        "bool",  "string", "array",  "uint64", "int64",  "float64",
    };
    return t < GGUF_TYPE_COUNT ? names[t] : "unknown";
}

static void value_free(struct gguf_value *v)
{
    if (v->type != GGUF_TYPE_ARRAY || !v->v.arr.items)
        return;
    if (v->v.arr.type == GGUF_TYPE_ARRAY)
        for (uint64_t i = 0; i < v->v.arr.n; i++)
            value_free(&v->v.arr.items[i]);
    free(v->v.arr.items);
    v->v.arr.items = NULL;
}

static void scalar_decode(struct gguf_value *v, uint32_t t, const uint8_t *p)
{
    v->type = t;
    switch (t) {
    case GGUF_TYPE_INT8:
        v->v.i64 = (int8_t)p[0];
        break;
    case GGUF_TYPE_INT16:
        v->v.i64 = (int16_t)le(p, 2);
        break;
    case GGUF_TYPE_INT32:
        v->v.i64 = (int32_t)le(p, 4);
        break;
    case GGUF_TYPE_INT64:
        v->v.i64 = (int64_t)le(p, 8);
        break;
    case GGUF_TYPE_FLOAT32: {
        uint32_t u = (uint32_t)le(p, 4);
        float f;
        memcpy(&f, &u, 4);
        v->v.f64 = f;
        break;
    }
    case GGUF_TYPE_FLOAT64: {
        uint64_t u = le(p, 8);
        memcpy(&v->v.f64, &u, 8);
        break;
    }
    default: /* unsigned and bool */
        v->v.u64 = le(p, (int)type_size(t));
        break;
    }
}

static int value_parse(struct rd *r, uint32_t t, struct gguf_value *v, int depth, const char *what)
{
    memset(v, 0, sizeof(*v));
    if (t >= GGUF_TYPE_COUNT)
        return fail(r, "%s has unknown value type %u at offset %zu", what, t, r->pos);
    size_t sz = type_size(t);
    if (sz) {
        if (need(r, sz, what))
            return -EINVAL;
        scalar_decode(v, t, r->b + r->pos);
        if (t == GGUF_TYPE_BOOL && v->v.u64 > 1)
            return fail(r, "%s is a bool with value %llu at offset %zu", what,
                        (unsigned long long)v->v.u64, r->pos);
        r->pos += sz;
        return 0;
    }
    v->type = t;
    if (t == GGUF_TYPE_STRING)
        return rd_str(r, &v->v.str, UINT64_MAX, what);

    /* an array */
    uint32_t et;
    uint64_t n;
    if (depth >= GGUF_MAX_NESTING)
        return fail(r, "%s nests arrays more than %d deep", what, GGUF_MAX_NESTING);
    if (rd_u32(r, &et, what) || rd_u64(r, &n, what))
        return -EINVAL;
    if (et >= GGUF_TYPE_COUNT)
        return fail(r, "%s is an array of unknown type %u", what, et);
    v->v.arr.type = et;
    size_t esz = type_size(et);
    /* every element takes at least this many bytes of the file */
    size_t min = esz ? esz : (et == GGUF_TYPE_STRING ? 8 : 12);
    if (n > (r->size - r->pos) / min)
        return fail(r,
                    "%s claims %llu %s elements at offset %zu but only %zu bytes are left in "
                    "the file",
                    what, (unsigned long long)n, gguf_type_name(et), r->pos, r->size - r->pos);
    v->v.arr.n = n;
    v->v.arr.data = r->b + r->pos;
    if (esz) {
        r->pos += (size_t)n * esz;
        return 0;
    }
    if (n == 0)
        return 0;
    v->v.arr.items = calloc((size_t)n, sizeof(*v->v.arr.items));
    if (!v->v.arr.items) {
        fail(r, "out of memory reading %s (%llu elements)", what, (unsigned long long)n);
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint32_t it = et;
        if (et == GGUF_TYPE_ARRAY) {
            /* nested array: the element is (type, count, data) like a top-level one */
            int rc = value_parse(r, it, &v->v.arr.items[i], depth + 1, what);
            if (rc) {
                v->v.arr.n = i + 1; /* free what was built */
                return rc;
            }
        } else {
            v->v.arr.items[i].type = GGUF_TYPE_STRING;
            if (rd_str(r, &v->v.arr.items[i].v.str, UINT64_MAX, what))
                return -EINVAL;
        }
    }
    return 0;
}

static int str_eq(const struct gguf_str *s, const char *z)
{
    size_t n = strlen(z);
    return s->n == n && memcmp(s->p, z, n) == 0;
}

static int str_cmp(const struct gguf_str *a, const struct gguf_str *b)
{
    uint64_t n = a->n < b->n ? a->n : b->n;
    int c = n ? memcmp(a->p, b->p, (size_t)n) : 0;
    if (c)
        return c;
    return a->n < b->n ? -1 : a->n > b->n;
}

static int str_ptr_cmp_cb(const void *a, const void *b)
{
    const struct gguf_str *const *x = a, *const *y = b;
    return str_cmp(*x, *y);
}

/*
 * Looks for two equal strings among n records of `stride` bytes that each
 * start with a gguf_str.  Returns 1 and sets *dup, 0 when all differ, or
 * -ENOMEM.
 */
static int find_dup(const void *recs, size_t stride, uint64_t n, const struct gguf_str **dup)
{
    if (n < 2)
        return 0;
    const struct gguf_str **v = malloc((size_t)n * sizeof(*v));
    if (!v)
        return -ENOMEM;
    for (uint64_t i = 0; i < n; i++)
        v[i] = (const struct gguf_str *)(const void *)((const char *)recs + i * stride);
    qsort(v, (size_t)n, sizeof(*v), str_ptr_cmp_cb);
    int found = 0;
    for (uint64_t i = 1; i < n && !found; i++)
        if (str_cmp(v[i - 1], v[i]) == 0) {
            *dup = v[i];
            found = 1;
        }
    free(v);
    return found;
}

static int parse_kvs(struct rd *r, struct gguf_file *f)
{
    char kb[96], what[160];
    f->kv = calloc(f->n_kv ? (size_t)f->n_kv : 1, sizeof(*f->kv));
    if (!f->kv) {
        fail(r, "out of memory for %llu metadata entries", (unsigned long long)f->n_kv);
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < f->n_kv; i++) {
        struct gguf_kv *kv = &f->kv[i];
        uint32_t t;
        snprintf(what, sizeof(what), "metadata key %llu", (unsigned long long)i);
        if (rd_str(r, &kv->key, GGUF_MAX_KEY_LEN, what))
            return -EINVAL;
        if (kv->key.n == 0)
            return fail(r, "metadata key %llu is empty", (unsigned long long)i);
        snprintf(what, sizeof(what), "metadata '%s'", show(&kv->key, kb, sizeof(kb)));
        if (rd_u32(r, &t, what))
            return -EINVAL;
        int rc = value_parse(r, t, &kv->val, 0, what);
        if (rc)
            return rc;
    }
    const struct gguf_str *dup = NULL;
    int rc = find_dup(f->kv, sizeof(*f->kv), f->n_kv, &dup);
    if (rc < 0)
        return fail(r, "out of memory checking metadata keys"), -ENOMEM;
    if (rc > 0)
        return fail(r, "metadata key '%s' appears twice", show(dup, kb, sizeof(kb)));

    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    const struct gguf_value *a = gguf_get(f, "general.alignment");
    if (a) {
        if (a->type != GGUF_TYPE_UINT32)
            return fail(r, "general.alignment has type %s, expected uint32",
                        gguf_type_name(a->type));
        if (a->v.u64 == 0 || (a->v.u64 & (a->v.u64 - 1)) || a->v.u64 > GGUF_MAX_ALIGNMENT)
            return fail(r, "general.alignment is %llu, expected a power of two up to %u",
                        (unsigned long long)a->v.u64, GGUF_MAX_ALIGNMENT);
        f->alignment = (uint32_t)a->v.u64;
    }
    return 0;
}

static int parse_tensor_info(struct rd *r, struct gguf_file *f, uint64_t i)
{
    char nb[96], what[160];
    struct gguf_tensor *t = &f->tensors[i];
    snprintf(what, sizeof(what), "tensor %llu name", (unsigned long long)i);
    if (rd_str(r, &t->name, GGUF_MAX_NAME_LEN, what))
        return -EINVAL;
    if (t->name.n == 0)
        return fail(r, "tensor %llu has an empty name", (unsigned long long)i);
    snprintf(what, sizeof(what), "tensor '%s'", show(&t->name, nb, sizeof(nb)));
    if (rd_u32(r, &t->n_dims, what))
        return -EINVAL;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return fail(r, "%s has %u dimensions, expected 1 to %d", what, t->n_dims, GGUF_MAX_DIMS);
    uint64_t nel = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d < t->n_dims && rd_u64(r, &t->ne[d], what))
            return -EINVAL;
        if (t->ne[d] == 0)
            return fail(r, "%s has dimension %u of size 0", what, d);
        if (__builtin_mul_overflow(nel, t->ne[d], &nel) || nel > (uint64_t)INT64_MAX)
            return fail(r, "%s has dimensions too large (%llu x ...)", what,
                        (unsigned long long)t->ne[d]);
    }
    if (rd_u32(r, &t->type, what) || rd_u64(r, &t->offset, what))
        return -EINVAL;
    const struct qt_info *qi = qt_info(t->type);
    if (!qi)
        return fail(r, "%s has unknown tensor type %u", what, t->type);
    if (t->ne[0] % qi->blck_size)
        return fail(r, "%s: row of %llu elements is not a multiple of the %s block size %u", what,
                    (unsigned long long)t->ne[0], qi->name, qi->blck_size);
    uint64_t rows = nel / t->ne[0];
    uint64_t row = qt_row_size(t->type, t->ne[0]);
    if (row == 0 || __builtin_mul_overflow(row, rows, &t->nbytes))
        return fail(r, "%s is too large", what);
    if (t->offset % f->alignment)
        return fail(r, "%s has data offset %llu, not a multiple of the alignment %u", what,
                    (unsigned long long)t->offset, f->alignment);
    return 0;
}

static int parse_tensors(struct rd *r, struct gguf_file *f)
{
    char nb[96];
    f->tensors = calloc(f->n_tensors ? (size_t)f->n_tensors : 1, sizeof(*f->tensors));
    if (!f->tensors) {
        fail(r, "out of memory for %llu tensors", (unsigned long long)f->n_tensors);
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        int rc = parse_tensor_info(r, f, i);
        if (rc)
            return rc;
    }
    const struct gguf_str *dup = NULL;
    int rc = find_dup(f->tensors, sizeof(*f->tensors), f->n_tensors, &dup);
    if (rc < 0)
        return fail(r, "out of memory checking tensor names"), -ENOMEM;
    if (rc > 0)
        return fail(r, "tensor name '%s' appears twice", show(dup, nb, sizeof(nb)));

    /* the data section starts at the next multiple of the alignment */
    uint64_t pad = (f->alignment - r->pos % f->alignment) % f->alignment;
    f->data_offset = r->pos + pad;
    if (f->n_tensors == 0)
        return 0;
    if (f->data_offset > r->size)
        return fail(r,
                    "truncated file: the tensor data section would start at %llu but the "
                    "file ends at %zu",
                    (unsigned long long)f->data_offset, r->size);
    uint64_t avail = r->size - f->data_offset;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        struct gguf_tensor *t = &f->tensors[i];
        if (t->offset > avail || t->nbytes > avail - t->offset)
            return fail(r,
                        "tensor '%s': data [%llu, +%llu) runs past the end of the file (the "
                        "data section holds %llu bytes)",
                        show(&t->name, nb, sizeof(nb)), (unsigned long long)t->offset,
                        (unsigned long long)t->nbytes, (unsigned long long)avail);
        t->data = r->b + f->data_offset + t->offset;
    }
    return 0;
}

int gguf_parse(const void *data, size_t size, struct gguf_file **out, char *err, size_t errlen)
{
    struct rd r = {.b = data, .size = size, .pos = 0, .err = err, .errlen = errlen};
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (size < 4 || memcmp(data, "GGUF", 4) != 0)
        return fail(&r, "not a GGUF file (bad magic)");
    r.pos = 4;
    struct gguf_file *f = calloc(1, sizeof(*f));
    if (!f)
        return fail(&r, "out of memory"), -ENOMEM;
    f->base = data;
    f->size = size;
    int rc = rd_u32(&r, &f->version, "the version");
    if (!rc && (f->version == 0x02000000 || f->version == 0x03000000))
        rc = fail(&r, "big-endian GGUF files are not supported");
    else if (!rc && f->version != 2 && f->version != 3)
        rc = fail(&r, "GGUF version %u is not supported (only 2 and 3)", f->version);
    if (!rc)
        rc = rd_u64(&r, &f->n_tensors, "the tensor count");
    if (!rc)
        rc = rd_u64(&r, &f->n_kv, "the metadata count");
    /* a metadata entry takes >= 14 bytes, a tensor info >= 33 */
    if (!rc && f->n_kv > (size - r.pos) / 14)
        rc = fail(&r, "metadata count %llu is impossible for a file of %zu bytes",
                  (unsigned long long)f->n_kv, size);
    if (!rc && f->n_tensors > (size - r.pos) / 33)
        rc = fail(&r, "tensor count %llu is impossible for a file of %zu bytes",
                  (unsigned long long)f->n_tensors, size);
    if (!rc)
        rc = parse_kvs(&r, f);
    if (!rc)
        rc = parse_tensors(&r, f);
    if (rc) {
        gguf_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int gguf_open(const char *path, struct gguf_file **out, char *err, size_t errlen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        snprintf(err, errlen, "%s is not a regular file", path);
        return -EINVAL;
    }
    if (st.st_size == 0) {
        close(fd);
        snprintf(err, errlen, "%s is empty", path);
        return -EINVAL;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) {
        snprintf(err, errlen, "cannot map %s: %s", path, strerror(e));
        return -e;
    }
    int rc = gguf_parse(p, (size_t)st.st_size, out, err, errlen);
    if (rc) {
        munmap(p, (size_t)st.st_size);
        return rc;
    }
    (*out)->mapped = 1;
    return 0;
}

void gguf_release(const struct gguf_file *f, const void *p, size_t n)
{
    const uint8_t *b = p, *end = b + n;
    if (!f->mapped || b < f->base || end > f->base + f->size)
        return;
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)b + pg - 1) / pg * pg, hi = (uintptr_t)end / pg * pg;
    if (lo < hi) /* whole pages only: the neighbours' bytes stay */
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

void gguf_close(struct gguf_file *f)
{
    if (!f)
        return;
    if (f->kv)
        for (uint64_t i = 0; i < f->n_kv; i++)
            value_free(&f->kv[i].val);
    free(f->kv);
    free(f->tensors);
    if (f->mapped)
        munmap((void *)f->base, f->size);
    free(f);
}

int64_t gguf_find_key(const struct gguf_file *f, const char *key)
{
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (str_eq(&f->kv[i].key, key))
            return (int64_t)i;
    return -1;
}

const struct gguf_value *gguf_get(const struct gguf_file *f, const char *key)
{
    int64_t i = gguf_find_key(f, key);
    return i < 0 ? NULL : &f->kv[i].val;
}

int gguf_get_int(const struct gguf_file *f, const char *key, int64_t *out)
{
    const struct gguf_value *v = gguf_get(f, key);
    if (!v)
        return -ENOENT;
    switch (v->type) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_UINT16:
    case GGUF_TYPE_UINT32:
    case GGUF_TYPE_UINT64:
        if (v->v.u64 > (uint64_t)INT64_MAX)
            return -EINVAL;
        *out = (int64_t)v->v.u64;
        return 0;
    case GGUF_TYPE_INT8:
    case GGUF_TYPE_INT16:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_INT64:
        *out = v->v.i64;
        return 0;
    default:
        return -EINVAL;
    }
}

int gguf_get_float(const struct gguf_file *f, const char *key, double *out)
{
    const struct gguf_value *v = gguf_get(f, key);
    if (!v)
        return -ENOENT;
    if (v->type != GGUF_TYPE_FLOAT32 && v->type != GGUF_TYPE_FLOAT64)
        return -EINVAL;
    *out = v->v.f64;
    return 0;
}

int gguf_get_bool(const struct gguf_file *f, const char *key, int *out)
{
    const struct gguf_value *v = gguf_get(f, key);
    if (!v)
        return -ENOENT;
    if (v->type != GGUF_TYPE_BOOL)
        return -EINVAL;
    *out = v->v.u64 != 0;
    return 0;
}

int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out)
{
    const struct gguf_value *v = gguf_get(f, key);
    if (!v)
        return -ENOENT;
    if (v->type != GGUF_TYPE_STRING)
        return -EINVAL;
    *out = v->v.str;
    return 0;
}

int gguf_get_arr(const struct gguf_file *f, const char *key, uint32_t elem_type,
                 const struct gguf_value **out)
{
    const struct gguf_value *v = gguf_get(f, key);
    if (!v)
        return -ENOENT;
    if (v->type != GGUF_TYPE_ARRAY || v->v.arr.type != elem_type)
        return -EINVAL;
    *out = v;
    return 0;
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name)
{
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (str_eq(&f->tensors[i].name, name))
            return &f->tensors[i];
    return NULL;
}

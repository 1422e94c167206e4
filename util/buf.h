/*
 * util/buf.h - the one growable byte buffer every module appends text to.
 * It always keeps a NUL after the n bytes (when p is set), so p can be
 * read as a C string; the owner frees p with free().
 */
#ifndef CINFER_UTIL_BUF_H
#define CINFER_UTIL_BUF_H

#include <stddef.h>

struct buf {
    char *p;
    size_t n, cap;
};

/* Appends n bytes; 0 or -ENOMEM (then b is as it was). */
int buf_append(struct buf *b, const void *p, size_t n);

/* Appends printf output; 0 or -ENOMEM. */
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif

/*
 * util/errmsg.h - the one helper library code uses to report an error: a
 * one-line message into the caller's buffer, and the error code back.
 */
#ifndef CINFER_UTIL_ERRMSG_H
#define CINFER_UTIL_ERRMSG_H

#include <stddef.h>

/* Formats into err (errlen bytes; err may be NULL or errlen 0) and returns rc. */
int errmsg(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif

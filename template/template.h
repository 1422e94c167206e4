/*
 * template/template.h - a Jinja2 interpreter for chat templates.
 *
 * It implements the part of Jinja2 that real chat templates use, with the
 * settings Hugging Face renders them with (trim_blocks and lstrip_blocks
 * on, the loopcontrols extension, an immutable sandbox, its own tojson,
 * raise_exception and strftime_now).  Values come in as a cJSON object (the
 * template's top-level variables) and the result is text.
 *
 * What it deliberately does not do: no include/extends/import (there are no
 * files), no attribute access beyond the values themselves and the string,
 * list and dict methods listed in eval.c, no mutation of lists or dicts
 * (the sandbox refuses it; namespace() objects are the one mutable thing),
 * no autoescaping.  Templates are untrusted: parsing and rendering are
 * bounded by tpl_limits and an error names the template line.
 */
#ifndef CINFER_TEMPLATE_H
#define CINFER_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "util/buf.h"

struct tpl; /* a compiled template: immutable, may be rendered by several threads at once */

/* Bounds on one render; a zero field takes the default below. */
struct tpl_limits {
    uint64_t max_steps; /* statements and expression nodes evaluated (default 10M) */
    size_t max_output;  /* bytes of output (default 16 MiB) */
    size_t max_memory;  /* bytes of values made while rendering (default 256 MiB) */
    int max_depth;      /* nested macro calls and expression depth (default 200) */
};

/*
 * Error codes: -EINVAL a syntax error (tpl_compile) or a runtime error
 * (tpl_render: a type error, an undefined value used, an unsupported
 * construct); -EPERM the template called raise_exception (the message is
 * the template's own); -E2BIG a budget of tpl_limits ran out; -ENOMEM.
 * Messages start with "line N: " where the line is known.
 */

/*
 * Compiles src (n bytes, need not be NUL-terminated).  0 and *out set, or a
 * negative code with a one-line message in err.  The source is at most
 * TPL_MAX_SOURCE bytes.
 */
#define TPL_MAX_SOURCE (1u << 20)
int tpl_compile(const char *src, size_t n, struct tpl **out, char *err, size_t errlen);
void tpl_destroy(struct tpl *t); /* NULL is fine */

/*
 * Renders t with the members of ctx (a cJSON object, or NULL) as its
 * top-level variables, appending the text to out.  lim may be NULL.
 * 0, or a negative code with a message in err; out then holds what was
 * rendered before the error.
 */
int tpl_render(const struct tpl *t, const cJSON *ctx, const struct tpl_limits *lim, struct buf *out,
               char *err, size_t errlen);

/* 1 when the template's source mentions name as an identifier (e.g. "tools"). */
int tpl_uses(const struct tpl *t, const char *name);

#endif

/*
 * tokenizer/tokenizer.c - the parts every tokenizer family shares: the
 * vocabulary, special-token partitioning of the input, output pieces and
 * the incremental detokenizer.  The families themselves live in bpe.c
 * (byte-level BPE) and spm_c.cc (SentencePiece through libsentencepiece).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/internal.h"
#include "util/errmsg.h"

/* ---- string map ---------------------------------------------------------- */

static uint64_t hash_bytes(const char *k, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)k[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

int tok_map_init(struct tok_map *m, size_t n_expected)
{
    size_t cap = 16;
    while (cap < n_expected * 2 + 1)
        cap <<= 1;
    m->slots = calloc(cap, sizeof(*m->slots));
    m->cap = cap;
    m->used = 0;
    return m->slots ? 0 : -ENOMEM;
}

void tok_map_free(struct tok_map *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = m->used = 0;
}

int tok_map_put(struct tok_map *m, const char *k, size_t n, int32_t v)
{
    if ((m->used + 1) * 2 > m->cap) {
        struct tok_map bigger;
        if (tok_map_init(&bigger, m->cap))
            return -ENOMEM;
        for (size_t i = 0; i < m->cap; i++)
            if (m->slots[i].k)
                tok_map_put(&bigger, m->slots[i].k, m->slots[i].n, m->slots[i].v);
        free(m->slots);
        *m = bigger;
    }
    size_t i = hash_bytes(k, n) & (m->cap - 1);
    while (m->slots[i].k) {
        if (m->slots[i].n == n && memcmp(m->slots[i].k, k, n) == 0) {
            m->slots[i].v = v;
            return 0;
        }
        i = (i + 1) & (m->cap - 1);
    }
    m->slots[i].k = k;
    m->slots[i].n = (uint32_t)n;
    m->slots[i].v = v;
    m->used++;
    return 0;
}

int32_t tok_map_get(const struct tok_map *m, const char *k, size_t n)
{
    if (!m->cap)
        return -1;
    size_t i = hash_bytes(k, n) & (m->cap - 1);
    while (m->slots[i].k) {
        if (m->slots[i].n == n && memcmp(m->slots[i].k, k, n) == 0)
            return m->slots[i].v;
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

int tok_ids_push(struct tok_ids *a, int32_t id)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        int32_t *v = realloc(a->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

/* ---- UTF-8 ------------------------------------------------------------- */

size_t tok_utf8_encode(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Lead-byte rules as llama.cpp reads them (it accepts overlong forms). */
size_t tok_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    if (!(c & 0x80)) {
        *cp = c;
        return 1;
    }
    size_t len = !(c & 0x40) ? 0 : !(c & 0x20) ? 2 : !(c & 0x10) ? 3 : !(c & 0x08) ? 4 : 0;
    if (len == 0 || len > n)
        return 0;
    uint32_t v = c & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    *cp = v;
    return len;
}

/* Length a lead byte announces (strict UTF-8), or 0 when it cannot start one. */
static size_t lead_len(unsigned char c)
{
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return 2;
    if (c >= 0xe0 && c <= 0xef)
        return 3;
    if (c >= 0xf0 && c <= 0xf4)
        return 4;
    return 0;
}

/* Whether s[1..k) can continue the sequence led by s[0] (strict: no overlongs, surrogates). */
static int cont_ok(const unsigned char *s, size_t k)
{
    for (size_t i = 1; i < k; i++) {
        unsigned char c = s[i];
        unsigned char lo = 0x80, hi = 0xbf;
        if (i == 1) {
            if (s[0] == 0xe0)
                lo = 0xa0;
            else if (s[0] == 0xed)
                hi = 0x9f;
            else if (s[0] == 0xf0)
                lo = 0x90;
            else if (s[0] == 0xf4)
                hi = 0x8f;
        }
        if (c < lo || c > hi)
            return 0;
    }
    return 1;
}

/* Whether s[0..n) is valid UTF-8 (strict). */
static int utf8_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t k = lead_len(s[i]);
        if (!k || k > n - i || !cont_ok(s + i, k))
            return 0;
        i += k;
    }
    return 1;
}

int tok_utf8_clean(const char *text, size_t len, struct buf *out)
{
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        size_t k = lead_len(s[i]);
        if (!k || k > len - i || !cont_ok(s + i, k)) {
            if (buf_append(out, "\xef\xbf\xbd", 3))
                return -ENOMEM;
            i++;
            continue;
        }
        size_t j = i + k; /* copy a run of valid characters at once */
        while (j < len && (k = lead_len(s[j])) && k <= len - j && cont_ok(s + j, k))
            j += k;
        if (buf_append(out, s + i, j - i))
            return -ENOMEM;
        i = j;
    }
    return 0;
}

/*
 * Rewrites text as valid UTF-8: each byte that does not start a character
 * becomes U+FFFD, like llama.cpp's reader; so do surrogates and code points
 * past U+10FFFF, which PCRE2 and sentencepiece refuse.
 */
static int sanitize(const char *text, size_t len, struct buf *out)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t n = tok_utf8_decode(s + i, len - i, &cp);
        char u[4];
        if (n == 0 || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) {
            cp = 0xfffd;
            n = n ? n : 1;
        }
        size_t m = tok_utf8_encode(cp, u);
        if (buf_append(out, u, m))
            return -ENOMEM;
        i += n;
    }
    return 0;
}

/* ---- creation ------------------------------------------------------------ */

static int special_cmp_cb(const void *a, const void *b, void *arg)
{
    const struct tok *t = arg;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (t->text_len[x] != t->text_len[y])
        return t->text_len[x] > t->text_len[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* SentencePiece byte tokens are spelled "<0xAB>". */
static int spm_byte_value(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* The output bytes of token `id` (special tokens: their text). */
static int make_piece(struct tok *t, int32_t id, struct buf *b)
{
    const char *s = t->text[id];
    size_t n = t->text_len[id];
    b->n = 0;
    switch (t->type[id]) {
    case TOK_TYPE_CONTROL:
    case TOK_TYPE_UNKNOWN:
    case TOK_TYPE_USER_DEFINED:
        return buf_append(b, s, n);
    case TOK_TYPE_UNUSED:
    case TOK_TYPE_UNDEFINED:
        return buf_append(b, "", 0);
    case TOK_TYPE_BYTE:
        if (t->is_spm) {
            int v = spm_byte_value(s, n);
            if (v >= 0) {
                char c = (char)v;
                return buf_append(b, &c, 1);
            }
        }
        break;
    default:
        break;
    }
    if (t->is_spm) { /* U+2581 is a space */
        for (size_t i = 0; i < n;) {
            if (n - i >= 3 && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
                if (buf_append(b, " ", 1))
                    return -ENOMEM;
                i += 3;
            } else {
                if (buf_append(b, s + i, 1))
                    return -ENOMEM;
                i++;
            }
        }
        return buf_append(b, "", 0);
    }
    /* byte-level BPE: each code point stands for one byte */
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = tok_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        int byte = k ? tok_cp_to_byte(cp) : -1;
        if (byte < 0) { /* not from the byte mapping: keep it as written */
            k = k ? k : 1;
            if (buf_append(b, s + i, k))
                return -ENOMEM;
        } else {
            char c = (char)byte;
            if (buf_append(b, &c, 1))
                return -ENOMEM;
        }
        i += k;
    }
    return buf_append(b, "", 0);
}

static int copy_vocab(struct tok *t, const struct tok_desc *d, char *err, size_t errlen)
{
    size_t n = d->n_vocab;
    t->n_vocab = n;
    t->text = calloc(n, sizeof(*t->text));
    t->text_len = calloc(n, sizeof(*t->text_len));
    t->piece = calloc(n, sizeof(*t->piece));
    t->piece_len = calloc(n, sizeof(*t->piece_len));
    t->type = calloc(n, 1);
    t->score = calloc(n, sizeof(*t->score));
    t->eog = calloc(n, 1);
    if (!t->text || !t->text_len || !t->piece || !t->piece_len || !t->type || !t->score ||
        !t->eog || tok_map_init(&t->vocab, n))
        return errmsg(err, errlen, -ENOMEM, "out of memory for a vocabulary of %zu tokens", n);
    for (size_t i = 0; i < n; i++) {
        const struct tok_bytes *s = &d->tokens[i];
        if (s->n > UINT32_MAX / 2)
            return errmsg(err, errlen, -EINVAL, "token %zu is too long", i);
        t->text[i] = malloc(s->n + 1);
        if (!t->text[i])
            return errmsg(err, errlen, -ENOMEM, "out of memory");
        if (s->n)
            memcpy(t->text[i], s->p, s->n);
        t->text[i][s->n] = '\0';
        t->text_len[i] = (uint32_t)s->n;
        int32_t ty = d->types ? d->types[i] : TOK_TYPE_NORMAL;
        t->type[i] = (ty >= TOK_TYPE_UNDEFINED && ty <= TOK_TYPE_BYTE) ? (uint8_t)ty : 0;
        t->score[i] = d->scores ? d->scores[i] : 0.0f;
        /* later duplicates win, as in llama.cpp; empty tokens are never matched */
        if (s->n && tok_map_put(&t->vocab, t->text[i], s->n, (int32_t)i))
            return errmsg(err, errlen, -ENOMEM, "out of memory");
    }
    return 0;
}

static int32_t check_id(int32_t id, size_t n)
{
    return (id >= 0 && (size_t)id < n) ? id : -1;
}

static int finish_vocab(struct tok *t, const struct tok_desc *d, char *err, size_t errlen)
{
    size_t n = t->n_vocab;
    t->bos = check_id(d->bos, n);
    t->eos = check_id(d->eos, n);
    t->eot = check_id(d->eot, n);
    t->unk = check_id(d->unk, n);
    t->pad = check_id(d->pad, n);
    t->add_bos = d->add_bos >= 0 ? d->add_bos : t->is_spm;
    if (t->eos >= 0)
        t->eog[t->eos] = 1;
    if (t->eot >= 0)
        t->eog[t->eot] = 1;
    t->specials = malloc((n ? n : 1) * sizeof(*t->specials));
    if (!t->specials)
        return errmsg(err, errlen, -ENOMEM, "out of memory");
    struct buf b = {0};
    for (size_t i = 0; i < n; i++) {
        uint8_t ty = t->type[i];
        /* a special token that is not valid UTF-8 could match inside a character */
        if ((ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_USER_DEFINED || ty == TOK_TYPE_UNKNOWN) &&
            t->text_len[i] > 0 && utf8_valid((const unsigned char *)t->text[i], t->text_len[i]))
            t->specials[t->n_specials++] = (int32_t)i;
        /* end-of-generation tokens found by name, as llama.cpp does for chat models */
        static const char *const eog_names[] = {"<|eot_id|>",      "<|im_end|>",    "<|end|>",
                                                "<end_of_turn>",   "<|endoftext|>", "<EOT>",
                                                "<|end_of_text|>", "<|eom_id|>"};
        if (ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_USER_DEFINED)
            for (size_t k = 0; k < sizeof(eog_names) / sizeof(*eog_names); k++)
                if (strcmp(t->text[i], eog_names[k]) == 0)
                    t->eog[i] = 1;
        if (make_piece(t, (int32_t)i, &b)) {
            free(b.p);
            return errmsg(err, errlen, -ENOMEM, "out of memory");
        }
        t->piece[i] = malloc(b.n + 1);
        if (!t->piece[i]) {
            free(b.p);
            return errmsg(err, errlen, -ENOMEM, "out of memory");
        }
        memcpy(t->piece[i], b.p, b.n + 1);
        t->piece_len[i] = (uint32_t)b.n;
    }
    free(b.p);
    qsort_r(t->specials, t->n_specials, sizeof(*t->specials), special_cmp_cb, t);
    return 0;
}

int tok_create(const struct tok_desc *d, struct tok **out, char *err, size_t errlen)
{
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (!d->model)
        return errmsg(err, errlen, -EINVAL, "the model has no tokenizer (tokenizer.ggml.model)");
    int is_spm = strcmp(d->model, "llama") == 0;
    if (!is_spm && strcmp(d->model, "gpt2") != 0)
        return errmsg(err, errlen, -EINVAL,
                      "unsupported tokenizer model '%s' (supported: gpt2, llama)", d->model);
    if (d->n_vocab == 0 && !(is_spm && d->spm_model_path))
        return errmsg(err, errlen, -EINVAL, "the vocabulary is empty");
    if (d->n_vocab > INT32_MAX)
        return errmsg(err, errlen, -EINVAL, "the vocabulary has too many tokens");
    struct tok *t = calloc(1, sizeof(*t));
    if (!t)
        return errmsg(err, errlen, -ENOMEM, "out of memory");
    t->is_spm = is_spm;
    int rc;
    if (is_spm) {
        t->add_space_prefix = d->add_space_prefix < 0 ? 1 : d->add_space_prefix;
        struct tok_desc dd = *d;
        struct spm_c_vocab v = {0};
        if (d->spm_model_path) {
            rc = spm_c_create_from_file(d->spm_model_path, &t->spm, err, errlen);
            if (!rc)
                rc = spm_c_get_vocab(t->spm, &v);
            if (!rc) {
                if (d->n_vocab && d->n_vocab != v.n)
                    rc = errmsg(err, errlen, -EINVAL,
                                "%s has %zu pieces but the model's vocabulary has %zu tokens",
                                d->spm_model_path, v.n, d->n_vocab);
                dd.n_vocab = v.n;
                dd.tokens = (const struct tok_bytes *)v.pieces;
                dd.scores = v.scores;
                dd.types = v.types;
                t->add_space_prefix = v.add_dummy_prefix;
            }
        } else {
            struct spm_c_vocab in = {
                .n = d->n_vocab,
                .pieces = (const struct spm_c_bytes *)d->tokens,
                .scores = d->scores,
                .types = d->types,
                .add_dummy_prefix = t->add_space_prefix,
                .remove_extra_whitespaces = d->remove_extra_whitespaces > 0,
            };
            rc = spm_c_create(&in, &t->spm, err, errlen);
        }
        if (!rc)
            rc = copy_vocab(t, &dd, err, errlen);
        if (!rc)
            rc = finish_vocab(t, &dd, err, errlen);
    } else {
        rc = copy_vocab(t, d, err, errlen);
        if (!rc)
            rc = finish_vocab(t, d, err, errlen);
        if (!rc)
            rc = tok_bpe_init(t, d, err, errlen);
    }
    if (rc) {
        tok_destroy(t);
        return rc;
    }
    *out = t;
    return 0;
}

void tok_destroy(struct tok *t)
{
    if (!t)
        return;
    tok_bpe_free(t);
    spm_c_destroy(t->spm);
    for (size_t i = 0; i < t->n_vocab; i++) {
        if (t->text)
            free(t->text[i]);
        if (t->piece)
            free(t->piece[i]);
    }
    free(t->text);
    free(t->text_len);
    free(t->piece);
    free(t->piece_len);
    free(t->type);
    free(t->score);
    free(t->eog);
    free(t->specials);
    tok_map_free(&t->vocab);
    free(t);
}

/* ---- encoding ------------------------------------------------------------ */

struct frag {
    size_t off, len;
    int32_t id; /* -1: raw text */
};

struct frags {
    struct frag *v;
    size_t n, cap;
};

static int frags_push(struct frags *f, size_t off, size_t len, int32_t id)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        struct frag *v = realloc(f->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        f->v = v;
        f->cap = cap;
    }
    f->v[f->n++] = (struct frag){off, len, id};
    return 0;
}

/*
 * Splits the raw fragments of `in` at every occurrence of each special token,
 * longest tokens first, like llama.cpp's tokenizer_st_partition.
 */
static int partition(const struct tok *t, const char *s, size_t len, int parse_special,
                     struct frags *out)
{
    struct frags a = {0}, b = {0};
    int rc = 0;
    if (len && frags_push(&a, 0, len, -1))
        return -ENOMEM;
    for (size_t k = 0; k < t->n_specials && !rc && a.n; k++) {
        int32_t id = t->specials[k];
        uint8_t ty = t->type[id];
        if (!parse_special && ty != TOK_TYPE_USER_DEFINED)
            continue;
        const char *tx = t->text[id];
        size_t tn = t->text_len[id];
        b.n = 0;
        for (size_t i = 0; i < a.n && !rc; i++) {
            struct frag f = a.v[i];
            if (f.id >= 0 || f.len < tn) {
                rc = frags_push(&b, f.off, f.len, f.id);
                continue;
            }
            size_t pos = f.off, end = f.off + f.len;
            while (!rc) {
                const char *m = memmem(s + pos, end - pos, tx, tn);
                if (!m) {
                    if (end > pos)
                        rc = frags_push(&b, pos, end - pos, -1);
                    break;
                }
                size_t mo = (size_t)(m - s);
                if (mo > pos)
                    rc = frags_push(&b, pos, mo - pos, -1);
                if (!rc)
                    rc = frags_push(&b, mo, tn, id);
                pos = mo + tn;
            }
        }
        struct frags tmp = a;
        a = b;
        b = tmp;
    }
    free(b.v);
    if (rc) {
        free(a.v);
        return rc;
    }
    *out = a;
    return 0;
}

int64_t tok_encode(const struct tok *t, const char *text, size_t len, unsigned flags, int32_t *ids,
                   size_t cap)
{
    struct buf clean = {0};
    struct frags fr = {0};
    struct tok_ids out = {0};
    int rc = sanitize(text, len, &clean);
    if (!rc)
        rc = partition(t, clean.p ? clean.p : "", clean.n, (flags & TOK_PARSE_SPECIAL) != 0, &fr);
    if (!rc && (flags & TOK_ADD_BOS) && t->bos >= 0)
        rc = tok_ids_push(&out, t->bos);
    for (size_t i = 0; i < fr.n && !rc; i++) {
        const struct frag *f = &fr.v[i];
        if (f->id >= 0)
            rc = tok_ids_push(&out, f->id);
        else if (t->is_spm)
            rc = spm_c_encode(t->spm, clean.p + f->off, f->len, &out.v, &out.n, &out.cap);
        else
            rc = tok_bpe_encode(t, clean.p + f->off, f->len, &out);
    }
    int64_t n = rc ? rc : (int64_t)out.n;
    if (!rc && ids && out.n && cap)
        memcpy(ids, out.v, (out.n < cap ? out.n : cap) * sizeof(*ids));
    free(clean.p);
    free(fr.v);
    free(out.v);
    return n;
}

/* ---- queries ------------------------------------------------------------- */

int64_t tok_encode_alloc(const struct tok *t, const char *text, size_t len, unsigned flags,
                         int32_t **out)
{
    size_t cap = 3 * len + 2; /* tok_encode's bound; asked again if ever exceeded */
    int64_t n;
    for (;;) {
        int32_t *ids = malloc(cap * sizeof(*ids));
        n = ids ? tok_encode(t, text, len, flags, ids, cap) : -ENOMEM;
        if (n >= 0 && (size_t)n <= cap) {
            *out = ids;
            return n;
        }
        free(ids);
        if (n < 0) {
            *out = NULL;
            return n;
        }
        cap = (size_t)n;
    }
}

size_t tok_n_vocab(const struct tok *t)
{
    return t->n_vocab;
}

int32_t tok_bos(const struct tok *t)
{
    return t->bos;
}

int32_t tok_eos(const struct tok *t)
{
    return t->eos;
}

int tok_add_bos(const struct tok *t)
{
    return t->add_bos;
}

int tok_is_eog(const struct tok *t, int32_t id)
{
    return id >= 0 && (size_t)id < t->n_vocab && t->eog[id];
}

enum tok_type tok_type(const struct tok *t, int32_t id)
{
    return (id >= 0 && (size_t)id < t->n_vocab) ? (enum tok_type)t->type[id] : TOK_TYPE_UNDEFINED;
}

const char *tok_text(const struct tok *t, int32_t id, size_t *len)
{
    if (id < 0 || (size_t)id >= t->n_vocab)
        return NULL;
    *len = t->text_len[id];
    return t->text[id];
}

const char *tok_piece(const struct tok *t, int32_t id, int special, size_t *len)
{
    if (id < 0 || (size_t)id >= t->n_vocab)
        return NULL;
    uint8_t ty = t->type[id];
    if (!special && (ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_UNKNOWN)) {
        *len = 0;
        return "";
    }
    *len = t->piece_len[id];
    return t->piece[id];
}

/* ---- incremental detokenizer --------------------------------------------- */

void tok_detok_init(struct tok_detok *d, const struct tok *t, unsigned flags)
{
    memset(d, 0, sizeof(*d));
    d->t = t;
    d->flags = flags;
}

static const char k_replacement[] = "\xef\xbf\xbd";

/* Emits complete characters of hold+p; keeps an unfinished tail in hold. */
static int detok_bytes(struct tok_detok *d, const unsigned char *p, size_t n, struct buf *out)
{
    for (size_t i = 0; i < n; i++) {
        d->hold[d->n_hold++] = p[i];
        for (;;) {
            size_t need = lead_len(d->hold[0]);
            size_t ok = need ? (d->n_hold < need ? d->n_hold : need) : 1;
            if (need && !cont_ok(d->hold, ok)) {
                /* the lead byte cannot complete: replace it, retry the rest */
                need = 0;
            }
            if (need == 0) {
                if (buf_append(out, k_replacement, 3))
                    return -ENOMEM;
                memmove(d->hold, d->hold + 1, --d->n_hold);
            } else if (d->n_hold >= need) {
                if (buf_append(out, d->hold, need))
                    return -ENOMEM;
                memmove(d->hold, d->hold + need, d->n_hold - need);
                d->n_hold -= need;
            } else {
                break; /* wait for more bytes */
            }
            if (d->n_hold == 0)
                break;
        }
    }
    return 0;
}

int tok_detok_feed(struct tok_detok *d, int32_t id, struct buf *out)
{
    size_t n;
    const char *p = tok_piece(d->t, id, (d->flags & TOK_DETOK_SPECIAL) != 0, &n);
    if (!p)
        return -EINVAL;
    /* the dummy prefix sits on the first piece that has text (BOS prints nothing) */
    if (!d->started && n) {
        d->started = 1;
        if ((d->flags & TOK_DETOK_STRIP_SPACE) && d->t->is_spm && d->t->add_space_prefix &&
            p[0] == ' ') {
            p++;
            n--;
        }
    }
    return detok_bytes(d, (const unsigned char *)p, n, out);
}

int tok_detok_flush(struct tok_detok *d, struct buf *out)
{
    if (d->n_hold) {
        d->n_hold = 0;
        return buf_append(out, k_replacement, 3);
    }
    return 0;
}

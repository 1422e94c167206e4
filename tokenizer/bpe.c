/*
 * tokenizer/bpe.c - byte-level BPE (GPT-2 style) as llama.cpp applies it.
 *
 * Text is split into words by the pre-tokenizer regexes named by
 * tokenizer.ggml.pre (run with PCRE2 and Unicode properties, each regex
 * applied to the pieces the previous one produced, unmatched text kept as
 * pieces of its own); each word's bytes are mapped to the GPT-2 byte
 * alphabet and merged pairwise, lowest merge rank first, leftmost on ties.
 * It does not normalize text (no NFC/NFKC): these models do not.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/internal.h"

/* Unicode White_Space, which llama.cpp's \s means (PCRE2's \s differs at U+0085). */
#define WS                                                                                         \
    "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"             \
    "\\x{202F}\\x{205F}\\x{3000}"
#define S_ "[" WS "]"
#define NS_ "[^" WS "]"

#define RE_GPT2                                                                                    \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|" S_ "+(?!" NS_ ")"
#define RE_LLAMA3_(NUM)                                                                            \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" NUM \
    "| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|" S_ "*[\\r\\n]+|" S_ "+(?!" NS_ ")|" S_ "+"

struct pre_def {
    const char *names; /* space-separated tokenizer.ggml.pre values */
    int ignore_merges;
    int add_bos;
    const char *regex[4];
};

static const struct pre_def k_pre[] = {
    {"default", 0, 0, {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}},
    {"llama3 llama-v3 llama-bpe falcon3", 1, 1, {RE_LLAMA3_("\\p{N}{1,3}")}},
    {"dbrx smaug-bpe chatglm-bpe", 0, 0, {RE_LLAMA3_("\\p{N}{1,3}")}},
    {"qwen2 deepseek-r1-qwen megrez stablelm2", 0, 0, {RE_LLAMA3_("\\p{N}")}},
    {"gpt-2 gpt2 phi-2 mpt olmo jais jina-es jina-de jina-v1-en jina-v2-es jina-v2-de "
     "jina-v2-code gigachat roberta-bpe",
     0,
     0,
     {RE_GPT2}},
    {"smollm starcoder refact command-r codeshell exaone minerva-7b", 0, 0, {"\\p{N}", RE_GPT2}},
    {"falcon", 0, 0, {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"}},
};

static int name_in(const char *names, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = names; *p;) {
        const char *e = strchr(p, ' ');
        size_t k = e ? (size_t)(e - p) : strlen(p);
        if (k == n && memcmp(p, name, n) == 0)
            return 1;
        p += k + (e ? 1 : 0);
    }
    return 0;
}

/* ---- the GPT-2 byte alphabet ---------------------------------------------- */

static int printable_byte(unsigned b)
{
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

uint32_t tok_byte_to_cp(uint8_t b)
{
    if (printable_byte(b))
        return b;
    /* the others, in byte order, take 256, 257, ... */
    uint32_t k = 0;
    for (unsigned i = 0; i < b; i++)
        k += !printable_byte(i);
    return 256 + k;
}

int tok_cp_to_byte(uint32_t cp)
{
    if (cp < 256)
        return printable_byte(cp) ? (int)cp : -1;
    uint32_t k = 256;
    for (unsigned i = 0; i < 256; i++)
        if (!printable_byte(i) && k++ == cp)
            return (int)i;
    return -1;
}

/* ---- merges table ---------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static int merges_put(struct tok_merges *m, int32_t l, int32_t r, int32_t rank, int32_t res)
{
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    size_t i = mix64(key) & (m->cap - 1);
    while (m->slots[i].key != UINT64_MAX) {
        if (m->slots[i].key == key)
            return 0; /* the first (lowest) rank stays, as with emplace */
        i = (i + 1) & (m->cap - 1);
    }
    m->slots[i] = (struct tok_merge_slot){key, rank, res};
    return 0;
}

static const struct tok_merge_slot *merges_get(const struct tok_merges *m, int32_t l, int32_t r)
{
    if (!m->cap || l < 0 || r < 0)
        return NULL;
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    size_t i = mix64(key) & (m->cap - 1);
    while (m->slots[i].key != UINT64_MAX) {
        if (m->slots[i].key == key)
            return &m->slots[i];
        i = (i + 1) & (m->cap - 1);
    }
    return NULL;
}

int tok_bpe_init(struct tok *t, const struct tok_desc *d, char *err, size_t errlen)
{
    const char *pre = d->pre && *d->pre ? d->pre : "default";
    const struct pre_def *def = NULL;
    for (size_t i = 0; i < sizeof(k_pre) / sizeof(*k_pre) && !def; i++)
        if (name_in(k_pre[i].names, pre))
            def = &k_pre[i];
    if (!def) {
        snprintf(err, errlen, "unsupported pre-tokenizer '%s' (tokenizer.ggml.pre)", pre);
        return -EINVAL;
    }
    t->ignore_merges = def->ignore_merges;
    if (d->add_bos < 0)
        t->add_bos = def->add_bos;
    for (int i = 0; i < 4 && def->regex[i]; i++) {
        int ec;
        PCRE2_SIZE eo;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)def->regex[i], PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
        if (!re) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(ec, msg, sizeof(msg));
            snprintf(err, errlen, "pre-tokenizer regex %d does not compile: %s", i, (char *)msg);
            return -EINVAL;
        }
        pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter */
        t->regex[t->n_regex++] = re;
    }

    /* every byte's one-character token */
    for (int b = 0; b < 256; b++) {
        char u[4];
        size_t n = tok_utf8_encode(tok_byte_to_cp((uint8_t)b), u);
        t->byte_id[b] = tok_map_get(&t->vocab, u, n);
    }

    if (d->n_merges > (size_t)INT32_MAX) {
        snprintf(err, errlen, "too many merges (%zu)", d->n_merges);
        return -EINVAL;
    }
    size_t cap = 16;
    while (cap < d->n_merges * 2 + 1)
        cap <<= 1;
    t->merges.slots = malloc(cap * sizeof(*t->merges.slots));
    if (!t->merges.slots) {
        snprintf(err, errlen, "out of memory for %zu merges", d->n_merges);
        return -ENOMEM;
    }
    t->merges.cap = cap;
    for (size_t i = 0; i < cap; i++)
        t->merges.slots[i].key = UINT64_MAX;
    char *buf = NULL;
    size_t bufcap = 0;
    for (size_t i = 0; i < d->n_merges; i++) {
        const struct tok_bytes *m = &d->merges[i];
        /* "left right": split at the first space after the first byte */
        const char *sp = m->n > 1 ? memchr(m->p + 1, ' ', m->n - 1) : NULL;
        if (!sp)
            continue; /* llama.cpp keeps it as an unusable ("", "") pair */
        size_t ln = (size_t)(sp - m->p), rn = m->n - ln - 1;
        int32_t l = tok_map_get(&t->vocab, m->p, ln);
        int32_t r = tok_map_get(&t->vocab, sp + 1, rn);
        if (ln + rn > bufcap) {
            bufcap = (ln + rn) * 2;
            char *nb = realloc(buf, bufcap);
            if (!nb) {
                free(buf);
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
            }
            buf = nb;
        }
        memcpy(buf, m->p, ln);
        memcpy(buf + ln, sp + 1, rn);
        int32_t res = tok_map_get(&t->vocab, buf, ln + rn);
        /* a merge whose parts or result are not tokens can never apply here */
        if (l >= 0 && r >= 0 && res >= 0)
            merges_put(&t->merges, l, r, (int32_t)i, res);
    }
    free(buf);
    return 0;
}

void tok_bpe_free(struct tok *t)
{
    for (uint32_t i = 0; i < t->n_regex; i++)
        pcre2_code_free(t->regex[i]);
    t->n_regex = 0;
    free(t->merges.slots);
    t->merges.slots = NULL;
    t->merges.cap = 0;
}

/* ---- pre-tokenizer ---------------------------------------------------------- */

struct span {
    size_t off, len;
};

struct spans {
    struct span *v;
    size_t n, cap;
};

static int spans_push(struct spans *s, size_t off, size_t len)
{
    if (!len)
        return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        struct span *v = realloc(s->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (struct span){off, len};
    return 0;
}

/* Splits each span of `in` by `re` into `out`: matches and the gaps between them. */
static int split(const pcre2_code *re, const char *text, const struct spans *in, struct spans *out)
{
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md)
        return -ENOMEM;
    int rc = 0;
    out->n = 0;
    for (size_t i = 0; i < in->n && !rc; i++) {
        PCRE2_SPTR s = (PCRE2_SPTR)(text + in->v[i].off);
        size_t n = in->v[i].len, pos = 0, prev = 0;
        while (pos < n && !rc) {
            int m = pcre2_match(re, s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
            if (m < 0)
                break; /* no more matches (or a match limit): the rest is one gap */
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            size_t ms = ov[0], me = ov[1];
            if (me == ms) { /* empty match: step over one character */
                pos = ms + 1;
                while (pos < n && (s[pos] & 0xc0) == 0x80)
                    pos++;
                continue;
            }
            rc = spans_push(out, in->v[i].off + prev, ms - prev);
            if (!rc)
                rc = spans_push(out, in->v[i].off + ms, me - ms);
            prev = pos = me;
        }
        if (!rc)
            rc = spans_push(out, in->v[i].off + prev, n - prev);
    }
    pcre2_match_data_free(md);
    return rc;
}

/* ---- merging ----------------------------------------------------------------- */

struct sym {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
};

struct bigram {
    int32_t rank;
    int32_t left, right; /* symbol indexes */
    int32_t lid, rid;    /* their ids when queued */
};

struct heap {
    struct bigram *v;
    size_t n, cap;
};

static int bg_less(const struct bigram *a, const struct bigram *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static int heap_push(struct heap *h, struct bigram b)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct bigram *v = realloc(h->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bg_less(&b, &h->v[p]))
            break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = b;
    return 0;
}

static struct bigram heap_pop(struct heap *h)
{
    struct bigram top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && bg_less(&h->v[c + 1], &h->v[c]))
            c++;
        if (!bg_less(&h->v[c], &last))
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n)
        h->v[i] = last;
    return top;
}

struct bpe_work {
    struct sym *syms;
    size_t cap;
    struct heap heap;
    struct buf enc;
};

static int try_bigram(const struct tok *t, struct bpe_work *w, int32_t l, int32_t r)
{
    if (l < 0 || r < 0)
        return 0;
    const struct tok_merge_slot *m = merges_get(&t->merges, w->syms[l].id, w->syms[r].id);
    if (!m)
        return 0;
    return heap_push(&w->heap, (struct bigram){m->rank, l, r, w->syms[l].id, w->syms[r].id});
}

/* One pre-tokenized word: its bytes are b[0..n). */
static int bpe_word(const struct tok *t, struct bpe_work *w, const unsigned char *b, size_t n,
                    struct tok_ids *out)
{
    if (t->ignore_merges) {
        w->enc.n = 0;
        for (size_t i = 0; i < n; i++) {
            char u[4];
            if (buf_append(&w->enc, u, tok_utf8_encode(tok_byte_to_cp(b[i]), u)))
                return -ENOMEM;
        }
        int32_t id = tok_map_get(&t->vocab, w->enc.p, w->enc.n);
        if (id >= 0)
            return tok_ids_push(out, id);
    }
    if (n > w->cap) {
        struct sym *s = realloc(w->syms, n * sizeof(*s));
        if (!s)
            return -ENOMEM;
        w->syms = s;
        w->cap = n;
    }
    for (size_t i = 0; i < n; i++)
        w->syms[i] =
            (struct sym){t->byte_id[b[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1};
    w->heap.n = 0;
    for (size_t i = 1; i < n; i++)
        if (try_bigram(t, w, (int32_t)i - 1, (int32_t)i))
            return -ENOMEM;
    while (w->heap.n) {
        struct bigram bg = heap_pop(&w->heap);
        struct sym *l = &w->syms[bg.left], *r = &w->syms[bg.right];
        /* skip pairs that an earlier merge changed */
        if (l->id != bg.lid || r->id != bg.rid || l->next != bg.right)
            continue;
        const struct tok_merge_slot *m = merges_get(&t->merges, l->id, r->id);
        l->id = m->result;
        r->id = -2; /* dead */
        l->next = r->next;
        if (r->next >= 0)
            w->syms[r->next].prev = bg.left;
        if (try_bigram(t, w, l->prev, bg.left) || try_bigram(t, w, bg.left, l->next))
            return -ENOMEM;
    }
    for (int32_t i = 0; i >= 0 && (size_t)i < n; i = w->syms[i].next) {
        int32_t id = w->syms[i].id;
        if (id >= 0) {
            if (tok_ids_push(out, id))
                return -ENOMEM;
        }
        /* a byte with no token of its own is dropped, as llama.cpp does */
    }
    return 0;
}

int tok_bpe_encode(const struct tok *t, const char *text, size_t len, struct tok_ids *out)
{
    struct spans a = {0}, b = {0};
    struct bpe_work w = {0};
    int rc = spans_push(&a, 0, len);
    for (uint32_t i = 0; i < t->n_regex && !rc; i++) {
        rc = split(t->regex[i], text, &a, &b);
        struct spans tmp = a;
        a = b;
        b = tmp;
    }
    for (size_t i = 0; i < a.n && !rc; i++)
        rc = bpe_word(t, &w, (const unsigned char *)text + a.v[i].off, a.v[i].len, out);
    free(a.v);
    free(b.v);
    free(w.syms);
    free(w.heap.v);
    free(w.enc.p);
    return rc;
}

/*
 * server/openai.c - the OpenAI API's shapes: a chat or completion body
 * checked field by field into a struct srv_request (or a 4xx error naming
 * the field), and a running job's engine events written back as OpenAI
 * JSON or server-sent events.  No HTTP here: http.c moves the bytes.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "server/srv.h"

#define MAX_N 16
#define MAX_STOP 16
#define MAX_LOGPROBS 20
#define MAX_PROMPTS 64
#define MAX_INPUTS 2048 /* embeddings: OpenAI's limit on inputs per request */

/* ---- small helpers ---------------------------------------------------------- */

char *srv_utf8_dup(const char *p, size_t n)
{
    struct buf b = {0};
    if (tok_utf8_clean(p, n, &b) || buf_append(&b, "", 1)) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

int srv_fail(struct srv_error *err, unsigned status, const char *param, const char *code,
             const char *fmt, ...)
{
    err->status = status;
    err->retry_after = 0;
    err->type = status == 401 ? "authentication_error"
                : status == 404
                    ? (code && !strcmp(code, "model_not_found") ? "invalid_request_error"
                                                                : "not_found_error")
                : status == 429 ? "rate_limit_error"
                : status >= 500 ? "server_error"
                                : "invalid_request_error";
    err->code = code;
    snprintf(err->param, sizeof(err->param), "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return -1;
}

char *srv_error_json(const struct srv_error *err)
{
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    char *msg = srv_utf8_dup(err->message, strlen(err->message));
    cJSON_AddStringToObject(e, "message", msg ? msg : "error");
    free(msg);
    cJSON_AddStringToObject(e, "type", err->type ? err->type : "invalid_request_error");
    if (err->param[0])
        cJSON_AddStringToObject(e, "param", err->param);
    else
        cJSON_AddNullToObject(e, "param");
    if (err->code)
        cJSON_AddStringToObject(e, "code", err->code);
    else
        cJSON_AddNullToObject(e, "code");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

/*
 * Checks the raw body before cJSON sees it: cJSON takes invalid UTF-8, raw
 * control bytes in strings and \u0000 (which would cut a string short).
 */
static int body_ok(const char *p, size_t n, struct srv_error *err)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
            return srv_fail(err, 400, NULL, NULL,
                            "the body has a raw control byte 0x%02x at offset %zu", c, i);
        if (c == '\\' && i + 1 < n) {
            if (p[i + 1] == 'u' && i + 5 < n && !strncmp(p + i + 2, "0000", 4))
                return srv_fail(err, 400, NULL, NULL,
                                "strings must not contain NUL characters (\\u0000)");
            i++; /* skip the escaped character */
        }
    }
    struct buf b = {0};
    int rc = tok_utf8_clean(p, n, &b);
    int same = !rc && b.n == n;
    free(b.p);
    if (rc)
        return srv_fail(err, 500, NULL, NULL, "out of memory");
    if (!same)
        return srv_fail(err, 400, NULL, NULL, "the body is not valid UTF-8");
    return 0;
}

/* The checks every body passes, then cJSON; text, not a JSON object, or trailing text is a 400. */
static cJSON *parse_checked(const char *body, size_t len, struct srv_error *err)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) {
        srv_fail(err, 400, NULL, NULL, "the body is not valid JSON (at byte %zu)",
                 end && end >= body ? (size_t)(end - body) : (size_t)0);
        return NULL;
    }
    for (const char *p = end; p && p < body + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            srv_fail(err, 400, NULL, NULL, "the body has text after the JSON value");
            return NULL;
        }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        srv_fail(err, 400, NULL, NULL, "the body must be a JSON object");
        return NULL;
    }
    return root;
}

cJSON *srv_parse_json(const char *body, size_t len, struct srv_error *err)
{
    if (body_ok(body, len, err))
        return NULL;
    return parse_checked(body, len, err);
}

/* ---- token-id arrays without a cJSON node per id ------------------------------ */

/*
 * A run of IDS_MIN or more plain integers ("[1, 2, 3, ...]") is read from
 * the text straight into int32s and replaced, in a copy of the body, by
 * {"KEY":K}, KEY a random 64-bit nonce of this parse (so a client cannot
 * forge one, not even with \u escapes), and cJSON never builds a 64-byte
 * node per id.  An 8 MiB body of
 * ids then costs the body, its copy and 4 bytes an id.
 */
#define IDS_MIN 32

/* Whether a JSON integer starts at p: -?(0|[1-9][0-9]*); its end in *q and value in *v. */
static int scan_int(const char *p, const char *end, const char **q, int64_t *v)
{
    int neg = p < end && *p == '-';
    p += neg;
    if (p >= end || *p < '0' || *p > '9' ||
        (*p == '0' && p + 1 < end && p[1] >= '0' && p[1] <= '9'))
        return 0;
    int64_t x = 0;
    for (; p < end && *p >= '0' && *p <= '9'; p++) {
        x = x * 10 + (*p - '0');
        if (x > (int64_t)1 << 32)
            return 0; /* past int32 either way: cJSON's path reports it */
    }
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E'))
        return 0;
    *q = p;
    *v = neg ? -x : x;
    return 1;
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* The number of integers in the array at p ('['), with *after its end; 0 when it is not one. */
static size_t int_array_len(const char *p, const char *end, const char **after)
{
    size_t n = 0;
    p = skip_ws(p + 1, end);
    if (p < end && *p == ']')
        return 0;
    for (;;) {
        int64_t v;
        if (!scan_int(p, end, &p, &v) || v < INT32_MIN || v > INT32_MAX)
            return 0;
        n++;
        p = skip_ws(p, end);
        if (p < end && *p == ']') {
            *after = p + 1;
            return n;
        }
        if (p >= end || *p != ',')
            return 0;
        p = skip_ws(p + 1, end);
    }
}

void srv_ids_free(struct srv_ids *ids)
{
    free(ids->v);
    free(ids->start);
    free(ids->len);
    memset(ids, 0, sizeof(*ids));
}

int srv_ids_get(const struct srv_ids *ids, const cJSON *v, const int32_t **out, int *n)
{
    const cJSON *k = cJSON_IsObject(v) ? v->child : NULL;
    if (!k || k->next || !ids->key[0] || strcmp(k->string, ids->key) || !cJSON_IsNumber(k) ||
        k->valuedouble < 0 || k->valuedouble >= ids->n_runs)
        return 0;
    int i = (int)k->valuedouble;
    *out = ids->v + ids->start[i];
    *n = (int)ids->len[i];
    return 1;
}

/* Appends one run (the integers of the array at p, known to be n of them). */
static int ids_take(struct srv_ids *ids, const char *p, const char *end, size_t n)
{
    if (ids->n_runs == ids->cap_runs) {
        int cap = ids->cap_runs ? 2 * ids->cap_runs : 8;
        size_t *a = realloc(ids->start, sizeof(*a) * (size_t)cap);
        if (a)
            ids->start = a;
        size_t *b = a ? realloc(ids->len, sizeof(*b) * (size_t)cap) : NULL;
        if (!b)
            return -ENOMEM;
        ids->len = b;
        ids->cap_runs = cap;
    }
    if (ids->n + n > ids->cap) {
        size_t cap = ids->cap ? ids->cap : 1024;
        while (cap < ids->n + n)
            cap *= 2;
        int32_t *v = realloc(ids->v, sizeof(*v) * cap);
        if (!v)
            return -ENOMEM;
        ids->v = v;
        ids->cap = cap;
    }
    ids->start[ids->n_runs] = ids->n;
    ids->len[ids->n_runs++] = n;
    p++;
    for (size_t i = 0; i < n; i++) { /* int_array_len has checked the syntax */
        int64_t v = 0;
        scan_int(skip_ws(p, end), end, &p, &v);
        ids->v[ids->n++] = (int32_t)v;
        p = skip_ws(p, end) + 1; /* past the ',' or the ']' */
    }
    return 0;
}

cJSON *srv_parse_json_ids(const char *body, size_t len, struct srv_ids *ids, struct srv_error *err)
{
    memset(ids, 0, sizeof(*ids));
    if (body_ok(body, len, err))
        return NULL;
    const char *end = body + len;
    char *copy = NULL;
    int in_str = 0;
    for (const char *p = body; p < end; p++) {
        if (in_str) {
            if (*p == '\\')
                p++;
            else if (*p == '"')
                in_str = 0;
            continue;
        }
        if (*p == '"') {
            in_str = 1;
            continue;
        }
        const char *after;
        size_t n = *p == '[' ? int_array_len(p, end, &after) : 0;
        if (n < IDS_MIN)
            continue;
        if (!copy) { /* the first run: the copy to rewrite, and this parse's key */
            if (!(copy = malloc(len))) {
                srv_fail(err, 500, NULL, NULL, "out of memory");
                return NULL;
            }
            memcpy(copy, body, len);
            uint64_t nonce = 0;
            if (getrandom(&nonce, sizeof(nonce), GRND_NONBLOCK) != (ssize_t)sizeof(nonce))
                nonce = srv_random();
            snprintf(ids->key, sizeof(ids->key), "ids-%016llx", (unsigned long long)nonce);
        }
        if (ids_take(ids, p, end, n)) {
            free(copy);
            srv_ids_free(ids);
            srv_fail(err, 500, NULL, NULL, "out of memory");
            return NULL;
        }
        /* fits: an array of IDS_MIN integers is at least 2 * IDS_MIN + 1 bytes, more than
         * {"ids-<16 hex>":K} */
        size_t at = (size_t)(p - body), span = (size_t)(after - p);
        int k = snprintf(copy + at, span, "{\"%s\":%d", ids->key, ids->n_runs - 1);
        memset(copy + at + k, ' ', span - (size_t)k);
        copy[at + span - 1] = '}';
        p = after - 1;
    }
    cJSON *root = parse_checked(copy ? copy : body, len, err);
    free(copy);
    if (!root)
        srv_ids_free(ids);
    return root;
}

/* ---- field readers: each returns 0 (absent or null leaves *out), or -1 ------ */

static int get_number(const cJSON *o, const char *key, double lo, double hi, int lo_open,
                      double *out, struct srv_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return srv_fail(err, 400, key, NULL, "%s must be a number", key);
    double d = v->valuedouble;
    if (d > hi || d < lo || (lo_open && d == lo))
        return srv_fail(err, 400, key, NULL, "%s must be %s %g and at most %g, not %g", key,
                        lo_open ? "above" : "at least", lo, hi, d);
    *out = d;
    return 0;
}

static int is_int(const cJSON *v, double lo, double hi)
{
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) &&
           v->valuedouble == floor(v->valuedouble) && v->valuedouble >= lo && v->valuedouble <= hi;
}

static int get_int(const cJSON *o, const char *key, double lo, double hi, int64_t *out,
                   struct srv_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!is_int(v, -9.2e18, 9.2e18))
        return srv_fail(err, 400, key, NULL, "%s must be an integer", key);
    if (!is_int(v, lo, hi))
        return srv_fail(err, 400, key, NULL, "%s must be from %.0f to %.0f, not %.0f", key, lo, hi,
                        v->valuedouble);
    *out = (int64_t)v->valuedouble;
    return 0;
}

static int get_bool(const cJSON *o, const char *key, int *out, struct srv_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsBool(v))
        return srv_fail(err, 400, key, NULL, "%s must be true or false", key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Appends a prompt text's token ids as a new prompt. */
static int add_prompt(struct srv_request *r, int32_t *ids, int n, struct srv_error *err)
{
    int most = r->kind == SRV_EMBED ? MAX_INPUTS : MAX_PROMPTS;
    if (r->n_prompts >= most) {
        free(ids);
        return srv_fail(err, 400, r->kind == SRV_EMBED ? "input" : "prompt", NULL,
                        "at most %d %s per request", most,
                        r->kind == SRV_EMBED ? "inputs" : "prompts");
    }
    int32_t **p = realloc(r->prompts, sizeof(*p) * (size_t)(r->n_prompts + 1));
    int *np = p ? realloc(r->n_prompt, sizeof(*np) * (size_t)(r->n_prompts + 1)) : NULL;
    if (p)
        r->prompts = p;
    if (np)
        r->n_prompt = np;
    if (!p || !np) {
        free(ids);
        return srv_fail(err, 500, NULL, NULL, "out of memory");
    }
    r->prompts[r->n_prompts] = ids;
    r->n_prompt[r->n_prompts++] = n;
    return 0;
}

static int encode(const struct tok *t, const char *text, size_t len, unsigned flags,
                  struct srv_request *r, struct srv_error *err)
{
    int32_t *ids;
    int64_t n = tok_encode_alloc(t, text, len, flags, &ids);
    if (n < 0)
        return n == -ENOMEM ? srv_fail(err, 500, NULL, NULL, "out of memory")
                            : srv_fail(err, 400, "prompt", NULL, "the text cannot be tokenized");
    return add_prompt(r, ids, (int)n, err);
}

/*
 * Token ids, each checked against the vocabulary, into *out (malloc'd): from
 * a cJSON array of numbers (arr), or from a run srv_parse_json_ids read (v, n;
 * arr NULL).  0, or -1 with a 400 naming param[i].
 */
static int take_ids(const cJSON *arr, const int32_t *v, int n, int n_vocab, const char *param,
                    int32_t **out, struct srv_error *err)
{
    if (arr)
        n = cJSON_GetArraySize(arr);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    if (!ids)
        return srv_fail(err, 500, NULL, NULL, "out of memory");
    const cJSON *c = arr ? arr->child : NULL;
    for (int i = 0; i < n; i++, c = c ? c->next : NULL) {
        if (arr ? !is_int(c, 0, n_vocab - 1) : v[i] < 0 || v[i] >= n_vocab) {
            free(ids);
            return srv_fail(err, 400, param, NULL,
                            "%s[%d] is not a token id (an integer from 0 to %d)", param, i,
                            n_vocab - 1);
        }
        ids[i] = arr ? (int32_t)c->valuedouble : v[i];
    }
    *out = ids;
    return 0;
}

static int ids_prompt(const cJSON *arr, int n_vocab, const char *param, struct srv_request *r,
                      struct srv_error *err)
{
    int32_t *ids;
    return take_ids(arr, NULL, 0, n_vocab, param, &ids, err)
               ? -1
               : add_prompt(r, ids, cJSON_GetArraySize(arr), err);
}

/* A prompt of token ids read by srv_parse_json_ids. */
static int run_prompt(const int32_t *v, int n, int n_vocab, const char *param,
                      struct srv_request *r, struct srv_error *err)
{
    int32_t *ids;
    return take_ids(NULL, v, n, n_vocab, param, &ids, err) ? -1 : add_prompt(r, ids, n, err);
}

static int all_ints(const cJSON *arr)
{
    for (const cJSON *v = arr->child; v; v = v->next)
        if (!cJSON_IsNumber(v))
            return 0;
    return 1;
}

static int parse_prompt(const cJSON *root, const char *key, const struct srv_ids *runs,
                        struct engine *e, struct srv_request *r, struct srv_error *err)
{
    const struct tok *t = eng_tok(e);
    unsigned flags = TOK_PARSE_SPECIAL | (tok_add_bos(t) ? TOK_ADD_BOS : 0);
    int n_vocab = (int)tok_n_vocab(t);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, key);
    const int32_t *rv;
    int rn;
    if (!p || cJSON_IsNull(p))
        return srv_fail(err, 400, key, NULL, "%s is required", key);
    if (cJSON_IsString(p))
        return encode(t, p->valuestring, strlen(p->valuestring), flags, r, err);
    if (srv_ids_get(runs, p, &rv, &rn))
        return run_prompt(rv, rn, n_vocab, key, r, err);
    if (!cJSON_IsArray(p) || !p->child)
        return srv_fail(err, 400, key, NULL,
                        "%s must be a string, an array of strings, an array of token ids "
                        "or an array of such arrays (non-empty)",
                        key);
    if (cJSON_IsNumber(p->child)) {
        if (!all_ints(p))
            return srv_fail(err, 400, key, NULL, "%s mixes token ids with other values", key);
        return ids_prompt(p, n_vocab, key, r, err);
    }
    int i = 0, first_ids = cJSON_IsArray(p->child) || srv_ids_get(runs, p->child, &rv, &rn);
    for (const cJSON *v = p->child; v; v = v->next, i++) {
        int rc;
        if (cJSON_IsString(v) && cJSON_IsString(p->child))
            rc = encode(t, v->valuestring, strlen(v->valuestring), flags, r, err);
        else if (first_ids && srv_ids_get(runs, v, &rv, &rn))
            rc = run_prompt(rv, rn, n_vocab, key, r, err);
        else if (cJSON_IsArray(v) && first_ids && v->child && all_ints(v))
            rc = ids_prompt(v, n_vocab, key, r, err);
        else
            rc =
                srv_fail(err, 400, key, NULL, "%s[%d] must be a %s like %s[0]", key, i,
                         cJSON_IsString(p->child) ? "string" : "non-empty array of token ids", key);
        if (rc)
            return rc;
    }
    return 0;
}

/* The chat messages rendered by the model's template (server/chat.c), then tokenized. */
static int parse_messages(const cJSON *root, struct engine *e, const struct srv_model *model,
                          struct srv_request *r, struct srv_error *err)
{
    if (!model->chat)
        return srv_fail(err, 503, NULL, NULL, "the model is still loading");
    struct buf prompt = {0};
    int add_bos = 0;
    int rc = srv_chat_prompt(model->chat, root, &prompt, &add_bos, err);
    /* the template opened the reasoning (R1); a forced call starts at once */
    if (!rc && r->reasoning && r->tool_mode != SRV_TOOL_REQUIRED &&
        r->tool_mode != SRV_TOOL_NAMED) {
        size_t n = prompt.n;
        while (n && (prompt.p[n - 1] == '\n' || prompt.p[n - 1] == ' '))
            n--;
        r->think_open = n >= 7 && !memcmp(prompt.p + n - 7, "<think>", 7);
    }
    if (!rc)
        rc = encode(eng_tok(e), prompt.p ? prompt.p : "", prompt.n,
                    TOK_PARSE_SPECIAL | (add_bos ? TOK_ADD_BOS : 0), r, err);
    free(prompt.p);
    return rc;
}

static int parse_stop(const cJSON *root, struct srv_request *r, struct srv_error *err)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (!s || cJSON_IsNull(s))
        return 0;
    if (!cJSON_IsString(s) && !cJSON_IsArray(s))
        return srv_fail(err, 400, "stop", NULL, "stop must be a string or an array of strings");
    int n = cJSON_IsString(s) ? 1 : cJSON_GetArraySize(s);
    if (n > MAX_STOP)
        return srv_fail(err, 400, "stop", NULL, "stop has %d strings; at most %d", n, MAX_STOP);
    r->stop = calloc((size_t)(n ? n : 1), sizeof(char *));
    if (!r->stop)
        return srv_fail(err, 500, NULL, NULL, "out of memory");
    const cJSON *v = cJSON_IsString(s) ? s : s->child;
    for (int i = 0; v && i < n; i++, v = cJSON_IsString(s) ? NULL : v->next) {
        if (!cJSON_IsString(v))
            return srv_fail(err, 400, "stop", NULL, "stop[%d] must be a string", i);
        if (!*v->valuestring)
            continue; /* an empty stop string would end every request at once */
        if (!(r->stop[r->p.n_stop] = strdup(v->valuestring)))
            return srv_fail(err, 500, NULL, NULL, "out of memory");
        r->p.n_stop++;
    }
    r->p.stop = (const char *const *)r->stop;
    return 0;
}

/* A field that is a list of token ids (a plain array, or a run srv_parse_json_ids read). */
static int get_ids(const cJSON *root, const char *key, const struct srv_ids *runs, int n_vocab,
                   int32_t **out, int *n_out, struct srv_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    const int32_t *rv;
    int rn = 0;
    *out = NULL;
    *n_out = 0;
    if (!v || cJSON_IsNull(v))
        return 0;
    int run = srv_ids_get(runs, v, &rv, &rn);
    if (!run && (!cJSON_IsArray(v) || !all_ints(v)))
        return srv_fail(err, 400, key, NULL, "%s must be an array of token ids", key);
    if (take_ids(run ? NULL : v, rv, rn, n_vocab, key, out, err))
        return -1;
    *n_out = run ? rn : cJSON_GetArraySize(v);
    return 0;
}

/*
 * Fields cinfer knows and cannot honour: a 400 naming each.  Fields it has
 * never heard of are ignored (the README's field list says which are which).
 */
static int refuse_known(const cJSON *root, enum srv_kind kind, struct srv_error *err)
{
    static const struct {
        const char *key;
        int chat_only;
        const char *why;
    } k_refused[] = {
        {"use_beam_search", 0, "beam search is not supported"},
        {"length_penalty", 0, "length_penalty applies to beam search, which is not supported"},
        {"truncate_prompt_tokens", 0, "prompt truncation is not supported"},
        {"audio", 1, "audio output is not supported"},
        {"prediction", 1, "predicted outputs are not supported"},
        {"web_search_options", 1, "web search is not supported"},
        {"reasoning_effort", 1, "reasoning_effort is not supported"},
    };
    for (size_t i = 0; i < sizeof(k_refused) / sizeof(k_refused[0]); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, k_refused[i].key);
        if (!v || cJSON_IsNull(v) || (k_refused[i].chat_only && kind != SRV_CHAT))
            continue;
        if (cJSON_IsFalse(v) && !strcmp(k_refused[i].key, "use_beam_search"))
            continue;
        return srv_fail(err, 400, k_refused[i].key, NULL, "%s: %s", k_refused[i].key,
                        k_refused[i].why);
    }
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(root, "store");
    if (st && !cJSON_IsNull(st) && !cJSON_IsFalse(st))
        return srv_fail(err, 400, "store", NULL,
                        "store: this server keeps no responses (stateless)");
    const cJSON *mo = cJSON_GetObjectItemCaseSensitive(root, "modalities");
    if (mo && !cJSON_IsNull(mo)) {
        int ok = cJSON_IsArray(mo);
        for (const cJSON *m = ok ? mo->child : NULL; m; m = m->next)
            ok = ok && cJSON_IsString(m) && !strcmp(m->valuestring, "text");
        if (!ok)
            return srv_fail(err, 400, "modalities", NULL, "modalities: only [\"text\"] is served");
    }
    const cJSON *tier = cJSON_GetObjectItemCaseSensitive(root, "service_tier");
    if (tier && !cJSON_IsNull(tier) &&
        !(cJSON_IsString(tier) &&
          (!strcmp(tier->valuestring, "auto") || !strcmp(tier->valuestring, "default"))))
        return srv_fail(err, 400, "service_tier", NULL,
                        "service_tier: only \"auto\" and \"default\" are served");
    return 0;
}

/* The three FIM tokens (prefix, suffix, middle) of the vocabulary; 0, or -1 when it has none. */
static int fim_tokens(const struct tok *t, int32_t out[3])
{
    static const char *const k_sets[][3] = {
        {"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"}, /* Qwen2.5-Coder */
        {"<fim_prefix>", "<fim_suffix>", "<fim_middle>"},       /* StarCoder, SmolLM */
        {"<|fim_begin|>", "<|fim_hole|>", "<|fim_end|>"},       /* DeepSeek-Coder (PSM order) */
    };
    for (size_t s = 0; s < sizeof(k_sets) / sizeof(k_sets[0]); s++) {
        int ok = 1;
        for (int k = 0; k < 3 && ok; k++) {
            int32_t id[4];
            int64_t n = tok_encode(t, k_sets[s][k], strlen(k_sets[s][k]), TOK_PARSE_SPECIAL, id, 4);
            ok = n == 1 && (tok_type(t, id[0]) == TOK_TYPE_CONTROL ||
                            tok_type(t, id[0]) == TOK_TYPE_USER_DEFINED);
            out[k] = id[0];
        }
        if (ok)
            return 0;
    }
    return -1;
}

/*
 * completions suffix: each prompt (which must be text) becomes
 * [BOS] <prefix> prompt <suffix> suffix <middle>, the model's fill-in-the-
 * middle form; a 400 when the vocabulary has no FIM tokens.
 */
static int apply_suffix(const cJSON *root, struct engine *e, struct srv_request *r,
                        struct srv_error *err)
{
    const cJSON *sfx = cJSON_GetObjectItemCaseSensitive(root, "suffix");
    if (!sfx || cJSON_IsNull(sfx))
        return 0;
    if (!cJSON_IsString(sfx))
        return srv_fail(err, 400, "suffix", NULL, "suffix must be a string");
    const struct tok *t = eng_tok(e);
    int32_t fim[3];
    if (fim_tokens(t, fim))
        return srv_fail(err, 400, "suffix", NULL,
                        "suffix: this model has no fill-in-the-middle tokens");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    int texts = cJSON_IsString(p) || (cJSON_IsArray(p) && cJSON_IsString(p->child));
    if (!texts)
        return srv_fail(err, 400, "suffix", NULL, "suffix needs the prompt as text");
    int32_t *sids;
    int64_t ns = tok_encode_alloc(t, sfx->valuestring, strlen(sfx->valuestring), 0, &sids);
    if (ns < 0)
        return srv_fail(err, ns == -ENOMEM ? 500 : 400, "suffix", NULL,
                        "suffix cannot be tokenized");
    int bos = tok_add_bos(t), rc = 0;
    const cJSON *v = cJSON_IsString(p) ? p : p->child;
    for (int i = 0; i < r->n_prompts && v && !rc; i++, v = v->next) {
        int32_t *pids;
        int64_t np = tok_encode_alloc(t, v->valuestring, strlen(v->valuestring), 0, &pids);
        int32_t *ids = np < 0 ? NULL : malloc(sizeof(int32_t) * (size_t)(np + ns + 4));
        if (!ids) {
            free(pids);
            rc = srv_fail(err, 500, NULL, NULL, "out of memory");
            break;
        }
        int n = 0;
        if (bos)
            ids[n++] = tok_bos(t);
        ids[n++] = fim[0];
        memcpy(ids + n, pids, sizeof(int32_t) * (size_t)np);
        n += (int)np;
        ids[n++] = fim[1];
        memcpy(ids + n, sids, sizeof(int32_t) * (size_t)ns);
        n += (int)ns;
        ids[n++] = fim[2];
        free(pids);
        free(r->prompts[i]);
        r->prompts[i] = ids;
        r->n_prompt[i] = n;
    }
    free(sids);
    return rc;
}

/* vLLM's request extras (after n, max_tokens and stream_options are read). */
static int parse_extras(const cJSON *root, const struct srv_ids *runs, enum srv_kind kind,
                        int n_vocab, int64_t max_tokens, struct srv_request *r,
                        struct srv_error *err)
{
    int64_t k = -1;
    int b;
    int rc = refuse_known(root, kind, err);
    rc = rc ? rc : get_int(root, "prompt_logprobs", 0, MAX_LOGPROBS, &k, err);
    r->prompt_lp = (int)k;
    k = 0;
    if (!rc && !(rc = get_int(root, "min_tokens", 0, 1e9, &k, err)))
        r->p.min_tokens = (int)k;
    if (!rc && r->max_tokens_given && r->p.min_tokens > max_tokens)
        rc =
            srv_fail(err, 400, "min_tokens", NULL, "min_tokens (%d) is more than max_tokens (%lld)",
                     r->p.min_tokens, (long long)max_tokens);
    k = r->n;
    if (!rc && !(rc = get_int(root, "best_of", 1, MAX_N, &k, err)) && k != r->n)
        rc = srv_fail(err, 400, "best_of", NULL,
                      "best_of must equal n (%d): choosing the best of several is not supported",
                      r->n);
    if (!rc)
        rc = get_ids(root, "stop_token_ids", runs, n_vocab, &r->stop_ids, &r->p.n_stop_ids, err);
    r->p.stop_ids = r->stop_ids;
    b = 0;
    if (!rc && !(rc = get_bool(root, "include_stop_str_in_output", &b, err)))
        r->p.include_stop = b;
    b = 1;
    if (!rc && !(rc = get_bool(root, "skip_special_tokens", &b, err)))
        r->p.keep_special = !b;
    if (!rc && r->echo && kind == SRV_COMPLETION && r->p.logprobs)
        r->echo_lp = 1;
    r->p.prompt_logprobs = r->prompt_lp >= 0 || r->echo_lp;
    r->p.prompt_top = r->prompt_lp > r->top_logprobs ? r->prompt_lp : r->top_logprobs;
    return rc;
}

static int parse_bias(const cJSON *root, int n_vocab, struct srv_request *r, struct srv_error *err)
{
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(root, "logit_bias");
    if (!b || cJSON_IsNull(b))
        return 0;
    if (!cJSON_IsObject(b))
        return srv_fail(err, 400, "logit_bias", NULL,
                        "logit_bias must be an object of token ids to numbers");
    int n = cJSON_GetArraySize(b), i = 0;
    struct smp_bias *bias = calloc((size_t)(n ? n : 1), sizeof(*bias));
    if (!bias)
        return srv_fail(err, 500, NULL, NULL, "out of memory");
    r->p.sp.bias = bias; /* freed with the request */
    for (const cJSON *v = b->child; v; v = v->next, i++) {
        char *end;
        errno = 0;
        long long id = strtoll(v->string, &end, 10);
        if (errno || !(v->string[0] >= '0' && v->string[0] <= '9') || *end || id < 0 ||
            id >= n_vocab)
            return srv_fail(err, 400, "logit_bias", NULL,
                            "logit_bias keys must be token ids from 0 to %d", n_vocab - 1);
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= -100 && v->valuedouble <= 100))
            return srv_fail(err, 400, "logit_bias", NULL,
                            "logit_bias values must be numbers from -100 to 100");
        bias[i] = (struct smp_bias){(int32_t)id, (float)v->valuedouble};
    }
    r->p.sp.n_bias = n;
    return 0;
}

uint64_t srv_random(void)
{
    static _Atomic uint64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 48);
    return x + 0x9e3779b97f4a7c15ull * ++counter;
}

/*
 * The output constraint, at most one of: response_format json_object /
 * json_schema (OpenAI), structured_outputs {json, regex, choice, grammar,
 * json_object} (vLLM), guided_json / guided_regex / guided_choice /
 * guided_grammar (vLLM's older fields), grammar (GBNF) and json_schema
 * (llama-server).  Compiled here, on the server's thread, so that a bad
 * schema is a 400 naming what is wrong before anything is queued.  On chat,
 * tool_choice required or a named function is one too (server/tools.c).
 */
struct constraint {
    const char *field; /* where it came from, for messages */
    const char *kind;  /* eng_grammar_compile's kind */
    const cJSON *v;    /* the schema (object or boolean) or the string / array */
};

static int add_constraint(struct constraint *c, int *n, const char *field, const char *kind,
                          const cJSON *v, struct srv_error *err)
{
    if (*n)
        return srv_fail(err, 400, field, NULL, "%s and %s both constrain the output; give only one",
                        c->field, field);
    *c = (struct constraint){field, kind, v};
    *n = 1;
    return 0;
}

static int parse_structured_outputs(const cJSON *so, struct constraint *c, int *n,
                                    struct srv_error *err)
{
    if (!cJSON_IsObject(so))
        return srv_fail(err, 400, "structured_outputs", NULL,
                        "structured_outputs must be an object with one of json, regex, choice, "
                        "grammar, json_object");
    for (const cJSON *k = so->child; k; k = k->next) {
        const char *name = k->string;
        if (cJSON_IsNull(k))
            continue;
        int rc = 0;
        if (!strcmp(name, "json"))
            rc = add_constraint(c, n, "structured_outputs.json", "json_schema", k, err);
        else if (!strcmp(name, "regex") && cJSON_IsString(k))
            rc = add_constraint(c, n, "structured_outputs.regex", "regex", k, err);
        else if (!strcmp(name, "choice") && cJSON_IsArray(k))
            rc = add_constraint(c, n, "structured_outputs.choice", "choice", k, err);
        else if (!strcmp(name, "grammar") && cJSON_IsString(k))
            rc = add_constraint(c, n, "structured_outputs.grammar", "gbnf", k, err);
        else if (!strcmp(name, "json_object") && cJSON_IsBool(k)) {
            if (cJSON_IsTrue(k))
                rc = add_constraint(c, n, "structured_outputs.json_object", "json_object", k, err);
        } else {
            char param[96];
            snprintf(param, sizeof(param), "structured_outputs.%.60s", name);
            char *clean = srv_utf8_dup(name, strnlen(name, 60));
            rc = srv_fail(err, 400, param, NULL,
                          "structured_outputs.%s is not supported (cinfer takes json, regex, "
                          "choice, grammar and json_object, of the right types)",
                          clean ? clean : "");
            free(clean);
        }
        if (rc)
            return rc;
    }
    if (!*n)
        return srv_fail(err, 400, "structured_outputs", NULL,
                        "structured_outputs names no constraint (json, regex, choice, grammar or "
                        "json_object)");
    return 0;
}

static int parse_constraint(const cJSON *root, struct engine *e, enum srv_kind kind,
                            const struct srv_chat *chat, struct srv_request *r,
                            struct srv_error *err)
{
    struct constraint c = {0};
    int n = 0, rc = 0;
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(root, "response_format");
    if (rf && !cJSON_IsNull(rf)) {
        const cJSON *t = cJSON_IsObject(rf) ? cJSON_GetObjectItemCaseSensitive(rf, "type") : NULL;
        if (!cJSON_IsString(t))
            return srv_fail(err, 400, "response_format", NULL,
                            "response_format must be an object with a type: text, json_object or "
                            "json_schema");
        if (!strcmp(t->valuestring, "json_object"))
            rc = add_constraint(&c, &n, "response_format", "json_object", rf, err);
        else if (!strcmp(t->valuestring, "json_schema")) {
            const cJSON *js = cJSON_GetObjectItemCaseSensitive(rf, "json_schema");
            const cJSON *schema =
                cJSON_IsObject(js) ? cJSON_GetObjectItemCaseSensitive(js, "schema") : NULL;
            const cJSON *name =
                cJSON_IsObject(js) ? cJSON_GetObjectItemCaseSensitive(js, "name") : NULL;
            const cJSON *strict =
                cJSON_IsObject(js) ? cJSON_GetObjectItemCaseSensitive(js, "strict") : NULL;
            if (!cJSON_IsObject(js))
                return srv_fail(err, 400, "response_format.json_schema", NULL,
                                "response_format type json_schema needs a json_schema object "
                                "with the schema");
            if (!schema || !(cJSON_IsObject(schema) || cJSON_IsBool(schema)))
                return srv_fail(err, 400, "response_format.json_schema.schema", NULL,
                                "response_format.json_schema.schema must be a JSON schema "
                                "(an object)");
            if (name && !cJSON_IsString(name))
                return srv_fail(err, 400, "response_format.json_schema.name", NULL,
                                "response_format.json_schema.name must be a string");
            if (strict && !cJSON_IsBool(strict) && !cJSON_IsNull(strict))
                return srv_fail(err, 400, "response_format.json_schema.strict", NULL,
                                "response_format.json_schema.strict must be a boolean");
            rc = add_constraint(&c, &n, "response_format", "json_schema", schema, err);
        } else if (strcmp(t->valuestring, "text")) {
            char *clean = srv_utf8_dup(t->valuestring, strnlen(t->valuestring, 40));
            rc = srv_fail(err, 400, "response_format", NULL,
                          "response_format type '%s' is not one of text, json_object, "
                          "json_schema",
                          clean ? clean : "");
            free(clean);
        }
    }
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "structured_outputs");
    if (!rc && so && !cJSON_IsNull(so)) {
        struct constraint c2 = {0};
        int n2 = 0;
        rc = parse_structured_outputs(so, &c2, &n2, err);
        if (!rc)
            rc = add_constraint(&c, &n, c2.field, c2.kind, c2.v, err);
    }
    static const struct {
        const char *field, *kind;
        int json_type; /* what the value must be */
    } fields[] = {
        {"guided_json", "json_schema", cJSON_Object},
        {"guided_regex", "regex", cJSON_String},
        {"guided_choice", "choice", cJSON_Array},
        {"guided_grammar", "gbnf", cJSON_String},
        {"grammar", "gbnf", cJSON_String},
        {"json_schema", "json_schema", cJSON_Object},
    };
    for (size_t i = 0; !rc && i < sizeof fields / sizeof fields[0]; i++) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, fields[i].field);
        if (!f || cJSON_IsNull(f))
            continue;
        /* a schema may also come as its JSON text (vLLM takes both) */
        int ok = (f->type & 0xFF) == fields[i].json_type ||
                 (fields[i].json_type == cJSON_Object && (cJSON_IsString(f) || cJSON_IsBool(f)));
        if (!ok)
            return srv_fail(err, 400, fields[i].field, NULL, "%s must be %s", fields[i].field,
                            fields[i].json_type == cJSON_Object  ? "a JSON schema"
                            : fields[i].json_type == cJSON_Array ? "an array of strings"
                                                                 : "a string");
        rc = add_constraint(&c, &n, fields[i].field, fields[i].kind, f, err);
    }
    cJSON *spec = NULL; /* tool_choice required or named: the calls' grammar */
    if (!rc && kind == SRV_CHAT) {
        rc = srv_tools_request(root, chat, r, &spec, err);
        if (!rc && spec)
            rc = add_constraint(&c, &n, "tool_choice", "tool_calls", spec, err);
    } else if (!rc) {
        static const char *const tools[] = {"tools", "tool_choice", "functions", "function_call"};
        for (size_t i = 0; i < sizeof tools / sizeof tools[0]; i++) {
            const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, tools[i]);
            if (f && !cJSON_IsNull(f))
                return srv_fail(err, 400, tools[i], NULL,
                                "%s is a chat field: tools are called on /v1/chat/completions",
                                tools[i]);
        }
    }
    if (rc || !n) {
        cJSON_Delete(spec);
        return rc;
    }
    /* the source text the compiler reads */
    char *text = NULL;
    const char *src = "";
    if (cJSON_IsString(c.v) && strcmp(c.kind, "json_object"))
        src = c.v->valuestring;
    else if (strcmp(c.kind, "json_object")) {
        text = cJSON_PrintUnformatted(c.v);
        if (!text)
            return srv_fail(err, 500, NULL, NULL, "out of memory");
        src = text;
    }
    char msg[400];
    int crc = eng_grammar_compile(e, c.kind, src, strlen(src), &r->grammar, msg, sizeof(msg));
    free(text);
    cJSON_Delete(spec);
    if (crc == -ENOMEM)
        return srv_fail(err, 500, c.field, NULL, "out of memory compiling %s", c.field);
    if (crc == -EBUSY) { /* the compiler's slots are taken: as a full queue */
        srv_fail(err, 429, c.field, "rate_limit_exceeded", "%s: %s", c.field, msg);
        err->retry_after = 1;
        return -1;
    }
    if (crc)
        return srv_fail(err, 400, c.field, NULL, "%s: %s", c.field, msg);
    r->p.grammar = r->grammar;
    return 0;
}

/* The model a body names (one this server serves, or none: ours) into r->model. */
static int parse_model(const cJSON *root, const struct srv_model *model, struct srv_request *r,
                       struct srv_error *err)
{
    int rc = 0;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (m && !cJSON_IsNull(m)) {
        if (!cJSON_IsString(m))
            rc = srv_fail(err, 400, "model", NULL, "model must be a string");
        else if (strcmp(m->valuestring, model->id) &&
                 (!model->alias || strcmp(m->valuestring, model->alias))) {
            char *clean = srv_utf8_dup(m->valuestring, strnlen(m->valuestring, 100));
            rc = srv_fail(err, 404, "model", "model_not_found",
                          "The model '%s' does not exist; this server has '%s'", clean ? clean : "",
                          model->alias ? model->alias : model->id);
            free(clean);
        }
    }
    if (!rc && !(r->model = strdup(m && cJSON_IsString(m) ? m->valuestring
                                   : model->alias         ? model->alias
                                                          : model->id)))
        rc = srv_fail(err, 500, NULL, NULL, "out of memory");
    return rc;
}

int srv_parse_request(enum srv_kind kind, const char *body, size_t len, struct engine *e,
                      const struct srv_model *model, struct srv_request *r, struct srv_error *err)
{
    memset(r, 0, sizeof(*r));
    r->kind = kind;
    struct srv_ids runs;
    cJSON *root = srv_parse_json_ids(body, len, &runs, err);
    if (!root)
        return -1;
    int rc = 0;
    struct eng_info info;
    eng_get_info(e, &info);
    rc = parse_model(root, model, r, err);
    /* sampling */
    smp_params_default(&r->p.sp);
    double d;
    int64_t k;
    r->n = 1;
    d = 1.0;
    if (!rc && !(rc = get_number(root, "temperature", 0, 2, 0, &d, err)))
        r->p.sp.temperature = (float)d;
    d = 1.0;
    if (!rc && !(rc = get_number(root, "top_p", 0, 1, 1, &d, err)))
        r->p.sp.top_p = (float)d;
    k = 0;
    if (!rc && !(rc = get_int(root, "top_k", -1, 1e9, &k, err)))
        r->p.sp.top_k = k < 0 ? 0 : (int)k;
    d = 0;
    if (!rc && !(rc = get_number(root, "min_p", 0, 1, 0, &d, err)))
        r->p.sp.min_p = (float)d;
    d = 0;
    if (!rc && !(rc = get_number(root, "presence_penalty", -2, 2, 0, &d, err)))
        r->p.sp.presence_penalty = (float)d;
    d = 0;
    if (!rc && !(rc = get_number(root, "frequency_penalty", -2, 2, 0, &d, err)))
        r->p.sp.frequency_penalty = (float)d;
    d = 1;
    if (!rc && !(rc = get_number(root, "repetition_penalty", 0, 2, 1, &d, err)))
        r->p.sp.repetition_penalty = (float)d;
    k = 1;
    if (!rc && !(rc = get_int(root, "n", 1, MAX_N, &k, err)))
        r->n = (int)k;
    r->p.sp.seed = srv_random();
    k = 0;
    if (!rc && !(rc = get_int(root, "seed", -9.2e18, 9.2e18, &k, err)) &&
        cJSON_GetObjectItemCaseSensitive(root, "seed") &&
        !cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(root, "seed")))
        r->p.sp.seed = (uint64_t)k;
    /* lengths */
    int64_t max_tokens = -1;
    rc = rc ? rc : get_int(root, "max_tokens", 0, 1e9, &max_tokens, err);
    if (!rc && kind == SRV_CHAT)
        rc = get_int(root, "max_completion_tokens", 0, 1e9, &max_tokens, err);
    r->max_tokens_given = max_tokens >= 0;
    /* output options */
    int b = 0;
    rc = rc ? rc : get_bool(root, "stream", &r->stream, err);
    rc = rc ? rc : get_bool(root, "ignore_eos", &r->p.ignore_eos, err);
    const cJSON *so = rc ? NULL : cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so))
            rc = srv_fail(err, 400, "stream_options", NULL, "stream_options must be an object");
        else
            rc = get_bool(so, "include_usage", &r->include_usage, err);
        rc = rc ? rc : get_bool(so, "continuous_usage_stats", &r->continuous_usage, err);
        static const char *const k_so[] = {"include_usage", "continuous_usage_stats"};
        for (int q = 0; rc == -1 && q < 2; q++) /* the param is the member's path */
            if (!strcmp(err->param, k_so[q]))
                snprintf(err->param, sizeof(err->param), "stream_options.%s", k_so[q]);
    }
    if (!rc && kind == SRV_CHAT) {
        rc = get_bool(root, "logprobs", &b, err);
        r->p.logprobs = b;
        k = 0;
        if (!rc && !(rc = get_int(root, "top_logprobs", 0, MAX_LOGPROBS, &k, err)))
            r->top_logprobs = (int)k;
    } else if (!rc) {
        const cJSON *lp = cJSON_GetObjectItemCaseSensitive(root, "logprobs");
        if (lp && !cJSON_IsNull(lp)) {
            k = 0;
            if (!(rc = get_int(root, "logprobs", 0, MAX_LOGPROBS, &k, err))) {
                r->p.logprobs = 1;
                r->top_logprobs = (int)k;
            }
        }
        rc = rc ? rc : get_bool(root, "echo", &r->echo, err);
    }
    r->p.sp.n_logprobs = r->top_logprobs;
    if (!rc && max_tokens == 0 && !(kind == SRV_COMPLETION && r->echo))
        rc = srv_fail(err, 400, "max_tokens", NULL,
                      "max_tokens must be at least 1 (0 only with echo, for the prompt alone)");
    rc = rc ? rc : parse_extras(root, &runs, kind, info.n_vocab, max_tokens, r, err);
    const cJSON *u = rc ? NULL : cJSON_GetObjectItemCaseSensitive(root, "user");
    if (u && !cJSON_IsNull(u) && !cJSON_IsString(u))
        rc = srv_fail(err, 400, "user", NULL, "user must be a string");
    rc = rc ? rc : parse_stop(root, r, err);
    rc = rc ? rc : parse_bias(root, info.n_vocab, r, err);
    rc = rc ? rc : parse_constraint(root, e, kind, model->chat, r, err);
    /* the prompts */
    if (!rc)
        rc = kind == SRV_CHAT ? parse_messages(root, e, model, r, err)
                              : parse_prompt(root, "prompt", &runs, e, r, err);
    if (!rc && kind == SRV_COMPLETION)
        rc = apply_suffix(root, e, r, err);
    for (int i = 0; !rc && i < r->n_prompts; i++) {
        int np = r->n_prompt[i];
        const char *what = kind == SRV_CHAT ? "messages" : "prompt";
        if (np == 0)
            rc = srv_fail(err, 400, what, NULL, "the prompt is empty");
        else if (np >= info.n_ctx)
            rc = srv_fail(err, 400, what, "context_length_exceeded",
                          "This model's maximum context length is %d tokens. However, your %s "
                          "resulted in %d tokens.",
                          info.n_ctx, what, np);
        else if (r->max_tokens_given && np + max_tokens > info.n_ctx)
            rc =
                srv_fail(err, 400, "max_tokens", "context_length_exceeded",
                         "This model's maximum context length is %d tokens. However, you "
                         "requested %lld tokens (%d in the %s, %lld in the completion).",
                         info.n_ctx, (long long)(np + max_tokens), np, what, (long long)max_tokens);
    }
    /* the default length: OpenAI's 16 for completions, the context for chat */
    r->p.max_tokens = (int)(r->max_tokens_given ? max_tokens : kind == SRV_CHAT ? info.n_ctx : 16);
    cJSON_Delete(root);
    srv_ids_free(&runs);
    return rc;
}

int srv_parse_embeddings(const char *body, size_t len, struct engine *e,
                         const struct srv_model *model, struct srv_request *r,
                         struct srv_error *err)
{
    memset(r, 0, sizeof(*r));
    r->kind = SRV_EMBED;
    r->n = 1;
    struct srv_ids runs;
    cJSON *root = srv_parse_json_ids(body, len, &runs, err);
    if (!root)
        return -1;
    struct eng_info info;
    eng_get_info(e, &info);
    int rc = parse_model(root, model, r, err);
    const cJSON *f = rc ? NULL : cJSON_GetObjectItemCaseSensitive(root, "encoding_format");
    if (f && !cJSON_IsNull(f)) {
        if (cJSON_IsString(f) && !strcmp(f->valuestring, "base64"))
            r->base64 = 1;
        else if (!cJSON_IsString(f) || strcmp(f->valuestring, "float"))
            rc = srv_fail(err, 400, "encoding_format", NULL,
                          "encoding_format must be \"float\" or \"base64\"");
    }
    const cJSON *d = rc ? NULL : cJSON_GetObjectItemCaseSensitive(root, "dimensions");
    if (d && !cJSON_IsNull(d) && !(is_int(d, 1, 1e9) && (int)d->valuedouble == info.n_embd))
        rc = srv_fail(err, 400, "dimensions", NULL,
                      "dimensions: this model's embeddings have %d dimensions and cannot be "
                      "shortened",
                      info.n_embd);
    const cJSON *u = rc ? NULL : cJSON_GetObjectItemCaseSensitive(root, "user");
    if (u && !cJSON_IsNull(u) && !cJSON_IsString(u))
        rc = srv_fail(err, 400, "user", NULL, "user must be a string");
    rc = rc ? rc : parse_prompt(root, "input", &runs, e, r, err);
    if (rc && !strcmp(err->param, "prompt")) /* the tokenizer's refusal names the prompt */
        snprintf(err->param, sizeof(err->param), "input");
    for (int i = 0; !rc && i < r->n_prompts; i++) {
        if (r->n_prompt[i] == 0)
            rc = srv_fail(err, 400, "input", NULL, "input %d is empty", i);
        else if (r->n_prompt[i] >= info.n_ctx)
            rc = srv_fail(err, 400, "input", "context_length_exceeded",
                          "This model's maximum context length is %d tokens. However, input %d "
                          "has %d tokens.",
                          info.n_ctx, i, r->n_prompt[i]);
    }
    smp_params_default(&r->p.sp);
    r->p.sp.temperature = 0;
    r->p.sp.logprobs = 0;
    r->p.pooling = model->pooling     ? model->pooling
                   : info.pooling > 0 ? info.pooling
                                      : ENG_POOL_MEAN;
    cJSON_Delete(root);
    srv_ids_free(&runs);
    return rc;
}

int srv_parse_responses(const char *body, size_t len, struct engine *e,
                        const struct srv_model *model, struct srv_request *r, struct srv_error *err)
{
    memset(r, 0, sizeof(*r));
    cJSON *root = srv_parse_json(body, len, err);
    if (!root)
        return -1;
    cJSON *echo = NULL;
    cJSON *chat = srv_resp_translate(root, &echo, err);
    cJSON_Delete(root);
    char *text = chat ? cJSON_PrintUnformatted(chat) : NULL;
    cJSON_Delete(chat);
    if (!text) {
        cJSON_Delete(echo);
        return chat ? srv_fail(err, 500, NULL, NULL, "out of memory") : -1;
    }
    int rc = srv_parse_request(SRV_CHAT, text, strlen(text), e, model, r, err);
    free(text);
    if (rc)
        srv_resp_param(err);
    r->kind = SRV_RESPONSES;
    r->resp_echo = echo;
    return rc;
}

void srv_request_free(struct srv_request *r)
{
    cJSON_Delete(r->resp_echo);
    for (int i = 0; i < r->n_prompts; i++)
        free(r->prompts[i]);
    free(r->prompts);
    free(r->n_prompt);
    for (int i = 0; i < r->p.n_stop; i++)
        free(r->stop[i]);
    free(r->stop);
    free((void *)r->p.sp.bias);
    free(r->model);
    for (int i = 0; i < r->n_tool_names; i++)
        free(r->tool_names[i]);
    free(r->tool_names);
    free(r->stop_ids);
    eng_grammar_release(r->grammar);
    memset(r, 0, sizeof(*r));
}

/* ---- jobs: engine events -> OpenAI JSON ------------------------------------- */

struct srv_job;
static int prompt_text(struct srv_job *j, int p, struct buf *out);

/* The four arrays of a completions logprobs object, in the order OpenAI prints them. */
static const char *const k_lp_keys[4] = {"tokens", "token_logprobs", "top_logprobs", "text_offset"};

struct choice {
    struct eng_req *h;
    int prompt; /* index into req.prompts */
    struct buf text;
    cJSON *lp; /* chat: the content array; completions: the logprobs object */
    /*
     * Not streamed: the logprobs so far as JSON text, the array elements
     * without their brackets - chat: content; completions: tokens,
     * token_logprobs, top_logprobs, text_offset - so that a long answer
     * holds ~100 bytes an alternative, not a tree of cJSON nodes.
     */
    struct buf lpt[4];
    int n_lp;
    int ended;
    enum eng_finish finish;
    int completion_tokens;
    int cached_tokens;
    double t_last;
    char *error;
    struct srv_outp outp; /* chat: content, reasoning and tool calls apart */
    int n_gen;            /* tokens generated so far (continuous usage) */
    cJSON *plp;           /* vLLM's prompt_logprobs list, or NULL */
    int *p_off;           /* echo with logprobs: each prompt token's offset in the echoed text */
    int prompt_held;      /* streaming: the prompt's chunk waits for its logprobs */
    int plp_seen;         /* prompt logprob events taken */
    float *embd;          /* embeddings: the vector */
    int n_embd;
};

struct srv_job {
    struct engine *e;
    struct srv_request req;
    struct srv_model model;
    char id[48];
    long created;
    char fingerprint[64];
    struct eng_notify notify;
    uint64_t seen;
    int n_choices;
    struct choice *c;
    int started; /* stream: the opening chunks are out */
    int done;
    int status; /* 200, or the failed job's error status */
    int prompt_tokens, completion_tokens;
    char msg_id[48]; /* responses: the output message's id */
    int seq;         /* responses: the next event's sequence_number */
    struct srv_responses_stream {
        int n_items;       /* output items opened */
        int msg;           /* the message item: 0 not yet, 1 open, 2 closed */
        int msg_index;     /* its output_index */
        struct buf text;   /* its text so far */
        cJSON *call;       /* the open function_call item, or NULL */
        int call_index;    /* its output_index */
        struct buf args;   /* its arguments so far */
        cJSON *items;      /* the closed items, for response.completed */
        int think;         /* the reasoning item: 0 not yet, 1 open, 2 closed */
        int think_index;   /* its output_index */
        struct buf reason; /* its text so far */
    } rs;
    char rs_id[48];       /* responses: the reasoning item's id */
    int reasoning_tokens; /* responses: the reasoning text's length in tokens */
};

int srv_job_status(const struct srv_job *j)
{
    return j->status;
}

int srv_job_stream(const struct srv_job *j)
{
    return j->req.stream;
}

void srv_job_usage(const struct srv_job *j, int *prompt, int *completion)
{
    *prompt = j->prompt_tokens;
    *completion = j->completion_tokens;
}

void srv_job_cancel(struct srv_job *j)
{
    for (int i = 0; i < j->n_choices; i++)
        if (j->c[i].h)
            eng_cancel(j->c[i].h);
}

void srv_job_free(struct srv_job *j)
{
    if (!j)
        return;
    for (int i = 0; i < j->n_choices; i++) {
        if (j->c[i].h && !j->c[i].ended) /* its end was never read: the client left */
            srv_metrics_finished("abort");
        eng_req_release(j->c[i].h);
        free(j->c[i].text.p);
        cJSON_Delete(j->c[i].lp);
        for (int k = 0; k < 4; k++)
            free(j->c[i].lpt[k].p);
        free(j->c[i].error);
        srv_outp_free(&j->c[i].outp);
        cJSON_Delete(j->c[i].plp);
        free(j->c[i].p_off);
        free(j->c[i].embd);
    }
    free(j->c);
    free(j->rs.text.p);
    free(j->rs.args.p);
    free(j->rs.reason.p);
    cJSON_Delete(j->rs.call);
    cJSON_Delete(j->rs.items);
    eng_notify_destroy(&j->notify);
    srv_request_free(&j->req);
    free(j);
}

int srv_job_start(struct engine *e, const struct srv_model *model, struct srv_request *req,
                  const struct srv_wake *wake, struct srv_job **out, struct srv_error *err)
{
    *out = NULL;
    struct srv_job *j = calloc(1, sizeof(*j));
    int n = req->n_prompts * req->n;
    struct choice *c = j ? calloc((size_t)n, sizeof(*c)) : NULL;
    if (!c) {
        free(j);
        srv_request_free(req);
        return srv_fail(err, 500, NULL, NULL, "out of memory");
    }
    j->e = e;
    j->status = 200;
    j->req = *req;
    memset(req, 0, sizeof(*req));
    j->model = *model;
    j->c = c;
    j->n_choices = n;
    j->created = (long)time(NULL);
    uint64_t rnd = srv_random();
    static const char *const k_prefix[] = {"chatcmpl-", "cmpl-", "resp_", "embd-"};
    snprintf(j->id, sizeof(j->id), "%s%016llx%08x", k_prefix[j->req.kind], (unsigned long long)rnd,
             (unsigned)(rnd >> 17));
    snprintf(j->msg_id, sizeof(j->msg_id), "msg_%016llx", (unsigned long long)srv_random());
    snprintf(j->rs_id, sizeof(j->rs_id), "rs_%016llx", (unsigned long long)srv_random());
    struct eng_info info;
    eng_get_info(e, &info);
    snprintf(j->fingerprint, sizeof(j->fingerprint), "cinfer-%s-%s", CINFER_VERSION, info.kernels);
    eng_notify_init(&j->notify);
    for (int i = 0; i < j->req.n_prompts; i++)
        j->prompt_tokens += j->req.n_prompt[i];
    if (wake) {
        j->notify.wake_cb = wake->cb;
        j->notify.wake_arg = wake->arg;
    }
    struct eng_params *p = calloc((size_t)n, sizeof(*p));
    struct eng_sub *subs = calloc((size_t)n, sizeof(*subs));
    struct eng_req **h = calloc((size_t)n, sizeof(*h));
    if (!p || !subs || !h) {
        free(p), free(subs), free(h);
        srv_job_free(j);
        return srv_fail(err, 500, NULL, NULL, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        c[i].prompt = i / j->req.n;
        if (j->req.kind == SRV_CHAT || j->req.kind == SRV_RESPONSES)
            srv_outp_init(&c[i].outp, &j->req);
        p[i] = j->req.p;
        p[i].notify = &j->notify;
        p[i].sp.seed = j->req.p.sp.seed + (uint64_t)(i % j->req.n);
        subs[i] =
            (struct eng_sub){j->req.prompts[c[i].prompt], j->req.n_prompt[c[i].prompt], &p[i]};
    }
    /* the whole fan-out (prompts x n) is admitted or refused at once */
    char msg[320];
    int rc = eng_submit_n(e, n, subs, h, msg, sizeof(msg));
    for (int i = 0; !rc && i < n; i++)
        c[i].h = h[i];
    free(p), free(subs), free(h);
    if (rc) {
        static const char *const k_what[] = {"messages", "prompt", "input", "input"};
        const char *what = k_what[j->req.kind];
        const char *fan = j->req.n > 1 ? "n" : what; /* the field that made it too large */
        srv_job_free(j);
        if (rc == -E2BIG)
            return srv_fail(err, 400, what, "context_length_exceeded", "%s", msg);
        if (rc == -ERANGE)
            return srv_fail(err, 400, fan, "request_too_large", "%s", msg);
        if (rc == -ESHUTDOWN)
            return srv_fail(err, 503, NULL, "service_unavailable", "%s", msg);
        if (rc == -EBUSY) {
            srv_fail(err, 429, NULL, "rate_limit_exceeded", "%s", msg);
            err->retry_after = 1;
            return -1;
        }
        return srv_fail(err, rc == -ENOMEM ? 500 : 400, NULL, NULL, "%s", msg);
    }
    *out = j;
    return 0;
}

/* The text of a token for logprobs, as clean UTF-8, and its raw bytes. */
static cJSON *token_entry(const struct tok *t, int32_t id, float lp, int with_bytes)
{
    size_t n = 0;
    const char *piece = tok_piece(t, id, 1, &n);
    char *clean = srv_utf8_dup(piece ? piece : "", piece ? n : 0);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "token", clean ? clean : "");
    free(clean);
    cJSON_AddNumberToObject(o, "logprob", isfinite(lp) ? lp : -9999.0);
    if (with_bytes) {
        cJSON *b = cJSON_AddArrayToObject(o, "bytes");
        for (size_t i = 0; piece && i < n; i++)
            cJSON_AddItemToArray(b, cJSON_CreateNumber((unsigned char)piece[i]));
    }
    return o;
}

/* c->lp as a completions logprobs object (its four arrays), made when it is not there yet. */
static cJSON *lp_object(struct choice *c)
{
    if (!c->lp) {
        c->lp = cJSON_CreateObject();
        for (int k = 0; k < 4; k++)
            cJSON_AddArrayToObject(c->lp, k_lp_keys[k]);
    }
    return c->lp;
}

/* Adds one token's logprobs to a chat content array or completions object. */
static void add_logprobs(struct srv_job *j, struct choice *c, const struct eng_event *ev,
                         size_t text_offset)
{
    const struct tok *t = eng_tok(j->e);
    if (j->req.kind == SRV_CHAT) {
        if (!c->lp)
            c->lp = cJSON_CreateArray();
        cJSON *o = token_entry(t, ev->token, ev->logprob, 1);
        cJSON *top = cJSON_AddArrayToObject(o, "top_logprobs");
        for (int i = 0; ev->top && i < ev->top->n_top && i < j->req.top_logprobs; i++)
            cJSON_AddItemToArray(top,
                                 token_entry(t, ev->top->top[i].token, ev->top->top[i].logprob, 1));
        cJSON_AddItemToArray(c->lp, o);
        return;
    }
    lp_object(c);
    cJSON *e = token_entry(t, ev->token, ev->logprob, 0);
    cJSON_AddItemToArray(cJSON_GetObjectItem(c->lp, "tokens"),
                         cJSON_CreateString(cJSON_GetObjectItem(e, "token")->valuestring));
    cJSON_AddItemToArray(cJSON_GetObjectItem(c->lp, "token_logprobs"),
                         cJSON_CreateNumber(cJSON_GetObjectItem(e, "logprob")->valuedouble));
    cJSON_Delete(e);
    cJSON *top = cJSON_CreateObject();
    for (int i = 0; ev->top && i < ev->top->n_top && i < j->req.top_logprobs; i++) {
        cJSON *a = token_entry(t, ev->top->top[i].token, ev->top->top[i].logprob, 0);
        const char *key = cJSON_GetObjectItem(a, "token")->valuestring;
        if (!cJSON_GetObjectItem(top, key))
            cJSON_AddNumberToObject(top, key, cJSON_GetObjectItem(a, "logprob")->valuedouble);
        cJSON_Delete(a);
    }
    cJSON_AddItemToArray(cJSON_GetObjectItem(c->lp, "top_logprobs"), top);
    cJSON_AddItemToArray(cJSON_GetObjectItem(c->lp, "text_offset"),
                         cJSON_CreateNumber((double)text_offset));
}

/* The completions logprobs of a prompt's first token: its text, and null for the rest. */
static void add_first_logprobs(struct srv_job *j, struct choice *c, int32_t token)
{
    lp_object(c);
    cJSON *e = token_entry(eng_tok(j->e), token, 0, 0);
    cJSON_AddItemToArray(cJSON_GetObjectItem(c->lp, "tokens"),
                         cJSON_CreateString(cJSON_GetObjectItem(e, "token")->valuestring));
    cJSON_Delete(e);
    cJSON_AddItemToArray(cJSON_GetObjectItem(c->lp, "token_logprobs"), cJSON_CreateNull());
    cJSON_AddItemToArray(cJSON_GetObjectItem(c->lp, "top_logprobs"), cJSON_CreateNull());
    cJSON_AddItemToArray(cJSON_GetObjectItem(c->lp, "text_offset"), cJSON_CreateNumber(0));
}

/* One token of vLLM's prompt_logprobs: {"id": {"logprob", "rank", "decoded_token"}, ...}. */
static void add_vllm_prompt_lp(struct srv_job *j, struct choice *c, const struct eng_event *ev)
{
    const struct tok *t = eng_tok(j->e);
    if (!c->plp) {
        c->plp = cJSON_CreateArray();
        cJSON_AddItemToArray(c->plp, cJSON_CreateNull());
    }
    cJSON *o = cJSON_CreateObject();
    for (int i = -1; i < (ev->top ? ev->top->n_top : 0) && i < j->req.prompt_lp; i++) {
        int32_t id = i < 0 ? ev->token : ev->top->top[i].token;
        float lp = i < 0 ? ev->logprob : ev->top->top[i].logprob;
        char key[16];
        snprintf(key, sizeof(key), "%d", id);
        if (cJSON_GetObjectItem(o, key))
            continue;
        cJSON *x = token_entry(t, id, lp, 0);
        cJSON *tokstr = cJSON_DetachItemFromObject(x, "token");
        cJSON_AddNumberToObject(x, "rank", i < 0 ? ev->rank : i + 1);
        cJSON_AddItemToObject(x, "decoded_token", tokstr);
        cJSON_AddItemToObject(o, key, x);
    }
    cJSON_AddItemToArray(c->plp, o);
}

/* Each prompt token's offset in the echoed prompt text (prompt_text's detokenizing). */
static int prompt_offsets(struct srv_job *j, struct choice *c)
{
    int n = j->req.n_prompt[c->prompt];
    struct buf t = {0};
    struct tok_detok d;
    tok_detok_init(&d, eng_tok(j->e), TOK_DETOK_SPECIAL | TOK_DETOK_STRIP_SPACE);
    if (!(c->p_off = malloc(sizeof(int) * (size_t)n)))
        return -ENOMEM;
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        c->p_off[i] = (int)t.n;
        rc = tok_detok_feed(&d, j->req.prompts[c->prompt][i], &t);
    }
    free(t.p);
    return rc;
}

/* Moves c->lp (one token's logprobs) into c->lpt as text; 0 or -ENOMEM. */
static int lp_to_text(struct srv_job *j, struct choice *c)
{
    int chat = j->req.kind == SRV_CHAT, rc = 0;
    const cJSON *parts[4] = {0};
    if (chat) {
        parts[0] = c->lp->child;
    } else {
        for (int k = 0; k < 4; k++)
            parts[k] = cJSON_GetObjectItem(c->lp, k_lp_keys[k])->child;
    }
    for (int k = 0; k < (chat ? 1 : 4) && !rc; k++) {
        char *s = parts[k] ? cJSON_PrintUnformatted(parts[k]) : NULL;
        rc = !s ? -ENOMEM : c->n_lp ? buf_append(&c->lpt[k], ",", 1) : 0;
        rc = rc ? rc : buf_append(&c->lpt[k], s, strlen(s));
        free(s);
    }
    cJSON_Delete(c->lp);
    c->lp = NULL;
    c->n_lp++;
    return rc;
}

/*
 * A stand-in string for a logprobs array in the final JSON (the job's
 * nonce makes it one no generated text can spell), replaced by the text.
 */
static void lp_mark(const struct srv_job *j, int i, int k, char *out, size_t cap)
{
    snprintf(out, cap, "\x01%s.%d.%d", j->id, i, k);
}

static cJSON *usage_json(const struct srv_job *j)
{
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", j->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", j->completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", j->prompt_tokens + j->completion_tokens);
    int cached = 0; /* per prompt, what its first-computed choice found cached */
    for (int p = 0; p < j->req.n_prompts; p++) {
        int least = -1;
        for (int i = p * j->req.n; i < (p + 1) * j->req.n; i++)
            if (least < 0 || j->c[i].cached_tokens < least)
                least = j->c[i].cached_tokens;
        cached += least > 0 ? least : 0;
    }
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(u, "prompt_tokens_details"), "cached_tokens",
                            cached);
    return u;
}

static cJSON *envelope(const struct srv_job *j, const char *object)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)j->created);
    cJSON_AddStringToObject(o, "model", j->req.model);
    cJSON_AddStringToObject(o, "system_fingerprint", j->fingerprint);
    return o;
}

/* Writes `data: JSON\n\n` and frees o. */
static int sse(struct buf *out, cJSON *o)
{
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s)
        return -ENOMEM;
    int rc = buf_printf(out, "data: %s\n\n", s);
    free(s);
    return rc;
}

/* One streamed chunk for choice i: chat's delta (taken; NULL for completions), text, logprobs,
 * finish. */
static int delta_chunk(struct srv_job *j, int i, cJSON *delta, const char *text, size_t n,
                       cJSON *lp, const char *finish, struct buf *out)
{
    int chat = j->req.kind == SRV_CHAT;
    cJSON *o = envelope(j, chat ? "chat.completion.chunk" : "text_completion");
    cJSON *arr = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
    cJSON_AddItemToArray(arr, c);
    cJSON_AddNumberToObject(c, "index", i);
    if (chat) {
        cJSON_AddItemToObject(c, "delta", delta ? delta : cJSON_CreateObject());
    } else {
        char *clean = srv_utf8_dup(text ? text : "", text ? n : 0);
        cJSON_AddStringToObject(c, "text", clean ? clean : "");
        free(clean);
    }
    if (lp)
        cJSON_AddItemToObject(c, "logprobs", lp);
    else
        cJSON_AddNullToObject(c, "logprobs");
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    if (j->c[i].prompt_held) { /* the prompt's own chunk: its vLLM prompt_logprobs */
        j->c[i].prompt_held = 0;
        if (j->c[i].plp)
            cJSON_AddItemToObject(chat ? o : c, "prompt_logprobs", j->c[i].plp);
        j->c[i].plp = NULL;
    }
    if (j->req.include_usage && j->req.continuous_usage) {
        int gen = 0;
        for (int k = 0; k < j->n_choices; k++)
            gen += j->c[k].n_gen;
        cJSON *u = cJSON_AddObjectToObject(o, "usage");
        cJSON_AddNumberToObject(u, "prompt_tokens", j->prompt_tokens);
        cJSON_AddNumberToObject(u, "completion_tokens", gen);
        cJSON_AddNumberToObject(u, "total_tokens", j->prompt_tokens + gen);
    } else if (j->req.include_usage) {
        cJSON_AddNullToObject(o, "usage");
    }
    return sse(out, o);
}

/*
 * Streaming, once the prompt's log-probabilities are in (before the first
 * generated token): completions' echo text with its logprobs, and vLLM's
 * prompt_logprobs.
 */
static int flush_prompt(struct srv_job *j, int i, struct buf *out)
{
    struct choice *c = &j->c[i];
    if (!c->prompt_held)
        return 0;
    struct buf t = {0};
    int rc = j->req.echo ? prompt_text(j, c->prompt, &t) : 0;
    cJSON *lp = c->lp;
    c->lp = NULL;
    if (j->req.kind == SRV_CHAT)
        rc = rc ? rc : delta_chunk(j, i, cJSON_CreateObject(), NULL, 0, NULL, NULL, out);
    else
        rc = rc ? (cJSON_Delete(lp), rc)
                : delta_chunk(j, i, NULL, t.p ? t.p : "", t.n, lp, NULL, out);
    c->text.n += t.n; /* the generated tokens' text_offset counts from the echo's end */
    free(t.p);
    return rc;
}

/* A chat delta {"KEY": text} (text NULL: no member). */
static cJSON *text_delta(const char *key, const char *text, size_t n)
{
    cJSON *d = cJSON_CreateObject();
    if (text) {
        char *clean = srv_utf8_dup(text, n);
        cJSON_AddStringToObject(d, key, clean ? clean : "");
        free(clean);
    }
    return d;
}

/* One streamed chunk for choice i: text (may be NULL), its logprobs, a finish reason. */
static int stream_chunk(struct srv_job *j, int i, const char *text, size_t n, cJSON *lp,
                        const char *finish, int role, struct buf *out)
{
    cJSON *d = NULL;
    if (j->req.kind == SRV_CHAT) {
        d = text_delta("content", text || role ? (text ? text : "") : NULL, n);
        if (role)
            cJSON_AddStringToObject(d, "role", "assistant");
    }
    return delta_chunk(j, i, d, text, n, lp, finish, out);
}

/*
 * What the output parser released for choice i, as chunks: reasoning_content,
 * content, then each tool call as OpenAI streams one - its index, id, type
 * and name with empty arguments, then the arguments.  lp (taken) rides on
 * the first chunk, or on an empty delta.
 */
static int stream_outp(struct srv_job *j, int i, struct srv_outp_out *o, cJSON *lp, struct buf *out)
{
    int rc = 0;
    if (o->reasoning.n) {
        rc = delta_chunk(j, i, text_delta("reasoning_content", o->reasoning.p, o->reasoning.n),
                         NULL, 0, lp, NULL, out);
        lp = NULL;
    }
    if (!rc && o->content.n) {
        rc = delta_chunk(j, i, text_delta("content", o->content.p, o->content.n), NULL, 0, lp, NULL,
                         out);
        lp = NULL;
    }
    for (const cJSON *c = o->calls ? o->calls->child : NULL; c && !rc; c = c->next) {
        const cJSON *id = cJSON_GetObjectItem(c, "id"), *name = cJSON_GetObjectItem(c, "name");
        const cJSON *args = cJSON_GetObjectItem(c, "arguments");
        cJSON *d = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(d, "tool_calls");
        cJSON *x = cJSON_CreateObject(), *xf;
        cJSON_AddItemToArray(list, x);
        cJSON_AddNumberToObject(x, "index", cJSON_GetObjectItem(c, "index")->valuedouble);
        if (id) {
            cJSON_AddStringToObject(x, "id", id->valuestring);
            cJSON_AddStringToObject(x, "type", "function");
        }
        xf = cJSON_AddObjectToObject(x, "function");
        if (name)
            cJSON_AddStringToObject(xf, "name", name->valuestring);
        cJSON_AddStringToObject(xf, "arguments", args ? args->valuestring : "");
        rc = delta_chunk(j, i, d, NULL, 0, lp, NULL, out);
        lp = NULL;
    }
    if (!rc && lp)
        rc = delta_chunk(j, i, NULL, NULL, 0, lp, NULL, out);
    else
        cJSON_Delete(lp);
    return rc;
}

/* The prompt's text, for echo. */
static int prompt_text(struct srv_job *j, int p, struct buf *out)
{
    struct tok_detok d;
    tok_detok_init(&d, eng_tok(j->e), TOK_DETOK_SPECIAL | TOK_DETOK_STRIP_SPACE);
    for (int i = 0; i < j->req.n_prompt[p]; i++)
        if (tok_detok_feed(&d, j->req.prompts[p][i], out))
            return -ENOMEM;
    return tok_detok_flush(&d, out);
}

static const char *finish_name(const struct choice *c)
{
    return c->finish == ENG_FINISH_LENGTH ? "length" : c->outp.n_calls ? "tool_calls" : "stop";
}

/* The message's tool_calls from the parser's deltas (srv_outp_out); 0 or -ENOMEM. */
static int calls_json(const cJSON *deltas, cJSON *m)
{
    cJSON *list = cJSON_AddArrayToObject(m, "tool_calls");
    struct buf args = {0};
    int rc = list ? 0 : -ENOMEM;
    for (const cJSON *d = deltas->child; d && !rc; d = d->next) {
        const cJSON *id = cJSON_GetObjectItem(d, "id");
        const cJSON *a = cJSON_GetObjectItem(d, "arguments");
        if (id) { /* a new call: the one before is whole */
            cJSON *c = cJSON_CreateObject(), *f = NULL;
            const char *name = cJSON_GetObjectItem(d, "name")->valuestring;
            if (!c || !cJSON_AddStringToObject(c, "id", id->valuestring) ||
                !cJSON_AddStringToObject(c, "type", "function") ||
                !(f = cJSON_AddObjectToObject(c, "function")) ||
                !cJSON_AddStringToObject(f, "name", name) ||
                !cJSON_AddStringToObject(f, "arguments", "") || !cJSON_AddItemToArray(list, c)) {
                cJSON_Delete(c);
                rc = -ENOMEM;
            }
        } else if (a) { /* calls are opened in index order: index k is list item k */
            int k = cJSON_GetObjectItem(d, "index")->valueint;
            cJSON *f = cJSON_GetObjectItem(cJSON_GetArrayItem(list, k), "function");
            const char *old = f ? cJSON_GetObjectItem(f, "arguments")->valuestring : NULL;
            args.n = 0;
            rc = !old || buf_printf(&args, "%s%s", old, a->valuestring) ||
                         !cJSON_ReplaceItemInObject(f, "arguments", cJSON_CreateString(args.p))
                     ? -ENOMEM
                     : 0;
        }
    }
    free(args.p);
    return rc;
}

/* A chat message from the whole text, split by the output parser; 0 or -ENOMEM. */
static int message_json(struct choice *c, cJSON *m)
{
    struct srv_outp_out o = {0};
    int rc = srv_outp_feed(&c->outp, c->text.p ? c->text.p : "", c->text.n, &o);
    rc = rc ? rc : srv_outp_finish(&c->outp, &o);
    char *content = rc ? NULL : srv_utf8_dup(o.content.p ? o.content.p : "", o.content.n);
    char *reasoning = rc ? NULL : srv_utf8_dup(o.reasoning.p ? o.reasoning.p : "", o.reasoning.n);
    if (!content || !reasoning) {
        rc = -ENOMEM;
    } else {
        cJSON_AddStringToObject(m, "role", "assistant");
        if (o.calls && !o.content.n) /* OpenAI: a message of calls has no content */
            cJSON_AddNullToObject(m, "content");
        else
            cJSON_AddStringToObject(m, "content", content);
        if (c->outp.reasoning) {
            if (o.reasoning.n)
                cJSON_AddStringToObject(m, "reasoning_content", reasoning);
            else
                cJSON_AddNullToObject(m, "reasoning_content");
        }
        if (o.calls)
            rc = calls_json(o.calls, m);
    }
    free(content);
    free(reasoning);
    srv_outp_out_free(&o);
    return rc;
}

/* The Responses API's view of the job (one choice). */
static struct srv_resp resp_of(const struct srv_job *j)
{
    return (struct srv_resp){.id = j->id,
                             .msg_id = j->msg_id,
                             .rs_id = j->rs_id,
                             .reasoning_tokens = j->reasoning_tokens,
                             .model = j->req.model,
                             .created = j->created,
                             .echo = j->req.resp_echo,
                             .input_tokens = j->prompt_tokens,
                             .output_tokens = j->completion_tokens,
                             .cached_tokens = j->c[0].cached_tokens};
}

static const char *resp_status(const struct srv_job *j)
{
    return j->c[0].finish == ENG_FINISH_LENGTH ? "incomplete" : "completed";
}

static int print_json(cJSON *o, struct buf *out)
{
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    int rc = s ? buf_append(out, s, strlen(s)) : -ENOMEM;
    free(s);
    return rc;
}

/* usage.output_tokens_details.reasoning_tokens: the reasoning text re-tokenized */
static void count_reasoning(struct srv_job *j, const char *text, size_t n)
{
    int32_t *ids = NULL;
    int64_t k = n ? tok_encode_alloc(eng_tok(j->e), text, n, 0, &ids) : 0;
    free(ids);
    j->reasoning_tokens = k > 0 ? (int)k : 0;
    if (j->reasoning_tokens > j->completion_tokens)
        j->reasoning_tokens = j->completion_tokens;
}

/* o's common members of an item event: item_id (when given), output_index, content_index */
static cJSON *item_event(const char *item_id, int index, int content)
{
    cJSON *o = cJSON_CreateObject();
    if (item_id)
        cJSON_AddStringToObject(o, "item_id", item_id);
    cJSON_AddNumberToObject(o, "output_index", index);
    if (content)
        cJSON_AddNumberToObject(o, "content_index", 0);
    return o;
}

/* The message item of the streamed output: added (with its empty part) on its first text. */
static int resp_msg_open(struct srv_job *j, struct buf *out)
{
    struct srv_responses_stream *st = &j->rs;
    st->msg_index = st->n_items++;
    st->msg = 1;
    cJSON *o = item_event(NULL, st->msg_index, 0);
    cJSON_AddItemToObject(o, "item", srv_resp_message_item(j->msg_id, NULL, "in_progress"));
    int rc = srv_resp_event(out, "response.output_item.added", &j->seq, o);
    o = item_event(j->msg_id, st->msg_index, 1);
    cJSON_AddItemToObject(o, "part", srv_resp_text_part(""));
    return rc ? rc : srv_resp_event(out, "response.content_part.added", &j->seq, o);
}

static int resp_msg_delta(struct srv_job *j, const char *text, size_t n, struct buf *out)
{
    struct srv_responses_stream *st = &j->rs;
    if (!n)
        return 0;
    if (st->msg == 2) { /* text after a call: a message item of its own */
        snprintf(j->msg_id, sizeof(j->msg_id), "msg_%016llx", (unsigned long long)srv_random());
        st->text.n = 0;
    }
    int rc = st->msg == 1 ? 0 : resp_msg_open(j, out);
    if (rc)
        return rc;
    char *clean = srv_utf8_dup(text, n);
    if (!clean || buf_append(&st->text, clean, strlen(clean))) {
        free(clean);
        return -ENOMEM;
    }
    cJSON *o = item_event(j->msg_id, st->msg_index, 1);
    cJSON_AddStringToObject(o, "delta", clean);
    cJSON_AddArrayToObject(o, "logprobs");
    free(clean);
    return srv_resp_event(out, "response.output_text.delta", &j->seq, o);
}

/* text done, part done, item done; the item kept for response.completed */
static int resp_msg_close(struct srv_job *j, const char *status, struct buf *out)
{
    struct srv_responses_stream *st = &j->rs;
    if (st->msg != 1)
        return 0;
    st->msg = 2;
    const char *text = st->text.p ? st->text.p : "";
    cJSON *item = srv_resp_message_item(j->msg_id, text, status);
    cJSON *part = cJSON_GetArrayItem(cJSON_GetObjectItem(item, "content"), 0);
    cJSON *o = item_event(j->msg_id, st->msg_index, 1);
    cJSON_AddStringToObject(o, "text", text);
    cJSON_AddArrayToObject(o, "logprobs");
    int rc = srv_resp_event(out, "response.output_text.done", &j->seq, o);
    o = item_event(j->msg_id, st->msg_index, 1);
    cJSON_AddItemToObject(o, "part", cJSON_Duplicate(part, 1));
    rc = rc ? rc : srv_resp_event(out, "response.content_part.done", &j->seq, o);
    o = item_event(NULL, st->msg_index, 0);
    cJSON_AddItemToObject(o, "item", cJSON_Duplicate(item, 1));
    rc = rc ? rc : srv_resp_event(out, "response.output_item.done", &j->seq, o);
    cJSON_AddItemToArray(st->items, item);
    return rc;
}

static int resp_call_close(struct srv_job *j, const char *status, struct buf *out)
{
    struct srv_responses_stream *st = &j->rs;
    if (!st->call)
        return 0;
    cJSON *item = st->call;
    st->call = NULL;
    const char *id = cJSON_GetObjectItem(item, "id")->valuestring;
    cJSON_ReplaceItemInObject(item, "status", cJSON_CreateString(status));
    cJSON_ReplaceItemInObject(item, "arguments", cJSON_CreateString(st->args.p ? st->args.p : ""));
    cJSON *o = item_event(id, st->call_index, 0);
    cJSON_AddStringToObject(o, "name", cJSON_GetObjectItem(item, "name")->valuestring);
    cJSON_AddStringToObject(o, "arguments", st->args.p ? st->args.p : "");
    int rc = srv_resp_event(out, "response.function_call_arguments.done", &j->seq, o);
    o = item_event(NULL, st->call_index, 0);
    cJSON_AddItemToObject(o, "item", cJSON_Duplicate(item, 1));
    rc = rc ? rc : srv_resp_event(out, "response.output_item.done", &j->seq, o);
    cJSON_AddItemToArray(st->items, item);
    st->args.n = 0;
    return rc;
}

/* The reasoning item: added on its first text; its deltas; done when the answer starts. */
static int resp_think_delta(struct srv_job *j, const char *text, size_t n, struct buf *out)
{
    struct srv_responses_stream *st = &j->rs;
    int rc = 0;
    if (!n || st->think == 2)
        return 0; /* reasoning comes first: none of it can follow the answer */
    if (!st->think) {
        st->think = 1;
        st->think_index = st->n_items++;
        cJSON *item = srv_resp_reasoning_item(j->rs_id, NULL, "in_progress");
        cJSON *o = item_event(NULL, st->think_index, 0);
        cJSON_AddItemToObject(o, "item", item);
        rc = srv_resp_event(out, "response.output_item.added", &j->seq, o);
    }
    char *clean = rc ? NULL : srv_utf8_dup(text, n);
    if (!rc && (!clean || buf_append(&st->reason, clean, strlen(clean))))
        rc = -ENOMEM;
    if (!rc) {
        cJSON *o = item_event(j->rs_id, st->think_index, 1);
        cJSON_AddStringToObject(o, "delta", clean);
        rc = srv_resp_event(out, "response.reasoning_text.delta", &j->seq, o);
    }
    free(clean);
    return rc;
}

static int resp_think_close(struct srv_job *j, const char *status, struct buf *out)
{
    struct srv_responses_stream *st = &j->rs;
    if (st->think != 1)
        return 0;
    st->think = 2;
    const char *text = st->reason.p ? st->reason.p : "";
    cJSON *o = item_event(j->rs_id, st->think_index, 1);
    cJSON_AddStringToObject(o, "text", text);
    int rc = srv_resp_event(out, "response.reasoning_text.done", &j->seq, o);
    cJSON *item = srv_resp_reasoning_item(j->rs_id, text, status);
    o = item_event(NULL, st->think_index, 0);
    cJSON_AddItemToObject(o, "item", cJSON_Duplicate(item, 1));
    rc = rc ? rc : srv_resp_event(out, "response.output_item.done", &j->seq, o);
    cJSON_AddItemToArray(st->items, item);
    return rc;
}

/* What the output parser released, as Responses events: reasoning, text, function_call items. */
static int resp_outp(struct srv_job *j, const struct srv_outp_out *po, struct buf *out)
{
    struct srv_responses_stream *st = &j->rs;
    int rc = resp_think_delta(j, po->reasoning.p, po->reasoning.n, out);
    if (!rc && (po->content.n || po->calls))
        rc = resp_think_close(j, "completed", out);
    rc = rc ? rc : resp_msg_delta(j, po->content.p, po->content.n, out);
    for (const cJSON *d = po->calls ? po->calls->child : NULL; d && !rc; d = d->next) {
        const cJSON *id = cJSON_GetObjectItem(d, "id"), *a = cJSON_GetObjectItem(d, "arguments");
        if (id) { /* a new call: whatever was open is whole */
            rc = resp_msg_close(j, "completed", out);
            rc = rc ? rc : resp_call_close(j, "completed", out);
            const cJSON *name = cJSON_GetObjectItem(d, "name");
            st->call = srv_resp_call_item(id->valuestring, name->valuestring, "", "in_progress");
            st->call_index = st->n_items++;
            cJSON *o = item_event(NULL, st->call_index, 0);
            cJSON_AddItemToObject(o, "item", cJSON_Duplicate(st->call, 1));
            rc = rc ? rc : srv_resp_event(out, "response.output_item.added", &j->seq, o);
        }
        if (!rc && a && st->call && *a->valuestring) {
            rc = buf_append(&st->args, a->valuestring, strlen(a->valuestring));
            cJSON *o =
                item_event(cJSON_GetObjectItem(st->call, "id")->valuestring, st->call_index, 0);
            cJSON_AddStringToObject(o, "delta", a->valuestring);
            rc =
                rc ? rc : srv_resp_event(out, "response.function_call_arguments.delta", &j->seq, o);
        }
    }
    return rc;
}

/* The streamed response's opening events: created, in_progress (and the message, without tools). */
static int resp_open(struct srv_job *j, struct buf *out)
{
    struct srv_resp r = resp_of(j);
    if (!(j->rs.items = cJSON_CreateArray()))
        return -ENOMEM;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "response", srv_resp_object(&r, "in_progress", NULL, NULL));
    int rc = srv_resp_event(out, "response.created", &j->seq, o);
    o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "response", srv_resp_object(&r, "in_progress", NULL, NULL));
    rc = rc ? rc : srv_resp_event(out, "response.in_progress", &j->seq, o);
    if (!rc && !srv_outp_active(&j->c[0].outp))
        rc = resp_msg_open(j, out);
    return rc;
}

/* The text of an event, through the tool parser when it is on. */
static int resp_text(struct srv_job *j, const char *text, size_t n, int last, struct buf *out)
{
    struct choice *c = &j->c[0];
    int rc = buf_append(&c->text, text, n);
    if (rc || !j->req.stream)
        return rc;
    if (!srv_outp_active(&c->outp))
        return resp_msg_delta(j, text, n, out);
    struct srv_outp_out o = {0};
    rc = srv_outp_feed(&c->outp, text, n, &o);
    rc = rc || !last ? rc : srv_outp_finish(&c->outp, &o);
    rc = rc ? rc : resp_outp(j, &o, out);
    srv_outp_out_free(&o);
    return rc;
}

/* The closing events: what is open closes, then response.completed (or .incomplete). */
static int resp_close(struct srv_job *j, struct buf *out)
{
    const char *status = resp_status(j);
    const char *item_status = !strcmp(status, "completed") ? "completed" : "incomplete";
    count_reasoning(j, j->rs.reason.p, j->rs.reason.n);
    int rc = resp_think_close(j, item_status, out);
    rc = rc ? rc : resp_msg_close(j, item_status, out);
    rc = rc ? rc : resp_call_close(j, item_status, out);
    struct srv_resp r = resp_of(j);
    cJSON *full = srv_resp_object(&r, status, NULL, NULL);
    cJSON_ReplaceItemInObject(full, "output", j->rs.items);
    j->rs.items = NULL;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "response", full);
    rc = rc ? rc
            : srv_resp_event(
                  out, !strcmp(status, "completed") ? "response.completed" : "response.incomplete",
                  &j->seq, o);
    return rc;
}

/* The non-streamed response's output: the chat message the text makes. */
static cJSON *resp_message(struct srv_job *j)
{
    struct choice *c = &j->c[0];
    cJSON *m = cJSON_CreateObject();
    if (m && srv_outp_active(&c->outp)) {
        if (message_json(c, m)) {
            cJSON_Delete(m);
            return NULL;
        }
        return m;
    }
    char *clean = srv_utf8_dup(c->text.p ? c->text.p : "", c->text.n);
    cJSON_AddStringToObject(m, "content", clean ? clean : "");
    free(clean);
    return m;
}

/* /v1/embeddings: {"object": "list", "data": [{"embedding": floats or base64}], usage}. */
static int embed_json(struct srv_job *j, struct buf *out)
{
    static const char k_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    int rc = buf_printf(out, "{\"object\":\"list\",\"data\":[");
    for (int i = 0; !rc && i < j->n_choices; i++) {
        const struct choice *c = &j->c[i];
        rc = buf_printf(out,
                        "%s{\"object\":\"embedding\",\"index\":%d,\"embedding\":", i ? "," : "", i);
        if (!rc && j->req.base64) { /* the floats' little-endian bytes, as the SDK decodes */
            const unsigned char *b = (const unsigned char *)c->embd;
            size_t n = sizeof(float) * (size_t)c->n_embd;
            rc = buf_append(out, "\"", 1);
            for (size_t k = 0; !rc && k < n; k += 3) {
                unsigned v = (unsigned)b[k] << 16 | (k + 1 < n ? (unsigned)b[k + 1] << 8 : 0) |
                             (k + 2 < n ? b[k + 2] : 0);
                char q[4] = {k_b64[v >> 18], k_b64[(v >> 12) & 63],
                             k + 1 < n ? k_b64[(v >> 6) & 63] : '=',
                             k + 2 < n ? k_b64[v & 63] : '='};
                rc = buf_append(out, q, 4);
            }
            rc = rc ? rc : buf_append(out, "\"", 1);
        } else {
            rc = rc ? rc : buf_append(out, "[", 1);
            for (int k = 0; !rc && k < c->n_embd; k++)
                rc = buf_printf(out, "%s%.9g", k ? "," : "", (double)c->embd[k]);
            rc = rc ? rc : buf_append(out, "]", 1);
        }
        rc = rc ? rc : buf_append(out, "}", 1);
    }
    char *model = srv_utf8_dup(j->req.model, strlen(j->req.model));
    cJSON *m = cJSON_CreateString(model ? model : "");
    free(model);
    char *ms = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    rc = rc || !ms ? (rc ? rc : -ENOMEM)
                   : buf_printf(out,
                                "],\"model\":%s,\"usage\":{\"prompt_tokens\":%d,"
                                "\"total_tokens\":%d}}",
                                ms, j->prompt_tokens, j->prompt_tokens);
    free(ms);
    return rc;
}

/* The whole non-streamed response. */
static int final_json(struct srv_job *j, struct buf *out)
{
    if (j->req.kind == SRV_EMBED)
        return embed_json(j, out);
    if (j->req.kind == SRV_RESPONSES) {
        cJSON *m = resp_message(j);
        const cJSON *rc = m ? cJSON_GetObjectItem(m, "reasoning_content") : NULL;
        if (cJSON_IsString(rc))
            count_reasoning(j, rc->valuestring, strlen(rc->valuestring));
        struct srv_resp r = resp_of(j);
        cJSON *o = m ? srv_resp_object(&r, resp_status(j), m, NULL) : NULL;
        cJSON_Delete(m);
        return print_json(o, out);
    }
    int chat = j->req.kind == SRV_CHAT;
    cJSON *o = envelope(j, chat ? "chat.completion" : "text_completion");
    cJSON *arr = cJSON_AddArrayToObject(o, "choices");
    for (int i = 0; i < j->n_choices; i++) {
        struct choice *c = &j->c[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddItemToArray(arr, x);
        cJSON_AddNumberToObject(x, "index", i);
        if (chat && srv_outp_active(&c->outp)) {
            cJSON *m = cJSON_AddObjectToObject(x, "message");
            if (!m || message_json(c, m)) {
                cJSON_Delete(o);
                return -ENOMEM;
            }
        } else {
            char *clean = srv_utf8_dup(c->text.p ? c->text.p : "", c->text.n);
            if (chat) {
                cJSON *m = cJSON_AddObjectToObject(x, "message");
                cJSON_AddStringToObject(m, "role", "assistant");
                cJSON_AddStringToObject(m, "content", clean ? clean : "");
            } else {
                cJSON_AddStringToObject(x, "text", clean ? clean : "");
            }
            free(clean);
        }
        if (c->n_lp) {
            cJSON *l = cJSON_AddObjectToObject(x, "logprobs");
            for (int k = 0; k < (chat ? 1 : 4); k++) {
                char mark[96];
                lp_mark(j, i, k, mark, sizeof(mark));
                cJSON_AddStringToObject(l, chat ? "content" : k_lp_keys[k], mark);
            }
        } else if (j->req.p.logprobs) {
            cJSON *l = cJSON_AddObjectToObject(x, "logprobs");
            if (chat)
                cJSON_AddArrayToObject(l, "content");
        } else {
            cJSON_AddNullToObject(x, "logprobs");
        }
        cJSON_AddStringToObject(x, "finish_reason", finish_name(c));
        if (!chat && j->req.prompt_lp >= 0) {
            cJSON_AddItemToObject(x, "prompt_logprobs", c->plp ? c->plp : cJSON_CreateArray());
            c->plp = NULL;
        }
    }
    if (chat && j->req.prompt_lp >= 0) { /* one prompt: the first choice's */
        cJSON_AddItemToObject(o, "prompt_logprobs",
                              j->c[0].plp ? j->c[0].plp : cJSON_CreateArray());
        j->c[0].plp = NULL;
    }
    cJSON_AddItemToObject(o, "usage", usage_json(j));
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s)
        return -ENOMEM;
    /* each "\u0001<id>.<i>.<k>" stand-in becomes [its text] */
    int rc = 0;
    const char *p = s;
    for (const char *q; !rc && (q = strstr(p, "\"\\u0001")) != NULL;) {
        int i = -1, k = -1, used = 0;
        size_t idn = strlen(j->id);
        if (!strncmp(q + 7, j->id, idn) && sscanf(q + 7 + idn, ".%d.%d\"%n", &i, &k, &used) == 2 &&
            used > 0 && i >= 0 && i < j->n_choices && k >= 0 && k < 4) {
            const struct buf *b = &j->c[i].lpt[k];
            rc = buf_append(out, p, (size_t)(q - p));
            rc = rc ? rc : buf_append(out, "[", 1);
            rc = rc || !b->n ? rc : buf_append(out, b->p, b->n);
            rc = rc ? rc : buf_append(out, "]", 1);
            p = q + 7 + idn + (size_t)used;
        } else {
            rc = buf_append(out, p, (size_t)(q - p) + 1);
            p = q + 1;
        }
    }
    rc = rc ? rc : buf_append(out, p, strlen(p));
    free(s);
    return rc;
}

/* The END of choice i (already marked ended) into the metrics, as vLLM counts a request. */
static void observe_end(const struct srv_job *j, int i, const struct eng_event *ev)
{
    if (ev->finish == ENG_FINISH_STOP || ev->finish == ENG_FINISH_LENGTH)
        srv_metrics_finished(eng_finish_name(ev->finish));
    else
        srv_metrics_finished("abort");
    srv_metrics_tokens(0, ev->completion_tokens);
    if (ev->t_first_token > 0)
        srv_metrics_observe(SRV_H_TTFT, ev->t_first_token - ev->t_submit);
    if (ev->t_scheduled > 0)
        srv_metrics_observe(SRV_H_QUEUE, ev->t_scheduled - ev->t_submit);
    srv_metrics_observe(SRV_H_E2E, ev->t - ev->t_submit);
    if (ev->t_scheduled > 0 && ev->t_first_token > 0) { /* prefill + decode = inference */
        srv_metrics_observe(SRV_H_PREFILL, ev->t_first_token - ev->t_scheduled);
        srv_metrics_observe(SRV_H_DECODE, ev->t - ev->t_first_token);
        srv_metrics_observe(SRV_H_INFERENCE, ev->t - ev->t_scheduled);
    }
    srv_metrics_observe(SRV_H_PROMPT_TOKENS, ev->prompt_tokens);
    srv_metrics_observe(SRV_H_GENERATION_TOKENS, ev->completion_tokens);
    /* once per prompt, when the last of its n choices ends: the most any generated */
    int most = 0, open = 0;
    for (int k = 0; k < j->n_choices; k++) {
        if (j->c[k].prompt != j->c[i].prompt)
            continue;
        open += !j->c[k].ended;
        most = j->c[k].completion_tokens > most ? j->c[k].completion_tokens : most;
    }
    if (!open)
        srv_metrics_observe(SRV_H_MAX_GENERATION, most);
}

/* Takes in one event of choice i; streamed output goes to out. */
static int take_event(struct srv_job *j, int i, struct eng_event *ev, struct buf *out)
{
    struct choice *c = &j->c[i];
    int rc = 0;
    if (ev->kind == ENG_EV_PROMPT) {
        /* ev->token is prompt token k; its entry goes after those of tokens 0..k-1 */
        if (j->req.prompt_lp >= 0)
            add_vllm_prompt_lp(j, c, ev);
        if (j->req.echo_lp) {
            int k = c->plp_seen++ + 1;
            if (k == 1) {
                add_first_logprobs(j, c, j->req.prompts[c->prompt][0]);
                if (!j->req.stream && (rc = lp_to_text(j, c)))
                    return rc;
            }
            add_logprobs(j, c, ev, c->p_off ? (size_t)c->p_off[k] : 0);
            if (!j->req.stream && (rc = lp_to_text(j, c)))
                return rc;
        }
        return 0;
    }
    if (c->prompt_held && (rc = flush_prompt(j, i, out)))
        return rc;
    if (ev->kind == ENG_EV_TOKEN) { /* every route's tokens: the count, the gap to the last */
        c->n_gen++;
        if (c->t_last > 0)
            srv_metrics_observe(SRV_H_ITL, ev->t - c->t_last);
        c->t_last = ev->t;
    }
    if (ev->kind == ENG_EV_TOKEN && j->req.kind == SRV_RESPONSES)
        return resp_text(j, ev->text, ev->n_text, 0, out);
    if (ev->kind == ENG_EV_TOKEN) {
        size_t offset = c->text.n;
        if (j->req.p.logprobs)
            add_logprobs(j, c, ev, offset);
        if (c->lp && !j->req.stream && (rc = lp_to_text(j, c)))
            return rc;
        if (j->req.stream) {
            if (ev->n_text || c->lp) {
                cJSON *lp = NULL;
                if (c->lp && j->req.kind == SRV_CHAT) {
                    lp = cJSON_CreateObject();
                    cJSON_AddItemToObject(lp, "content", c->lp);
                } else {
                    lp = c->lp;
                }
                c->lp = NULL;
                if (srv_outp_active(&c->outp)) {
                    struct srv_outp_out o = {0};
                    rc = srv_outp_feed(&c->outp, ev->text, ev->n_text, &o);
                    rc = rc ? (cJSON_Delete(lp), rc) : stream_outp(j, i, &o, lp, out);
                    srv_outp_out_free(&o);
                } else {
                    rc = stream_chunk(j, i, ev->text, ev->n_text, lp, NULL, 0, out);
                }
            }
            c->text.n += ev->n_text; /* only the length matters when streaming */
        } else {
            rc = buf_append(&c->text, ev->text, ev->n_text);
        }
        return rc;
    }
    c->ended = 1;
    c->finish = ev->finish;
    if (ev->embd) { /* an embedding: the vector is the output */
        c->embd = ev->embd;
        c->n_embd = ev->n_embd;
        ev->embd = NULL;
    }
    c->completion_tokens = ev->completion_tokens;
    c->cached_tokens = ev->cached_tokens;
    j->completion_tokens += ev->completion_tokens;
    observe_end(j, i, ev);
    if (ev->finish == ENG_FINISH_ERROR || ev->finish == ENG_FINISH_CANCELLED ||
        ev->finish == ENG_FINISH_TIMEOUT) {
        c->error = srv_utf8_dup(ev->n_text ? ev->text : "the request was cancelled",
                                ev->n_text ? ev->n_text : 25);
        return 0;
    }
    if (j->req.kind == SRV_RESPONSES) {
        return resp_text(j, ev->text, ev->n_text, 1, out);
    }
    if (j->req.kind == SRV_EMBED && !c->embd) {
        c->finish = ENG_FINISH_ERROR;
        c->error = srv_utf8_dup("the embedding was not made", 26);
        return 0;
    }
    if (j->req.stream && srv_outp_active(&c->outp)) {
        struct srv_outp_out o = {0};
        rc = srv_outp_feed(&c->outp, ev->text, ev->n_text, &o);
        rc = rc ? rc : srv_outp_finish(&c->outp, &o);
        rc = rc ? rc : stream_outp(j, i, &o, NULL, out);
        srv_outp_out_free(&o);
    } else if (ev->n_text) {
        if (j->req.stream)
            rc = stream_chunk(j, i, ev->text, ev->n_text, NULL, NULL, 0, out);
        else
            rc = buf_append(&c->text, ev->text, ev->n_text);
    }
    if (!rc && j->req.stream)
        rc = stream_chunk(j, i, NULL, 0, NULL, finish_name(c), 0, out);
    return rc;
}

static int start_stream(struct srv_job *j, struct buf *out)
{
    if (j->req.kind == SRV_RESPONSES)
        return resp_open(j, out);
    int rc = 0;
    for (int i = 0; i < j->n_choices && !rc; i++) {
        if (j->req.kind == SRV_CHAT) {
            rc = stream_chunk(j, i, NULL, 0, NULL, NULL, 1, out);
            j->c[i].prompt_held = j->req.prompt_lp >= 0;
        } else if (j->req.echo_lp || j->req.prompt_lp >= 0) {
            j->c[i].prompt_held = 1; /* the echo waits for the prompt's logprobs */
        } else if (j->req.echo) {
            struct buf t = {0};
            rc = prompt_text(j, j->c[i].prompt, &t);
            rc = rc ? rc : stream_chunk(j, i, t.p ? t.p : "", t.n, NULL, NULL, 0, out);
            j->c[i].text.n += t.n;
            free(t.p);
        }
    }
    return rc;
}

int srv_job_pump(struct srv_job *j, struct buf *out, int timeout_ms)
{
    if (j->done)
        return SRV_JOB_DONE;
    int rc = 0;
    if (!j->started) {
        j->started = 1;
        for (int i = 0; i < j->n_choices && !rc; i++) {
            struct choice *c = &j->c[i];
            if (j->req.echo_lp)
                rc = prompt_offsets(j, c);
            if (!rc && j->req.echo_lp && j->req.n_prompt[c->prompt] == 1) {
                add_first_logprobs(j, c, j->req.prompts[c->prompt][0]); /* no events follow */
                if (!j->req.stream)
                    rc = lp_to_text(j, c);
            }
        }
        if (!j->req.stream && j->req.echo)
            for (int i = 0; i < j->n_choices && !rc; i++)
                rc = prompt_text(j, j->c[i].prompt, &j->c[i].text);
        else if (j->req.stream)
            rc = start_stream(j, out);
        if (rc)
            return -ENOMEM;
        if (out->n)
            return SRV_JOB_MORE;
    }
    pthread_mutex_lock(&j->notify.mu);
    j->seen = j->notify.count;
    pthread_mutex_unlock(&j->notify.mu);
    int got = 0, open = 0;
    for (int i = 0; i < j->n_choices && !rc; i++) {
        struct eng_event ev;
        while (!rc && !j->c[i].ended) {
            int r = eng_req_next(j->c[i].h, &ev, 0);
            if (r == -ENODATA) { /* ended without an END event (no memory) */
                j->c[i].ended = 1;
                j->c[i].finish = ENG_FINISH_ERROR;
                break;
            }
            if (r)
                break;
            rc = take_event(j, i, &ev, out);
            eng_event_clear(&ev);
            got = 1;
        }
        open += !j->c[i].ended;
    }
    if (rc)
        return -ENOMEM;
    if (open == 0) {
        j->done = 1;
        srv_metrics_tokens(j->prompt_tokens, 0);
        const char *error = NULL;
        int timeout = 0;
        for (int i = 0; i < j->n_choices; i++) {
            enum eng_finish f = j->c[i].finish;
            if (f == ENG_FINISH_ERROR || f == ENG_FINISH_CANCELLED || f == ENG_FINISH_TIMEOUT) {
                error = j->c[i].error ? j->c[i].error : "the request failed";
                timeout = f == ENG_FINISH_TIMEOUT;
            }
        }
        if (error) {
            struct srv_error e;
            /* a timeout is the gateway's kind of failure, anything else ours */
            j->status = timeout ? 504 : 500;
            srv_fail(&e, j->status, NULL, timeout ? "timeout" : NULL, "%s", error);
            char *s = srv_error_json(&e);
            if (j->req.stream && j->req.kind == SRV_RESPONSES) { /* response.failed, then error */
                struct srv_resp r = resp_of(j);
                cJSON *o = cJSON_CreateObject();
                cJSON_AddItemToObject(o, "response", srv_resp_object(&r, "failed", NULL, error));
                rc = srv_resp_event(out, "response.failed", &j->seq, o);
                o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "code", timeout ? "timeout" : "server_error");
                cJSON_AddStringToObject(o, "message", error);
                cJSON_AddNullToObject(o, "param");
                rc = rc ? rc : srv_resp_event(out, "error", &j->seq, o);
            } else {
                rc = s ? buf_printf(out, j->req.stream ? "data: %s\n\n" : "%s", s) : -ENOMEM;
            }
            free(s);
        } else if (j->req.stream && j->req.kind == SRV_RESPONSES) {
            rc = resp_close(j, out);
        } else if (j->req.stream) {
            if (j->req.include_usage) {
                cJSON *o = envelope(j, j->req.kind == SRV_CHAT ? "chat.completion.chunk"
                                                               : "text_completion");
                cJSON_AddArrayToObject(o, "choices");
                cJSON_AddItemToObject(o, "usage", usage_json(j));
                rc = sse(out, o);
            }
            rc = rc ? rc : buf_printf(out, "data: [DONE]\n\n");
        } else {
            rc = final_json(j, out);
        }
        return rc ? -ENOMEM : SRV_JOB_DONE;
    }
    if (got)
        return SRV_JOB_MORE;
    uint64_t seen = j->seen;
    eng_notify_wait(&j->notify, &seen, timeout_ms);
    return SRV_JOB_WAIT;
}

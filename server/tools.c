/*
 * server/tools.c - tool calling and reasoning output on the chat route.
 *
 * Request side: `tools`, `tool_choice` and `parallel_tool_calls` are
 * checked here; `required` and a named function become a GRAM_TOOL_CALLS
 * grammar in the model's own call format, so that every call parses and its
 * arguments satisfy the function's schema.
 *
 * Output side: struct srv_outp splits the generated text into content,
 * reasoning (between <think> and </think>) and tool calls, as the text
 * streams.  Text that may still be the start of a marker is held back; a
 * call is released whole, when its closing marker (or the end) shows that
 * it parses - except a hermes call the grammar forces, whose arguments
 * stream as they come (forced_call).  A call that does not parse is given
 * back as content.
 *
 * The formats, chosen from the chat template's text:
 *  - hermes (Hermes, Qwen2.5, Qwen3): <tool_call>\n{"name": N, "arguments": {...}}\n</tool_call>
 *  - llama3 (Llama 3.1/3.2): {"name": N, "parameters": {...}} as the whole
 *    answer, or after <|python_tag|>; several separated by ";"
 *  - mistral: [TOOL_CALLS][{"name": N, "arguments": {...}}, ...]
 *  - generic (any other template): a whole answer of {"tool_calls":
 *    [{"name": N, "arguments": {...}}, ...]} (what server/chat.c asks for
 *    when the template does not render tools), {"tool_call": {...}} or
 *    {"name": N, "arguments": {...}}, or hermes' tags.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/srv.h"

static int has(const char *src, size_t n, const char *needle)
{
    return n && memmem(src, n, needle, strlen(needle)) != NULL;
}

void srv_chat_detect(struct srv_chat *c, const char *src, size_t n)
{
    c->tool_fmt = has(src, n, "<tool_call>")    ? SRV_TOOLS_HERMES
                  : has(src, n, "[TOOL_CALLS]") ? SRV_TOOLS_MISTRAL
                  : has(src, n, "<|python_tag|>") ||
                          (has(src, n, "<|start_header_id|>") && has(src, n, "tools"))
                      ? SRV_TOOLS_LLAMA3
                      : SRV_TOOLS_GENERIC;
    c->think = has(src, n, "</think>");
}

/* ---- the request ------------------------------------------------------------ */

static int name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.')
            return 0;
    return 1;
}

/* Checks tools[]; 0 or -1 with err set. */
static int check_tools(const cJSON *tools, struct srv_error *err)
{
    if (!cJSON_IsArray(tools))
        return srv_fail(err, 400, "tools", NULL, "tools must be an array of functions");
    int i = 0;
    for (const cJSON *t = tools->child; t; t = t->next, i++) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(t, "type");
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
        char param[64];
        snprintf(param, sizeof param, "tools[%d]", i);
        if (!cJSON_IsObject(t) || !cJSON_IsString(type) || strcmp(type->valuestring, "function"))
            return srv_fail(err, 400, param, NULL,
                            "tools[%d] must be {\"type\": \"function\", \"function\": {...}} "
                            "(cinfer calls functions only)",
                            i);
        if (!cJSON_IsObject(f))
            return srv_fail(err, 400, param, NULL, "tools[%d].function must be an object", i);
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(f, "name");
        const cJSON *desc = cJSON_GetObjectItemCaseSensitive(f, "description");
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(f, "parameters");
        const cJSON *strict = cJSON_GetObjectItemCaseSensitive(f, "strict");
        snprintf(param, sizeof param, "tools[%d].function.name", i);
        if (!cJSON_IsString(name) || !name_ok(name->valuestring))
            return srv_fail(err, 400, param, NULL,
                            "tools[%d].function.name must be 1 to 64 letters, digits, _, - or .",
                            i);
        for (const cJSON *u = tools->child; u != t; u = u->next) {
            const cJSON *f2 = cJSON_GetObjectItemCaseSensitive(u, "function");
            if (!strcmp(cJSON_GetObjectItemCaseSensitive(f2, "name")->valuestring,
                        name->valuestring))
                return srv_fail(err, 400, param, NULL, "tools[%d]: a second function named %s", i,
                                name->valuestring);
        }
        snprintf(param, sizeof param, "tools[%d].function", i);
        if (desc && !cJSON_IsNull(desc) && !cJSON_IsString(desc))
            return srv_fail(err, 400, param, NULL,
                            "tools[%d].function.description must be a string", i);
        if (params && !cJSON_IsNull(params) && !cJSON_IsObject(params))
            return srv_fail(err, 400, param, NULL,
                            "tools[%d].function.parameters must be a JSON schema (an object)", i);
        if (strict && !cJSON_IsNull(strict) && !cJSON_IsBool(strict))
            return srv_fail(err, 400, param, NULL, "tools[%d].function.strict must be a boolean",
                            i);
    }
    return 0;
}

/* The GRAM_TOOL_CALLS spec for the chosen functions in fmt's syntax (caller frees); NULL: no
 * memory. */
static cJSON *grammar_spec(enum srv_tool_fmt fmt, const cJSON *tools, const char *only,
                           int max_calls)
{
    cJSON *spec = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(spec, "tools");
    int ok = list != NULL;
    for (const cJSON *t = tools->child; t && ok; t = t->next) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
        const char *name = cJSON_GetObjectItemCaseSensitive(f, "name")->valuestring;
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(f, "parameters");
        if (only && strcmp(only, name))
            continue;
        cJSON *x = cJSON_CreateObject();
        ok = x && cJSON_AddItemToArray(list, x) && cJSON_AddStringToObject(x, "name", name);
        if (ok && cJSON_IsObject(params)) {
            cJSON *d = cJSON_Duplicate(params, 1);
            ok = d && cJSON_AddItemToObject(x, "parameters", d);
        }
    }
    const char *pre = "", *suf = "", *cpre = "", *csuf = "", *sep = "", *akey = "arguments";
    if (fmt == SRV_TOOLS_MISTRAL) {
        pre = "[TOOL_CALLS][";
        suf = "]";
        sep = ", ";
    } else if (fmt == SRV_TOOLS_LLAMA3) {
        sep = "; ";
        akey = "parameters";
    } else if (fmt == SRV_TOOLS_HERMES) {
        cpre = "<tool_call>\n";
        csuf = "\n</tool_call>";
        sep = "\n";
    } else { /* generic: what server/chat.c's fallback asks for */
        pre = "{\"tool_calls\": [";
        suf = "]}";
        sep = ", ";
    }
    ok = ok && cJSON_AddStringToObject(spec, "prefix", pre) &&
         cJSON_AddStringToObject(spec, "suffix", suf) &&
         cJSON_AddStringToObject(spec, "call_prefix", cpre) &&
         cJSON_AddStringToObject(spec, "call_suffix", csuf) &&
         cJSON_AddStringToObject(spec, "sep", sep) &&
         cJSON_AddStringToObject(spec, "args_key", akey) &&
         cJSON_AddNumberToObject(spec, "min", 1) && cJSON_AddNumberToObject(spec, "max", max_calls);
    if (!ok) {
        cJSON_Delete(spec);
        return NULL;
    }
    return spec;
}

int srv_tools_request(const cJSON *root, const struct srv_chat *chat, struct srv_request *r,
                      cJSON **spec, struct srv_error *err)
{
    *spec = NULL;
    static const char *const legacy[] = {"functions", "function_call"};
    for (size_t i = 0; i < sizeof legacy / sizeof legacy[0]; i++) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, legacy[i]);
        if (f && !cJSON_IsNull(f))
            return srv_fail(err, 400, legacy[i], NULL,
                            "%s is OpenAI's deprecated form; give tools and tool_choice instead",
                            legacy[i]);
    }
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(root, "tool_choice");
    const cJSON *par = cJSON_GetObjectItemCaseSensitive(root, "parallel_tool_calls");
    if (tools && cJSON_IsNull(tools))
        tools = NULL;
    if (tools && check_tools(tools, err))
        return -1;
    int n_tools = tools ? cJSON_GetArraySize(tools) : 0;
    if (par && !cJSON_IsNull(par) && !cJSON_IsBool(par))
        return srv_fail(err, 400, "parallel_tool_calls", NULL,
                        "parallel_tool_calls must be a boolean");
    r->parallel_tool_calls = !par || !cJSON_IsFalse(par);
    /* tool_choice: "none", "auto" (the default with tools), "required" or a named function */
    const char *named = NULL;
    r->tool_mode = n_tools ? SRV_TOOL_AUTO : SRV_TOOL_NONE;
    if (tc && !cJSON_IsNull(tc)) {
        if (cJSON_IsString(tc) && !strcmp(tc->valuestring, "none")) {
            r->tool_mode = SRV_TOOL_NONE;
        } else if (cJSON_IsString(tc) && !strcmp(tc->valuestring, "auto")) {
            /* auto without tools asks for nothing */
        } else if (cJSON_IsString(tc) && !strcmp(tc->valuestring, "required")) {
            r->tool_mode = SRV_TOOL_REQUIRED;
        } else if (cJSON_IsObject(tc)) {
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(tc, "type");
            const cJSON *f = cJSON_GetObjectItemCaseSensitive(tc, "function");
            const cJSON *name =
                cJSON_IsObject(f) ? cJSON_GetObjectItemCaseSensitive(f, "name") : NULL;
            if (!cJSON_IsString(type) || strcmp(type->valuestring, "function") ||
                !cJSON_IsString(name))
                return srv_fail(err, 400, "tool_choice", NULL,
                                "tool_choice as an object must be {\"type\": \"function\", "
                                "\"function\": {\"name\": ...}}");
            named = name->valuestring;
            r->tool_mode = SRV_TOOL_NAMED;
        } else {
            return srv_fail(err, 400, "tool_choice", NULL,
                            "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": "
                            "\"function\", \"function\": {\"name\": ...}}");
        }
    }
    if ((r->tool_mode == SRV_TOOL_REQUIRED || r->tool_mode == SRV_TOOL_NAMED) && !n_tools)
        return srv_fail(err, 400, "tool_choice", NULL,
                        "tool_choice asks for a tool call but the request has no tools");
    if (named) {
        int found = 0;
        for (const cJSON *t = tools->child; t && !found; t = t->next)
            found = !strcmp(cJSON_GetObjectItemCaseSensitive(
                                cJSON_GetObjectItemCaseSensitive(t, "function"), "name")
                                ->valuestring,
                            named);
        if (!found) {
            char *clean = srv_utf8_dup(named, strnlen(named, 64));
            int rc = srv_fail(err, 400, "tool_choice", NULL,
                              "tool_choice names the function '%s', which is not in tools",
                              clean ? clean : "");
            free(clean);
            return rc;
        }
    }
    if (r->tool_mode != SRV_TOOL_NONE) {
        if (!(r->tool_names = calloc((size_t)n_tools, sizeof(char *))))
            return srv_fail(err, 500, NULL, NULL, "out of memory");
        for (const cJSON *t = tools->child; t; t = t->next) {
            const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
            char *d = strdup(cJSON_GetObjectItemCaseSensitive(f, "name")->valuestring);
            if (!d)
                return srv_fail(err, 500, NULL, NULL, "out of memory");
            r->tool_names[r->n_tool_names++] = d;
        }
    }
    r->tool_fmt = chat ? chat->tool_fmt : SRV_TOOLS_GENERIC;
    r->reasoning = chat && chat->think;
    if (r->tool_mode != SRV_TOOL_NONE && chat && !chat->tpl)
        return srv_fail(err, 400, "tools", NULL,
                        "the model has no chat template to tell it about tools (its prompt is "
                        "cinfer's built-in %s format); start the server with --chat-template FILE",
                        tok_chat_name(chat->builtin));
    if (r->tool_mode == SRV_TOOL_REQUIRED || r->tool_mode == SRV_TOOL_NAMED) {
        int max = named || !r->parallel_tool_calls ? 1 : -1;
        if (!(*spec = grammar_spec(r->tool_fmt, tools, named, max)))
            return srv_fail(err, 500, NULL, NULL, "out of memory");
    }
    return 0;
}

/* ---- the output --------------------------------------------------------------- */

enum { P_TEXT, P_THINK, P_CALL, P_REST };

static const char k_think_open[] = "<think>", k_think_close[] = "</think>";
static const char k_tag_open[] = "<tool_call>", k_tag_close[] = "</tool_call>";

/* The marker that opens a call in fmt's output. */
static const char *call_marker(enum srv_tool_fmt fmt)
{
    return fmt == SRV_TOOLS_MISTRAL  ? "[TOOL_CALLS]"
           : fmt == SRV_TOOLS_LLAMA3 ? "<|python_tag|>"
                                     : k_tag_open;
}

void srv_outp_init(struct srv_outp *p, const struct srv_request *r)
{
    memset(p, 0, sizeof(*p));
    p->fmt = r->tool_fmt;
    p->tools = r->tool_mode != SRV_TOOL_NONE;
    p->reasoning = r->reasoning;
    p->max_calls = r->parallel_tool_calls ? -1 : 1;
    p->forced = r->tool_mode == SRV_TOOL_REQUIRED || r->tool_mode == SRV_TOOL_NAMED;
    p->state = r->reasoning && r->think_open ? P_THINK : P_TEXT;
    p->marker = "";
    p->names = (const char *const *)r->tool_names;
    p->n_names = r->n_tool_names;
}

int srv_outp_active(const struct srv_outp *p)
{
    return p->tools || p->reasoning;
}

void srv_outp_free(struct srv_outp *p)
{
    free(p->hold.p);
    memset(p, 0, sizeof(*p));
}

void srv_outp_out_free(struct srv_outp_out *o)
{
    free(o->content.p);
    free(o->reasoning.p);
    cJSON_Delete(o->calls);
    memset(o, 0, sizeof(*o));
}

/* The length of the longest tail of s[0..n) that is a proper prefix of m. */
static size_t partial(const char *s, size_t n, const char *m)
{
    size_t mn = strlen(m);
    for (size_t k = mn - 1 < n ? mn - 1 : n; k > 0; k--)
        if (!memcmp(s + n - k, m, k))
            return k;
    return 0;
}

static int all_space(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i]))
            return 0;
    return 1;
}

static void hold_drop(struct srv_outp *p, size_t n)
{
    memmove(p->hold.p, p->hold.p + n, p->hold.n - n);
    p->hold.n -= n;
}

static int emit_content(struct srv_outp *p, struct srv_outp_out *o, const char *s, size_t n)
{
    if (!n)
        return 0;
    if (!all_space(s, n))
        p->started = 1;
    return buf_append(&o->content, s, n);
}

/* A call's id: OpenAI's call_ and 24 letters and digits; Mistral's templates want 9. */
static void call_id(enum srv_tool_fmt fmt, char *out, size_t cap)
{
    static const char al[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    int n = fmt == SRV_TOOLS_MISTRAL ? 9 : 24;
    size_t at = fmt == SRV_TOOLS_MISTRAL ? 0 : (size_t)snprintf(out, cap, "call_");
    uint64_t x = srv_random();
    for (int i = 0; i < n && at + 1 < cap; i++) {
        if (i % 10 == 9)
            x = srv_random();
        out[at++] = al[x % 62];
        x /= 62;
    }
    out[at] = 0;
}

/*
 * A call delta into calls: {"index", "id", "name"} opens call index (with
 * empty arguments), {"index", "arguments"} adds argument text to it - as
 * OpenAI streams them.  0 or -ENOMEM.
 */
static int add_delta(cJSON *calls, int index, const char *id, const char *name, const char *args,
                     size_t n)
{
    cJSON *d = cJSON_CreateObject();
    char *a = args ? strndup(args, n) : NULL;
    int ok = d && (!args || a) && cJSON_AddNumberToObject(d, "index", index) &&
             (!id || cJSON_AddStringToObject(d, "id", id)) &&
             (!name || cJSON_AddStringToObject(d, "name", name)) &&
             (!a || cJSON_AddStringToObject(d, "arguments", a)) && cJSON_AddItemToArray(calls, d);
    free(a);
    if (!ok) {
        cJSON_Delete(d);
        return -ENOMEM;
    }
    return 0;
}

/* Opens a call named name: its index, or -ENOMEM. */
static int open_call(struct srv_outp *p, cJSON *calls, const char *name)
{
    char id[40];
    call_id(p->fmt, id, sizeof id);
    if (add_delta(calls, p->n_calls, id, name, NULL, 0))
        return -ENOMEM;
    return p->n_calls++;
}

/* One call object ({"name", "arguments" | "parameters"}) into calls; 0, -EINVAL or -ENOMEM. */
static int add_call(struct srv_outp *p, const cJSON *x, cJSON *calls)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(x, "name");
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(x, "arguments");
    if (!args)
        args = cJSON_GetObjectItemCaseSensitive(x, "parameters");
    if (!cJSON_IsObject(x) || !cJSON_IsString(name) || !*name->valuestring ||
        (args && !cJSON_IsObject(args) && !cJSON_IsString(args)))
        return -EINVAL;
    if (!*p->marker && p->fmt != SRV_TOOLS_LLAMA3) { /* bare JSON: only a tool's name */
        int known = 0;
        for (int i = 0; i < p->n_names && !known; i++)
            known = !strcmp(p->names[i], name->valuestring);
        if (!known)
            return -EINVAL;
    }
    if (p->max_calls >= 0 && p->n_calls >= p->max_calls)
        return 0; /* parallel_tool_calls false: the first call only */
    char *text = !args                  ? strdup("{}")
                 : cJSON_IsString(args) ? strdup(args->valuestring)
                                        : cJSON_PrintUnformatted(args);
    int k = text ? open_call(p, calls, name->valuestring) : -ENOMEM;
    int rc = k < 0 ? k : add_delta(calls, k, NULL, NULL, text, strlen(text));
    free(text);
    return rc;
}

/*
 * A forced hermes call (tool_choice required or named: the grammar wrote
 * it, so it parses) streams its arguments as they come.  After
 * <tool_call>: space, {"name": "N", "arguments": then the arguments' JSON,
 * whose end the bracket depth tells, then } and </tool_call>.  Returns 1
 * when the call is done, 0 for more text, -EINVAL when the text is not
 * that shape (nothing was released then), -ENOMEM.
 */
static int forced_call(struct srv_outp *p, struct srv_outp_out *o, int final)
{
    const char *h = p->hold.p;
    size_t n = p->hold.n;
    if (p->inc_stage == 0) {
        static const char pre[] = "{\"name\": \"", mid[] = "\", \"arguments\": ";
        size_t i = 0;
        while (i < n && isspace((unsigned char)h[i]))
            i++;
        size_t k = 0;
        for (; k < sizeof pre - 1 && i + k < n; k++)
            if (h[i + k] != pre[k])
                return -EINVAL;
        if (k < sizeof pre - 1)
            return final ? -EINVAL : 0;
        const char *q = memchr(h + i + k, '"', n - i - k);
        if (!q)
            return final ? -EINVAL : 0;
        size_t at = (size_t)(q - h) + 1;
        for (k = 1; k < sizeof mid - 1 && at + k - 1 < n; k++)
            if (h[at + k - 1] != mid[k])
                return -EINVAL;
        if (k < sizeof mid - 1)
            return final ? -EINVAL : 0;
        char *name = strndup(h + i + sizeof pre - 1, (size_t)(q - h) - i - (sizeof pre - 1));
        int idx = name ? open_call(p, o->calls, name) : -ENOMEM; /* run() made o->calls */
        free(name);
        if (idx < 0)
            return idx;
        p->inc_index = idx;
        p->inc_stage = 1;
        p->inc_depth = p->inc_str = p->inc_esc = 0;
        p->inc_pos = p->inc_sent = at + sizeof mid - 2;
    }
    if (p->inc_stage == 1) { /* the arguments, up to where their brackets close */
        size_t i = p->inc_pos, end = 0;
        for (; i < n && !end; i++) {
            char c = h[i];
            if (p->inc_str) {
                if (p->inc_esc)
                    p->inc_esc = 0;
                else if (c == '\\')
                    p->inc_esc = 1;
                else if (c == '"')
                    p->inc_str = 0;
            } else if (c == '"') {
                p->inc_str = 1;
            } else if (c == '{' || c == '[') {
                p->inc_depth++;
            } else if ((c == '}' || c == ']') && --p->inc_depth == 0) {
                end = i + 1;
            } else if (p->inc_depth == 0 && isspace((unsigned char)c) && i == p->inc_sent) {
                p->inc_sent++; /* space before the arguments is not theirs */
            }
        }
        p->inc_pos = i;
        size_t upto = end ? end : i;
        if (upto > p->inc_sent &&
            add_delta(o->calls, p->inc_index, NULL, NULL, h + p->inc_sent, upto - p->inc_sent))
            return -ENOMEM;
        p->inc_sent = upto;
        if (!end && final)
            p->hold.n = 0; /* cut off (max_tokens): what came is what there is */
        if (!end)
            return final;
        p->inc_stage = 2;
    }
    /* the rest of the call's object, up to its closing tag */
    const char *at = memmem(h + p->inc_sent, n - p->inc_sent, k_tag_close, sizeof k_tag_close - 1);
    if (!at && !final)
        return 0;
    hold_drop(p, at ? (size_t)(at - h) + sizeof k_tag_close - 1 : n);
    return 1;
}

/*
 * The calls in text, into o->calls: a run of JSON values separated by
 * whitespace, ";" or ","; a value is a call object, an array of them, or
 * (generic) {"tool_calls": [...]} / {"tool_call": {...}}.  Mistral's
 * name[ARGS]{...} form too.  0 when everything parsed (and held a call),
 * -EINVAL when not (nothing is added then), -ENOMEM.
 */
static int parse_calls(struct srv_outp *p, const char *text, size_t n, struct srv_outp_out *o)
{
    cJSON *calls = cJSON_CreateArray();
    if (!calls)
        return -ENOMEM;
    int saved = p->n_calls, rc = 0, any = 0;
    const char *s = text, *end = text + n;
    const char *args = p->fmt == SRV_TOOLS_MISTRAL ? memmem(s, n, "[ARGS]", 6) : NULL;
    if (args) { /* [TOOL_CALLS]name[ARGS]{...} */
        cJSON *x = cJSON_CreateObject(),
              *a = cJSON_ParseWithLength(args + 6, (size_t)(end - args - 6));
        char *name = strndup(s, (size_t)(args - s));
        if (x && a && name && cJSON_AddStringToObject(x, "name", name) &&
            cJSON_AddItemToObject(x, "arguments", a)) {
            a = NULL;
            rc = add_call(p, x, calls);
            any = 1;
        } else
            rc = -EINVAL;
        cJSON_Delete(x);
        cJSON_Delete(a);
        free(name);
        end = s; /* done */
    }
    while (!rc && s < end) {
        while (s < end && (isspace((unsigned char)*s) || *s == ';' || *s == ','))
            s++;
        if (s == end)
            break;
        const char *after = NULL;
        cJSON *v = cJSON_ParseWithLengthOpts(s, (size_t)(end - s), &after, 0);
        if (!v || !after || after <= s) {
            cJSON_Delete(v);
            rc = -EINVAL;
            break;
        }
        s = after;
        const cJSON *list = cJSON_IsArray(v) ? v : NULL;
        if (!list && cJSON_IsObject(v) && p->fmt == SRV_TOOLS_GENERIC) {
            const cJSON *w = cJSON_GetObjectItemCaseSensitive(v, "tool_calls");
            const cJSON *one = cJSON_GetObjectItemCaseSensitive(v, "tool_call");
            if (cJSON_IsArray(w))
                list = w;
            else if (cJSON_IsObject(one))
                rc = add_call(p, one, calls), any = 1;
            else
                rc = add_call(p, v, calls), any = 1;
        } else if (!list) {
            rc = add_call(p, v, calls), any = 1;
        }
        for (const cJSON *x = list ? list->child : NULL; x && !rc; x = x->next)
            rc = add_call(p, x, calls), any = 1;
        cJSON_Delete(v);
    }
    if (!rc && !any)
        rc = -EINVAL;
    if (rc) {
        p->n_calls = saved;
        cJSON_Delete(calls);
        return rc;
    }
    if (!o->calls)
        o->calls = cJSON_CreateArray();
    if (!o->calls) {
        cJSON_Delete(calls);
        return -ENOMEM;
    }
    while (calls->child)
        cJSON_AddItemToArray(o->calls, cJSON_DetachItemViaPointer(calls, calls->child));
    cJSON_Delete(calls);
    return 0;
}

/* A call's text that did not parse goes back as content, with its markers. */
static int give_back(struct srv_outp *p, struct srv_outp_out *o, const char *open, const char *s,
                     size_t n, const char *close)
{
    int rc = emit_content(p, o, open, strlen(open));
    rc = rc ? rc : emit_content(p, o, s, n);
    return rc ? rc : emit_content(p, o, close, strlen(close));
}

/* Runs the states over what is held; final: the output has ended. */
static int run(struct srv_outp *p, struct srv_outp_out *o, int final)
{
    int rc = 0;
    while (!rc) {
        char *h = p->hold.p;
        size_t n = p->hold.n;
        if (p->state == P_THINK) {
            char *at = n ? memmem(h, n, k_think_close, sizeof k_think_close - 1) : NULL;
            if (at) {
                rc = buf_append(&o->reasoning, h, (size_t)(at - h));
                hold_drop(p, (size_t)(at - h) + sizeof k_think_close - 1);
                p->state = P_TEXT;
                continue;
            }
            size_t keep = final ? 0 : partial(h, n, k_think_close);
            rc = buf_append(&o->reasoning, h, n - keep);
            hold_drop(p, n - keep);
            return rc;
        }
        if (p->state == P_CALL && p->forced && p->inc_stage >= 0) {
            if (!o->calls && !(o->calls = cJSON_CreateArray()))
                return -ENOMEM;
            rc = forced_call(p, o, final);
            if (rc == 0)
                return 0;
            if (rc == 1) {
                p->state = P_TEXT;
                p->inc_stage = 0;
                rc = 0;
                continue;
            }
            if (rc == -ENOMEM)
                return rc;
            p->inc_stage = -1; /* not the grammar's shape: as an unforced call */
            rc = 0;
            continue;
        }
        if (p->state == P_CALL) {
            char *at = n ? memmem(h, n, k_tag_close, sizeof k_tag_close - 1) : NULL;
            if (!at && !final)
                return 0;
            size_t body = at ? (size_t)(at - h) : n;
            rc = parse_calls(p, h, body, o);
            if (rc == -EINVAL)
                rc = give_back(p, o, k_tag_open, h, body, at ? k_tag_close : "");
            hold_drop(p, at ? body + sizeof k_tag_close - 1 : n);
            p->state = P_TEXT;
            p->inc_stage = 0;
            continue;
        }
        if (p->state == P_REST) {
            if (!final)
                return 0;
            rc = parse_calls(p, h, n, o);
            if (rc == -EINVAL)
                rc = give_back(p, o, p->marker, h, n, "");
            p->hold.n = 0;
            p->state = P_TEXT;
            return rc;
        }
        /* P_TEXT: the earliest marker, if any */
        if (!n)
            return 0;
        const char *marks[2] = {NULL, NULL};
        if (p->reasoning && !p->started)
            marks[0] = k_think_open;
        if (p->tools)
            marks[1] = call_marker(p->fmt);
        char *first = NULL;
        int which = -1;
        for (int k = 0; k < 2; k++) {
            char *at = marks[k] ? memmem(h, n, marks[k], strlen(marks[k])) : NULL;
            if (at && k == 0 && !all_space(h, (size_t)(at - h)))
                at = NULL; /* <think> opens an answer or nothing */
            if (at && (!first || at < first))
                first = at, which = k;
        }
        /*
         * An answer that opens with "{" may be a call: llama3's format, the
         * generic one, and what small models trained on hermes' often write
         * (without its tags: then it must name one of the request's tools).
         */
        size_t lead = 0;
        while (lead < n && isspace((unsigned char)h[lead]))
            lead++;
        if (p->tools && !p->started && lead < n && h[lead] == '{' && (!first || first > h + lead)) {
            p->state = P_REST; /* the space before stays with it */
            p->marker = "";
            continue;
        }
        if (first) {
            size_t before = (size_t)(first - h), mn = strlen(marks[which]);
            /* space before a call, with nothing said yet, is not an answer */
            if (!(which == 1 && !p->started && all_space(h, before)))
                rc = emit_content(p, o, h, before);
            hold_drop(p, before + mn);
            if (which == 0)
                p->state = P_THINK;
            else if (p->fmt == SRV_TOOLS_HERMES || p->fmt == SRV_TOOLS_GENERIC)
                p->state = P_CALL;
            else {
                p->state = P_REST;
                p->marker = marks[1];
            }
            continue;
        }
        if (final) {
            /* the space between calls is not an answer */
            if (!(p->n_calls && !p->started && all_space(h, n)))
                rc = emit_content(p, o, h, n);
            p->hold.n = 0;
            return rc;
        }
        /* hold what may start a marker, and leading space before anything else */
        size_t keep = 0;
        for (int k = 0; k < 2; k++)
            if (marks[k]) {
                size_t q = partial(h, n, marks[k]);
                keep = q > keep ? q : keep;
            }
        if (!p->started && lead + keep >= n) /* space, then maybe a marker */
            keep = n;
        rc = emit_content(p, o, h, n - keep);
        hold_drop(p, n - keep);
        return rc;
    }
    return rc;
}

int srv_outp_feed(struct srv_outp *p, const char *text, size_t n, struct srv_outp_out *o)
{
    if (n && buf_append(&p->hold, text, n))
        return -ENOMEM;
    return run(p, o, 0) == -ENOMEM ? -ENOMEM : 0;
}

int srv_outp_finish(struct srv_outp *p, struct srv_outp_out *o)
{
    return run(p, o, 1) == -ENOMEM ? -ENOMEM : 0;
}

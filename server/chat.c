/*
 * server/chat.c - chat messages -> prompt text, by the model's own Jinja
 * chat template (template/), as vLLM and llama-server do.
 *
 * The template comes from --chat-template FILE, else the GGUF's
 * tokenizer.chat_template; only a GGUF without one falls back to the
 * built-in formats of tokenizer/chat.c.  Before rendering, the messages are
 * checked and brought to the shape templates expect (what vLLM does too):
 * text parts joined with "\n", tool-call arguments given as a JSON string
 * parsed into an object.  The template's variables: messages, tools (when
 * the request has any), add_generation_prompt, bos_token, eos_token, and
 * the request's chat_template_kwargs.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/srv.h"
#include "template/template.h"
#include "tokenizer/tokenizer.h"
#include "util/errmsg.h"

static char *piece_dup(const struct tok *t, int32_t id)
{
    size_t n = 0;
    const char *p = id >= 0 ? tok_piece(t, id, 1, &n) : NULL;
    char *s = malloc(n + 1);
    if (s) {
        if (n)
            memcpy(s, p, n);
        s[n] = 0;
    }
    return s;
}

static char *read_file(const char *path, size_t *n, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        errmsg(err, errlen, -errno, "--chat-template %s: %s", path, strerror(errno));
        return NULL;
    }
    struct buf b = {0};
    char chunk[65536];
    size_t k;
    while ((k = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (b.n + k > TPL_MAX_SOURCE || buf_append(&b, chunk, k)) {
            errmsg(err, errlen, -E2BIG, "--chat-template %s: over %u bytes or out of memory", path,
                   TPL_MAX_SOURCE);
            free(b.p);
            fclose(f);
            return NULL;
        }
    }
    fclose(f);
    *n = b.n;
    if (!b.p)
        b.p = calloc(1, 1);
    return b.p;
}

int srv_chat_load(struct srv_chat *c, struct engine *e, const char *file, char *err, size_t errlen)
{
    memset(c, 0, sizeof(*c));
    struct eng_info info;
    eng_get_info(e, &info);
    const struct tok *t = eng_tok(e);
    c->builtin = info.chat;
    c->add_bos = tok_add_bos(t) > 0 && tok_bos(t) >= 0;
    if (!(c->bos = piece_dup(t, tok_bos(t))) || !(c->eos = piece_dup(t, tok_eos(t))))
        return errmsg(err, errlen, -ENOMEM, "out of memory");
    char *src = NULL;
    size_t n = 0;
    if (file && *file) {
        if (!(src = read_file(file, &n, err, errlen)))
            return -EINVAL;
        snprintf(c->origin, sizeof c->origin, "--chat-template %s", file);
    } else if (info.chat_template) {
        n = info.chat_template_len;
        snprintf(c->origin, sizeof c->origin, "the model's chat template");
    } else {
        snprintf(c->origin, sizeof c->origin, "built-in %s (the model has no chat template)",
                 tok_chat_name(info.chat));
        return 0;
    }
    srv_chat_detect(c, src ? src : info.chat_template, n);
    char msg[300];
    int rc = tpl_compile(src ? src : info.chat_template, n, &c->tpl, msg, sizeof msg);
    free(src);
    if (rc)
        return errmsg(err, errlen, rc, "%s does not compile: %s", c->origin, msg);
    return 0;
}

void srv_chat_free(struct srv_chat *c)
{
    if (!c)
        return;
    tpl_destroy(c->tpl);
    free(c->bos);
    free(c->eos);
    memset(c, 0, sizeof(*c));
}

void srv_chat_use_builtin(struct srv_chat *c, enum tok_chat fmt)
{
    tpl_destroy(c->tpl);
    c->tpl = NULL;
    c->builtin = fmt;
    snprintf(c->origin, sizeof c->origin, "built-in %s", tok_chat_name(fmt));
}

static const char *const k_roles[] = {"system", "developer", "user", "assistant", "tool"};

/* Message content: a string, null, or an array of text parts joined with "\n". */
static int content_text(const cJSON *c, int i, struct buf *out, struct srv_error *err)
{
    char param[64];
    snprintf(param, sizeof(param), "messages[%d].content", i);
    if (!c || cJSON_IsNull(c))
        return 0;
    if (cJSON_IsString(c))
        return buf_append(out, c->valuestring, strlen(c->valuestring)) ? -1 : 0;
    if (!cJSON_IsArray(c))
        return srv_fail(err, 400, param, NULL, "%s must be a string or an array of parts", param);
    int j = 0;
    for (const cJSON *part = c->child; part; part = part->next, j++) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type))
            return srv_fail(err, 400, param, NULL, "%s[%d] must be an object with a \"type\"",
                            param, j);
        if (strcmp(type->valuestring, "text"))
            return srv_fail(err, 400, param, NULL,
                            "content part type '%.40s' is not supported (only 'text')",
                            type->valuestring);
        if (!cJSON_IsString(text))
            return srv_fail(err, 400, param, NULL, "%s[%d].text must be a string", param, j);
        if ((j && buf_append(out, "\n", 1)) ||
            buf_append(out, text->valuestring, strlen(text->valuestring)))
            return srv_fail(err, 500, NULL, NULL, "out of memory");
    }
    return 0;
}

/* An assistant message's tool_calls, checked; arguments given as JSON text become objects. */
static int fix_tool_calls(cJSON *m, int i, struct srv_error *err)
{
    cJSON *tcs = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
    char param[80];
    snprintf(param, sizeof param, "messages[%d].tool_calls", i);
    if (!tcs || cJSON_IsNull(tcs))
        return 0;
    if (!cJSON_IsArray(tcs))
        return srv_fail(err, 400, param, NULL, "%s must be an array", param);
    int j = 0;
    for (cJSON *tc = tcs->child; tc; tc = tc->next, j++) {
        cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
        cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
        snprintf(param, sizeof param, "messages[%d].tool_calls[%d].function", i, j);
        if (!cJSON_IsObject(tc) || !cJSON_IsObject(fn) || !cJSON_IsString(name))
            return srv_fail(err, 400, param, NULL, "%s must be an object with a \"name\"", param);
        if (!args || cJSON_IsNull(args)) {
            if (!cJSON_AddObjectToObject(fn, "arguments"))
                return srv_fail(err, 500, NULL, NULL, "out of memory");
            continue;
        }
        if (cJSON_IsObject(args))
            continue;
        if (!cJSON_IsString(args))
            return srv_fail(err, 400, param, NULL, "%s.arguments must be a JSON string", param);
        cJSON *parsed = cJSON_Parse(args->valuestring);
        if (!parsed || !cJSON_IsObject(parsed)) {
            cJSON_Delete(parsed);
            return srv_fail(err, 400, param, NULL, "%s.arguments is not a JSON object", param);
        }
        cJSON_ReplaceItemInObjectCaseSensitive(fn, "arguments", parsed);
    }
    return 0;
}

/*
 * The second shape, for templates that fail on the first (vLLM's shape):
 * null content as "", and tool-call arguments as JSON text (DeepSeek-R1's
 * template concatenates them; Qwen3's tests `in` on the content).
 */
static int plain_shape(cJSON *msgs)
{
    for (cJSON *m = msgs->child; m; m = m->next) {
        cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!content || cJSON_IsNull(content)) {
            cJSON *e = cJSON_CreateString("");
            if (!e || (content ? !cJSON_ReplaceItemInObjectCaseSensitive(m, "content", e)
                               : !cJSON_AddItemToObject(m, "content", e)))
                return -1;
        }
        cJSON *tcs = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        for (cJSON *tc = cJSON_IsArray(tcs) ? tcs->child : NULL; tc; tc = tc->next) {
            cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
            cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
            if (!cJSON_IsObject(args))
                continue;
            char *text = cJSON_PrintUnformatted(args);
            cJSON *js = text ? cJSON_CreateString(text) : NULL;
            free(text);
            if (!js || !cJSON_ReplaceItemInObjectCaseSensitive(fn, "arguments", js))
                return -1;
        }
    }
    return 0;
}

/* The messages, checked, in the shape templates take (a new tree), or NULL with err set. */
static cJSON *messages_for_template(const cJSON *msgs, struct srv_error *err)
{
    if (!cJSON_IsArray(msgs) || !msgs->child) {
        srv_fail(err, 400, "messages", NULL, "messages must be a non-empty array");
        return NULL;
    }
    cJSON *out = cJSON_CreateArray();
    int i = 0, rc = out ? 0 : srv_fail(err, 500, NULL, NULL, "out of memory");
    for (const cJSON *v = msgs->child; v && !rc; v = v->next, i++) {
        char param[48];
        snprintf(param, sizeof(param), "messages[%d].role", i);
        if (!cJSON_IsObject(v)) {
            rc = srv_fail(err, 400, "messages", NULL, "messages[%d] must be an object", i);
            break;
        }
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(v, "role");
        if (!cJSON_IsString(role)) {
            rc = srv_fail(err, 400, param, NULL, "%s must be a string", param);
            break;
        }
        const char *r = NULL;
        for (size_t k = 0; k < sizeof(k_roles) / sizeof(k_roles[0]); k++)
            if (!strcmp(role->valuestring, k_roles[k]))
                r = k_roles[k];
        if (!r) {
            char *clean = srv_utf8_dup(role->valuestring, strnlen(role->valuestring, 40));
            rc = srv_fail(err, 400, param, NULL,
                          "%s '%s' is not one of system, developer, user, assistant, tool", param,
                          clean ? clean : "?");
            free(clean);
            break;
        }
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(v, "content");
        int has_calls = cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(v, "tool_calls"));
        if ((!content || cJSON_IsNull(content)) && strcmp(r, "assistant")) {
            rc = srv_fail(err, 400, "messages", NULL, "messages[%d].content is required", i);
            break;
        }
        struct buf text = {0};
        if ((rc = content_text(content, i, &text, err))) {
            free(text.p);
            break;
        }
        cJSON *m = cJSON_Duplicate(v, 1);
        if (!m || !cJSON_AddItemToArray(out, m)) {
            cJSON_Delete(m);
            free(text.p);
            rc = srv_fail(err, 500, NULL, NULL, "out of memory");
            break;
        }
        /* OpenAI's developer role is the system role to every chat template */
        if (!strcmp(r, "developer"))
            cJSON_ReplaceItemInObjectCaseSensitive(m, "role", cJSON_CreateString("system"));
        /* null content stays null for an assistant turn with tool calls, as OpenAI sends it */
        if (!((!content || cJSON_IsNull(content)) && has_calls)) {
            cJSON *s = cJSON_CreateString(text.p ? text.p : "");
            if (!s || (cJSON_GetObjectItemCaseSensitive(m, "content")
                           ? !cJSON_ReplaceItemInObjectCaseSensitive(m, "content", s)
                           : !cJSON_AddItemToObject(m, "content", s)))
                rc = srv_fail(err, 500, NULL, NULL, "out of memory");
        }
        free(text.p);
        if (!rc && !strcmp(r, "assistant"))
            rc = fix_tool_calls(m, i, err);
    }
    if (rc) {
        cJSON_Delete(out);
        return NULL;
    }
    return out;
}

/* The built-in formats of tokenizer/chat.c, for a model without a template. */
static int render_builtin(const struct srv_chat *c, const cJSON *msgs, int gen, struct buf *out,
                          struct srv_error *err)
{
    int n = cJSON_GetArraySize(msgs), i = 0, rc = 0;
    struct tok_msg *m = calloc((size_t)n, sizeof(*m));
    if (!m)
        return srv_fail(err, 500, NULL, NULL, "out of memory");
    for (const cJSON *v = msgs->child; v; v = v->next, i++) {
        const char *role = cJSON_GetObjectItemCaseSensitive(v, "role")->valuestring;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(v, "content");
        for (size_t k = 0; k < sizeof(k_roles) / sizeof(k_roles[0]); k++)
            if (!strcmp(role, k_roles[k]))
                m[i].role = k_roles[k];
        m[i].content = cJSON_IsString(content) ? content->valuestring : "";
        if (cJSON_GetObjectItemCaseSensitive(v, "tool_calls"))
            rc = srv_fail(err, 400, "messages", NULL,
                          "messages[%d].tool_calls: the built-in %s format has no tool calls", i,
                          tok_chat_name(c->builtin));
    }
    if (!rc && tok_chat_render(c->builtin, m, n, gen, out))
        rc = srv_fail(err, 400, "messages", NULL, "the messages cannot be rendered");
    free(m);
    return rc;
}

/*
 * The generic fallback for a template that does not render tools: they
 * are described in the system message (appended to the first one, or a
 * new one first), with the generic call format server/tools.c parses.
 */
static int tools_in_system(cJSON *msgs, const cJSON *tools)
{
    struct buf b = {0};
    int rc = buf_printf(&b, "You can call the functions below. To call one or more, answer with "
                            "only this JSON: {\"tool_calls\": [{\"name\": <function name>, "
                            "\"arguments\": <an object of its arguments>}]}\n\nFunctions:");
    for (const cJSON *t = tools->child; t && !rc; t = t->next) {
        char *s = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(t, "function"));
        rc = s ? buf_printf(&b, "\n%s", s) : -ENOMEM;
        free(s);
    }
    cJSON *first = msgs->child;
    const cJSON *role = first ? cJSON_GetObjectItemCaseSensitive(first, "role") : NULL;
    const cJSON *content = first ? cJSON_GetObjectItemCaseSensitive(first, "content") : NULL;
    if (!rc && cJSON_IsString(role) && !strcmp(role->valuestring, "system") &&
        cJSON_IsString(content)) {
        struct buf t = {0};
        rc = buf_printf(&t, "%s\n\n%.*s", content->valuestring, (int)b.n, b.p);
        rc =
            rc || !cJSON_ReplaceItemInObjectCaseSensitive(first, "content", cJSON_CreateString(t.p))
                ? -ENOMEM
                : 0;
        free(t.p);
    } else if (!rc) {
        cJSON *m = cJSON_CreateObject();
        rc = buf_append(&b, "", 1);
        if (rc || !m || !cJSON_AddStringToObject(m, "role", "system") ||
            !cJSON_AddStringToObject(m, "content", b.p) || !cJSON_InsertItemInArray(msgs, 0, m)) {
            cJSON_Delete(m);
            rc = -ENOMEM;
        }
    }
    free(b.p);
    return rc;
}

int srv_chat_prompt(const struct srv_chat *c, const cJSON *root, struct buf *prompt, int *add_bos,
                    struct srv_error *err)
{
    *add_bos = 0;
    const cJSON *gen_j = cJSON_GetObjectItemCaseSensitive(root, "add_generation_prompt");
    if (gen_j && !cJSON_IsBool(gen_j))
        return srv_fail(err, 400, "add_generation_prompt", NULL,
                        "add_generation_prompt must be a boolean");
    int gen = !gen_j || cJSON_IsTrue(gen_j);
    const cJSON *cont = cJSON_GetObjectItemCaseSensitive(root, "continue_final_message");
    if (cont && !cJSON_IsFalse(cont) && !cJSON_IsNull(cont))
        return srv_fail(err, 400, "continue_final_message", NULL,
                        "continue_final_message is not supported");
    const cJSON *rt = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    if (rt && !cJSON_IsNull(rt))
        return srv_fail(err, 400, "chat_template", NULL,
                        "a chat template per request is not supported; start the server with "
                        "--chat-template FILE");
    const cJSON *kw = cJSON_GetObjectItemCaseSensitive(root, "chat_template_kwargs");
    if (kw && !cJSON_IsNull(kw) && !cJSON_IsObject(kw))
        return srv_fail(err, 400, "chat_template_kwargs", NULL,
                        "chat_template_kwargs must be an object");
    /* tool_choice "none": the model is not told about the tools */
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(root, "tool_choice");
    const cJSON *tools = cJSON_IsString(tc) && !strcmp(tc->valuestring, "none")
                             ? NULL
                             : cJSON_GetObjectItemCaseSensitive(root, "tools");
    cJSON *msgs = messages_for_template(cJSON_GetObjectItemCaseSensitive(root, "messages"), err);
    if (!msgs)
        return -1;
    int rc = 0;
    if (!c->tpl) {
        rc = render_builtin(c, msgs, gen, prompt, err);
        *add_bos = c->add_bos;
        cJSON_Delete(msgs);
        return rc;
    }
    cJSON *ctx = cJSON_CreateObject();
    if (!ctx) {
        cJSON_Delete(msgs);
        return srv_fail(err, 500, NULL, NULL, "out of memory");
    }
    for (const cJSON *k = kw && cJSON_IsObject(kw) ? kw->child : NULL; k && !rc; k = k->next) {
        if (!strcmp(k->string, "messages") || !strcmp(k->string, "tools")) {
            rc = srv_fail(err, 400, "chat_template_kwargs", NULL,
                          "chat_template_kwargs.%s: give %s as the request's own field", k->string,
                          k->string);
            break;
        }
        cJSON *d = cJSON_Duplicate(k, 1);
        if (!d || !cJSON_AddItemToObject(ctx, k->string, d))
            rc = srv_fail(err, 500, NULL, NULL, "out of memory");
    }
    if (!rc && !cJSON_GetObjectItemCaseSensitive(ctx, "add_generation_prompt"))
        cJSON_AddBoolToObject(ctx, "add_generation_prompt", gen);
    if (!rc && !cJSON_GetObjectItemCaseSensitive(ctx, "bos_token"))
        cJSON_AddStringToObject(ctx, "bos_token", c->bos);
    if (!rc && !cJSON_GetObjectItemCaseSensitive(ctx, "eos_token"))
        cJSON_AddStringToObject(ctx, "eos_token", c->eos);
    if (!rc)
        cJSON_AddItemToObject(ctx, "messages", msgs);
    else
        cJSON_Delete(msgs);
    if (!rc && cJSON_IsArray(tools) && cJSON_GetArraySize(tools) > 0) {
        cJSON *d = NULL;
        if (!tpl_uses(c->tpl, "tools")) /* a template that knows nothing of tools */
            rc = tools_in_system(cJSON_GetObjectItemCaseSensitive(ctx, "messages"), tools);
        else if (!(d = cJSON_Duplicate(tools, 1)) || !cJSON_AddItemToObject(ctx, "tools", d))
            rc = -ENOMEM;
        if (rc)
            rc = srv_fail(err, 500, NULL, NULL, "out of memory");
    }
    if (!rc) {
        char msg[480];
        int r = tpl_render(c->tpl, ctx, NULL, prompt, msg, sizeof msg);
        if (r == -EINVAL) { /* the template may want the plainer shape: try it once */
            char msg2[480];
            prompt->n = 0;
            if (plain_shape(cJSON_GetObjectItemCaseSensitive(ctx, "messages")))
                r = -ENOMEM;
            else if (!tpl_render(c->tpl, ctx, NULL, prompt, msg2, sizeof msg2))
                r = 0;
            else
                prompt->n = 0;
        }
        if (r == -ENOMEM)
            rc = srv_fail(err, 500, NULL, NULL, "out of memory");
        else if (r == -EPERM)
            rc = srv_fail(err, 400, "messages", NULL, "the chat template refused the messages: %s",
                          msg);
        else if (r)
            rc = srv_fail(err, 400, "messages", NULL,
                          "the chat template cannot render these messages: %s", msg);
    }
    cJSON_Delete(ctx);
    /* one BOS where the model wants one: the template's own, else ours */
    size_t nb = strlen(c->bos);
    *add_bos = c->add_bos && !(nb && prompt->n >= nb && !memcmp(prompt->p, c->bos, nb));
    return rc;
}

/*
 * server/responses.c - the OpenAI Responses API (POST /v1/responses) as a
 * shape over chat completions: a request is translated into the chat body
 * that runs it (and checked by the chat parser like any other), and the
 * output is written back as a response object or its event stream.
 *
 * Stateless: nothing is stored, so `store: true` and `previous_response_id`
 * are refused, as is every field whose effect cinfer cannot give (tools,
 * background runs, reasoning settings).  Fields it has never heard of are
 * ignored, as on the other routes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/srv.h"

/* A message's text: a string, or a list of input_text / output_text / text parts. */
static int content_text(const cJSON *content, int i, struct buf *out, struct srv_error *err)
{
    if (cJSON_IsString(content))
        return buf_append(out, content->valuestring, strlen(content->valuestring))
                   ? srv_fail(err, 500, NULL, NULL, "out of memory")
                   : 0;
    if (!cJSON_IsArray(content))
        return srv_fail(err, 400, "input", NULL,
                        "input[%d].content must be a string or a list of text parts", i);
    int k = 0;
    for (const cJSON *p = content->child; p; p = p->next, k++) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(p, "text");
        const char *t = cJSON_IsString(type) ? type->valuestring : "";
        if (strcmp(t, "input_text") && strcmp(t, "output_text") && strcmp(t, "text"))
            return srv_fail(err, 400, "input", NULL,
                            "input[%d].content[%d]: only text parts (input_text, output_text) are "
                            "served, not '%.40s'",
                            i, k, t);
        if (!cJSON_IsString(text))
            return srv_fail(err, 400, "input", NULL, "input[%d].content[%d].text must be a string",
                            i, k);
        if (buf_append(out, text->valuestring, strlen(text->valuestring)))
            return srv_fail(err, 500, NULL, NULL, "out of memory");
    }
    return 0;
}

/* messages[] += {"role": role, "content": text} */
static int add_message(cJSON *messages, const char *role, const char *text, size_t n,
                       struct srv_error *err)
{
    cJSON *m = cJSON_CreateObject();
    char *s = malloc(n + 1);
    if (!m || !s) {
        cJSON_Delete(m);
        free(s);
        return srv_fail(err, 500, NULL, NULL, "out of memory");
    }
    memcpy(s, text, n);
    s[n] = '\0';
    cJSON_AddStringToObject(m, "role", role);
    cJSON_AddStringToObject(m, "content", s);
    free(s);
    cJSON_AddItemToArray(messages, m);
    return 0;
}

static int parse_input(const cJSON *input, cJSON *messages, struct srv_error *err)
{
    if (cJSON_IsString(input))
        return add_message(messages, "user", input->valuestring, strlen(input->valuestring), err);
    if (!cJSON_IsArray(input) || !input->child)
        return srv_fail(err, 400, "input", NULL,
                        "input must be a string or a non-empty list of messages");
    int i = 0;
    for (const cJSON *m = input->child; m; m = m->next, i++) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(m, "type");
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsObject(m) ||
            (type && !(cJSON_IsString(type) && !strcmp(type->valuestring, "message"))))
            return srv_fail(
                err, 400, "input", NULL,
                "input[%d]: only messages are served (no function calls or other items)", i);
        const char *r = cJSON_IsString(role) ? role->valuestring : "";
        if (!strcmp(r, "developer"))
            r = "system";
        if (strcmp(r, "user") && strcmp(r, "system") && strcmp(r, "assistant"))
            return srv_fail(err, 400, "input", NULL,
                            "input[%d].role must be user, assistant, system or developer", i);
        struct buf text = {0};
        int rc = content_text(cJSON_GetObjectItemCaseSensitive(m, "content"), i, &text, err);
        rc = rc ? rc : add_message(messages, r, text.p ? text.p : "", text.n, err);
        free(text.p);
        if (rc)
            return rc;
    }
    return 0;
}

/* text.format -> response_format: text, json_object, json_schema {name, schema, strict} */
static int parse_format(const cJSON *text, cJSON *chat, struct srv_error *err)
{
    if (!text || cJSON_IsNull(text))
        return 0;
    const cJSON *f = cJSON_IsObject(text) ? cJSON_GetObjectItemCaseSensitive(text, "format") : NULL;
    if (!cJSON_IsObject(text) || (f && !cJSON_IsNull(f) && !cJSON_IsObject(f)))
        return srv_fail(err, 400, "text", NULL, "text must be an object with a format object");
    const cJSON *type = f ? cJSON_GetObjectItemCaseSensitive(f, "type") : NULL;
    const char *t = cJSON_IsString(type) ? type->valuestring : "text";
    if (!strcmp(t, "text"))
        return 0;
    cJSON *rf = cJSON_AddObjectToObject(chat, "response_format");
    if (!strcmp(t, "json_object")) {
        cJSON_AddStringToObject(rf, "type", "json_object");
        return 0;
    }
    if (strcmp(t, "json_schema"))
        return srv_fail(err, 400, "text.format.type", NULL,
                        "text.format.type must be text, json_object or json_schema");
    cJSON_AddStringToObject(rf, "type", "json_schema");
    cJSON *js = cJSON_AddObjectToObject(rf, "json_schema");
    static const char *const k_keys[] = {"name", "schema", "strict", "description"};
    for (size_t i = 0; i < sizeof(k_keys) / sizeof(k_keys[0]); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(f, k_keys[i]);
        if (v)
            cJSON_AddItemToObject(js, k_keys[i], cJSON_Duplicate(v, 1));
    }
    return 0;
}

/* A field that is refused unless absent, null, or (when `empty_ok`) false / empty. */
static int refuse(const cJSON *root, const char *key, const char *why, struct srv_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v) || cJSON_IsFalse(v) || (cJSON_IsArray(v) && !v->child))
        return 0;
    return srv_fail(err, 400, key, NULL, "%s: %s", key, why);
}

cJSON *srv_resp_translate(const cJSON *root, cJSON **echo, struct srv_error *err)
{
    *echo = NULL;
    int rc = refuse(root, "store", "this server keeps no responses; send store: false", err);
    rc = rc ? rc
            : refuse(root, "previous_response_id",
                     "this server keeps no responses; send the whole conversation as input", err);
    rc = rc ? rc
            : refuse(root, "tools",
                     "tools are not served on /v1/responses; use /v1/chat/completions", err);
    rc = rc ? rc : refuse(root, "background", "background responses are not supported", err);
    rc = rc ? rc : refuse(root, "conversation", "this server keeps no conversations", err);
    rc = rc ? rc : refuse(root, "prompt", "stored prompts are not supported", err);
    rc = rc ? rc : refuse(root, "include", "no extra output items can be included", err);
    rc = rc ? rc : refuse(root, "top_logprobs", "log-probabilities are not served here", err);
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(root, "tool_choice");
    if (!rc && tc && !cJSON_IsNull(tc) &&
        !(cJSON_IsString(tc) &&
          (!strcmp(tc->valuestring, "none") || !strcmp(tc->valuestring, "auto"))))
        rc = srv_fail(err, 400, "tool_choice", NULL, "tool_choice: no tools are served here");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "reasoning");
    if (!rc && rs && !cJSON_IsNull(rs)) {
        int empty = cJSON_IsObject(rs);
        for (const cJSON *v = empty ? rs->child : NULL; v; v = v->next)
            empty = empty && cJSON_IsNull(v);
        if (!empty)
            rc = srv_fail(err, 400, "reasoning", NULL, "reasoning settings are not supported");
    }
    const cJSON *tr = cJSON_GetObjectItemCaseSensitive(root, "truncation");
    if (!rc && tr && !cJSON_IsNull(tr) &&
        !(cJSON_IsString(tr) && !strcmp(tr->valuestring, "disabled")))
        rc = srv_fail(err, 400, "truncation", NULL,
                      "truncation: only \"disabled\" is served (a prompt too long is a 400)");
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(root, "metadata");
    if (!rc && md && !cJSON_IsNull(md)) {
        int ok = cJSON_IsObject(md) && cJSON_GetArraySize(md) <= 16;
        for (const cJSON *v = ok ? md->child : NULL; v; v = v->next)
            ok = ok && cJSON_IsString(v) && strlen(v->string) <= 64 && strlen(v->valuestring) <= 512;
        if (!ok)
            rc = srv_fail(err, 400, "metadata", NULL,
                          "metadata must be an object of at most 16 strings (keys up to 64 "
                          "characters, values up to 512)");
    }
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(root, "input");
    const cJSON *instr = cJSON_GetObjectItemCaseSensitive(root, "instructions");
    if (!rc && (!input || cJSON_IsNull(input)))
        rc = srv_fail(err, 400, "input", NULL, "input is required");
    if (!rc && instr && !cJSON_IsNull(instr) && !cJSON_IsString(instr))
        rc = srv_fail(err, 400, "instructions", NULL, "instructions must be a string");
    if (rc)
        return NULL;
    cJSON *chat = cJSON_CreateObject();
    cJSON *messages = cJSON_AddArrayToObject(chat, "messages");
    if (cJSON_IsString(instr))
        rc = add_message(messages, "system", instr->valuestring, strlen(instr->valuestring), err);
    rc = rc ? rc : parse_input(input, messages, err);
    rc = rc ? rc : parse_format(cJSON_GetObjectItemCaseSensitive(root, "text"), chat, err);
    /* the fields chat has under the same name, or another */
    static const char *const k_same[][2] = {
        {"model", "model"},
        {"temperature", "temperature"},
        {"top_p", "top_p"},
        {"stream", "stream"},
        {"max_output_tokens", "max_completion_tokens"},
        {"user", "user"},
        {"service_tier", "service_tier"},
        {"parallel_tool_calls", ""},
        {"metadata", ""},
    };
    for (size_t i = 0; !rc && i < sizeof(k_same) / sizeof(k_same[0]); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, k_same[i][0]);
        if (v && *k_same[i][1])
            cJSON_AddItemToObject(chat, k_same[i][1], cJSON_Duplicate(v, 1));
    }
    cJSON *so = rc ? NULL : cJSON_AddObjectToObject(chat, "stream_options");
    if (so) /* usage goes in response.completed */
        cJSON_AddBoolToObject(so, "include_usage", 1);
    if (rc) {
        cJSON_Delete(chat);
        return NULL;
    }
    /* what the response object repeats */
    cJSON *e = cJSON_CreateObject();
    static const char *const k_echo[] = {"instructions", "max_output_tokens", "temperature",
                                         "top_p",        "metadata",          "user"};
    for (size_t i = 0; i < sizeof(k_echo) / sizeof(k_echo[0]); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, k_echo[i]);
        if (v)
            cJSON_AddItemToObject(e, k_echo[i], cJSON_Duplicate(v, 1));
    }
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(root, "text");
    if (cJSON_IsObject(text))
        cJSON_AddItemToObject(e, "text", cJSON_Duplicate(text, 1));
    *echo = e;
    return chat;
}

void srv_resp_param(struct srv_error *err)
{
    static const char *const k_map[][2] = {{"messages", "input"},
                                           {"max_completion_tokens", "max_output_tokens"},
                                           {"max_tokens", "max_output_tokens"},
                                           {"response_format", "text.format"}};
    for (size_t i = 0; i < sizeof(k_map) / sizeof(k_map[0]); i++)
        if (!strcmp(err->param, k_map[i][0])) {
            snprintf(err->param, sizeof(err->param), "%s", k_map[i][1]);
            return;
        }
}

/* o[key] = the echo's value, or `def` (taken; NULL: null) */
static void echo_field(cJSON *o, const cJSON *echo, const char *key, cJSON *def)
{
    const cJSON *v = echo ? cJSON_GetObjectItemCaseSensitive(echo, key) : NULL;
    if (v) {
        cJSON_AddItemToObject(o, key, cJSON_Duplicate(v, 1));
        cJSON_Delete(def);
    } else {
        cJSON_AddItemToObject(o, key, def ? def : cJSON_CreateNull());
    }
}

cJSON *srv_resp_object(const struct srv_resp *r, const char *status, const char *text, size_t n,
                       const char *error)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", r->id);
    cJSON_AddStringToObject(o, "object", "response");
    cJSON_AddNumberToObject(o, "created_at", (double)r->created);
    cJSON_AddStringToObject(o, "status", status);
    if (error) {
        cJSON *e = cJSON_AddObjectToObject(o, "error");
        cJSON_AddStringToObject(e, "code", "server_error");
        cJSON_AddStringToObject(e, "message", error);
    } else {
        cJSON_AddNullToObject(o, "error");
    }
    if (!strcmp(status, "incomplete"))
        cJSON_AddStringToObject(cJSON_AddObjectToObject(o, "incomplete_details"), "reason",
                                "max_output_tokens");
    else
        cJSON_AddNullToObject(o, "incomplete_details");
    echo_field(o, r->echo, "instructions", NULL);
    echo_field(o, r->echo, "max_output_tokens", NULL);
    cJSON_AddStringToObject(o, "model", r->model);
    cJSON *out = cJSON_AddArrayToObject(o, "output");
    if (text) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddItemToArray(out, m);
        cJSON_AddStringToObject(m, "type", "message");
        cJSON_AddStringToObject(m, "id", r->msg_id);
        cJSON_AddStringToObject(m, "status",
                                !strcmp(status, "in_progress") ? "in_progress"
                                : !strcmp(status, "completed") ? "completed"
                                                               : "incomplete");
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON *parts = cJSON_AddArrayToObject(m, "content");
        cJSON *p = cJSON_CreateObject();
        cJSON_AddItemToArray(parts, p);
        cJSON_AddStringToObject(p, "type", "output_text");
        char *clean = srv_utf8_dup(text, n);
        cJSON_AddStringToObject(p, "text", clean ? clean : "");
        free(clean);
        cJSON_AddArrayToObject(p, "annotations");
    }
    cJSON_AddBoolToObject(o, "parallel_tool_calls", 1);
    echo_field(o, r->echo, "temperature", cJSON_CreateNumber(1));
    cJSON_AddStringToObject(o, "tool_choice", "auto");
    cJSON_AddArrayToObject(o, "tools");
    echo_field(o, r->echo, "top_p", cJSON_CreateNumber(1));
    cJSON *reasoning = cJSON_AddObjectToObject(o, "reasoning");
    cJSON_AddNullToObject(reasoning, "effort");
    cJSON_AddNullToObject(reasoning, "summary");
    cJSON_AddBoolToObject(o, "store", 0);
    cJSON *fmt = cJSON_CreateObject();
    cJSON_AddStringToObject(cJSON_AddObjectToObject(fmt, "format"), "type", "text");
    echo_field(o, r->echo, "text", fmt);
    cJSON_AddStringToObject(o, "truncation", "disabled");
    echo_field(o, r->echo, "metadata", cJSON_CreateObject());
    echo_field(o, r->echo, "user", NULL);
    cJSON_AddNullToObject(o, "previous_response_id");
    if (!strcmp(status, "in_progress")) {
        cJSON_AddNullToObject(o, "usage");
    } else {
        cJSON *u = cJSON_AddObjectToObject(o, "usage");
        cJSON_AddNumberToObject(u, "input_tokens", r->input_tokens);
        cJSON_AddNumberToObject(cJSON_AddObjectToObject(u, "input_tokens_details"), "cached_tokens",
                                r->cached_tokens);
        cJSON_AddNumberToObject(u, "output_tokens", r->output_tokens);
        cJSON_AddNumberToObject(cJSON_AddObjectToObject(u, "output_tokens_details"),
                                "reasoning_tokens", 0);
        cJSON_AddNumberToObject(u, "total_tokens", r->input_tokens + r->output_tokens);
    }
    return o;
}

int srv_resp_event(struct buf *out, const char *type, int *seq, cJSON *o)
{
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "type", type);
    cJSON_AddNumberToObject(e, "sequence_number", (*seq)++);
    if (o) { /* o's members after type and sequence_number */
        for (cJSON *c = o->child; c;) {
            cJSON *next = c->next;
            cJSON_AddItemToObject(e, c->string, cJSON_DetachItemViaPointer(o, c));
            c = next;
        }
        cJSON_Delete(o);
    }
    char *s = cJSON_PrintUnformatted(e);
    cJSON_Delete(e);
    if (!s)
        return -1;
    int rc = buf_printf(out, "event: %s\ndata: %s\n\n", type, s);
    free(s);
    return rc;
}

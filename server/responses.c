/*
 * server/responses.c - the OpenAI Responses API (POST /v1/responses) as a
 * shape over chat completions: a request is translated into the chat body
 * that runs it (and checked by the chat parser like any other), and the
 * output is written back as a response object or its event stream.
 *
 * Stateless: nothing is stored, so `store: true` and `previous_response_id`
 * are refused, as is every field whose effect cinfer cannot give (built-in
 * tools, background runs, reasoning settings).  Function tools map to chat's
 * tools; function_call and function_call_output input items to the
 * assistant's tool_calls and tool messages.  Fields it has never heard of
 * are ignored, as on the other routes.
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

/* A string member of an input item, or NULL with a 400. */
static const char *item_str(const cJSON *m, const char *key, int i, struct srv_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, key);
    if (cJSON_IsString(v))
        return v->valuestring;
    srv_fail(err, 400, "input", NULL, "input[%d].%s must be a string", i, key);
    return NULL;
}

/*
 * A function_call item: a tool call of the assistant message before it
 * (one made for it when the item before is not the assistant's); a
 * function_call_output item: a tool message answering it.
 */
static int add_call_item(const cJSON *m, int output, int i, cJSON *messages, struct srv_error *err)
{
    const char *call_id = item_str(m, "call_id", i, err);
    if (!call_id)
        return -1;
    if (output) {
        const char *out = item_str(m, "output", i, err);
        if (!out)
            return -1;
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "role", "tool");
        cJSON_AddStringToObject(t, "tool_call_id", call_id);
        cJSON_AddStringToObject(t, "content", out);
        cJSON_AddItemToArray(messages, t);
        return 0;
    }
    const char *name = item_str(m, "name", i, err);
    const char *args = name ? item_str(m, "arguments", i, err) : NULL;
    if (!args)
        return -1;
    cJSON *last = cJSON_GetArrayItem(messages, cJSON_GetArraySize(messages) - 1);
    const cJSON *role = last ? cJSON_GetObjectItemCaseSensitive(last, "role") : NULL;
    if (!(cJSON_IsString(role) && !strcmp(role->valuestring, "assistant"))) {
        last = cJSON_CreateObject();
        cJSON_AddStringToObject(last, "role", "assistant");
        cJSON_AddNullToObject(last, "content");
        cJSON_AddItemToArray(messages, last);
    }
    cJSON *calls = cJSON_GetObjectItemCaseSensitive(last, "tool_calls");
    if (!calls)
        calls = cJSON_AddArrayToObject(last, "tool_calls");
    cJSON *c = cJSON_CreateObject(), *f;
    cJSON_AddStringToObject(c, "id", call_id);
    cJSON_AddStringToObject(c, "type", "function");
    f = cJSON_AddObjectToObject(c, "function");
    cJSON_AddStringToObject(f, "name", name);
    cJSON_AddStringToObject(f, "arguments", args);
    cJSON_AddItemToArray(calls, c);
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
        const char *t = cJSON_IsString(type) ? type->valuestring : NULL;
        if (cJSON_IsObject(m) && t &&
            (!strcmp(t, "function_call") || !strcmp(t, "function_call_output"))) {
            if (add_call_item(m, !strcmp(t, "function_call_output"), i, messages, err))
                return -1;
            continue;
        }
        if (!cJSON_IsObject(m) || (type && !(t && !strcmp(t, "message"))))
            return srv_fail(err, 400, "input", NULL,
                            "input[%d]: only messages, function_call and function_call_output "
                            "items are served",
                            i);
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

/* tools: function tools {type, name, description, parameters, strict} as chat's */
static int parse_tools(const cJSON *root, cJSON *chat, struct srv_error *err)
{
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(root, "tool_choice");
    if (tools && !cJSON_IsNull(tools)) {
        if (!cJSON_IsArray(tools))
            return srv_fail(err, 400, "tools", NULL, "tools must be an array of function tools");
        cJSON *list = cJSON_AddArrayToObject(chat, "tools");
        int i = 0;
        for (const cJSON *t = tools->child; t; t = t->next, i++) {
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(t, "type");
            if (!cJSON_IsObject(t) || !cJSON_IsString(type) ||
                strcmp(type->valuestring, "function"))
                return srv_fail(err, 400, "tools", NULL,
                                "tools[%d]: only function tools are served (no built-in tools)", i);
            cJSON *c = cJSON_CreateObject(), *f;
            cJSON_AddStringToObject(c, "type", "function");
            f = cJSON_AddObjectToObject(c, "function");
            static const char *const k_keys[] = {"name", "description", "parameters", "strict"};
            for (size_t k = 0; k < sizeof(k_keys) / sizeof(k_keys[0]); k++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, k_keys[k]);
                if (v && !cJSON_IsNull(v))
                    cJSON_AddItemToObject(f, k_keys[k], cJSON_Duplicate(v, 1));
            }
            cJSON_AddItemToArray(list, c);
        }
    }
    if (tc && !cJSON_IsNull(tc)) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(tc, "type");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(tc, "name");
        if (cJSON_IsString(tc)) {
            cJSON_AddItemToObject(chat, "tool_choice", cJSON_Duplicate(tc, 1));
        } else if (cJSON_IsObject(tc) && cJSON_IsString(type) &&
                   !strcmp(type->valuestring, "function") && cJSON_IsString(name)) {
            cJSON *c = cJSON_AddObjectToObject(chat, "tool_choice");
            cJSON_AddStringToObject(c, "type", "function");
            cJSON_AddStringToObject(cJSON_AddObjectToObject(c, "function"), "name",
                                    name->valuestring);
        } else {
            return srv_fail(err, 400, "tool_choice", NULL,
                            "tool_choice must be auto, none, required or {\"type\": "
                            "\"function\", \"name\": ...}");
        }
    }
    const cJSON *ptc = cJSON_GetObjectItemCaseSensitive(root, "parallel_tool_calls");
    if (ptc)
        cJSON_AddItemToObject(chat, "parallel_tool_calls", cJSON_Duplicate(ptc, 1));
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
    rc = rc ? rc : refuse(root, "background", "background responses are not supported", err);
    rc = rc ? rc : refuse(root, "conversation", "this server keeps no conversations", err);
    rc = rc ? rc : refuse(root, "prompt", "stored prompts are not supported", err);
    rc = rc ? rc : refuse(root, "include", "no extra output items can be included", err);
    rc = rc ? rc : refuse(root, "top_logprobs", "log-probabilities are not served here", err);
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
            ok =
                ok && cJSON_IsString(v) && strlen(v->string) <= 64 && strlen(v->valuestring) <= 512;
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
    rc = rc ? rc : parse_tools(root, chat, err);
    /* the fields chat has under the same name, or another */
    static const char *const k_same[][2] = {
        {"model", "model"},
        {"temperature", "temperature"},
        {"top_p", "top_p"},
        {"stream", "stream"},
        {"max_output_tokens", "max_completion_tokens"},
        {"user", "user"},
        {"service_tier", "service_tier"},
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
    static const char *const k_echo_any[] = {"text", "tools", "tool_choice", "parallel_tool_calls"};
    for (size_t i = 0; i < sizeof(k_echo_any) / sizeof(k_echo_any[0]); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, k_echo_any[i]);
        if (v && !cJSON_IsNull(v))
            cJSON_AddItemToObject(e, k_echo_any[i], cJSON_Duplicate(v, 1));
    }
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

/* An output_text content part. */
cJSON *srv_resp_text_part(const char *text)
{
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "type", "output_text");
    cJSON_AddStringToObject(p, "text", text);
    cJSON_AddArrayToObject(p, "annotations");
    return p;
}

/* A message output item: {type, id, status, role, content [output_text]}. */
cJSON *srv_resp_message_item(const char *id, const char *text, const char *status)
{
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "type", "message");
    cJSON_AddStringToObject(m, "id", id);
    cJSON_AddStringToObject(m, "status", status);
    cJSON_AddStringToObject(m, "role", "assistant");
    cJSON *parts = cJSON_AddArrayToObject(m, "content");
    if (text)
        cJSON_AddItemToArray(parts, srv_resp_text_part(text));
    return m;
}

/* A reasoning output item: {type, id, summary [], content [reasoning_text], status}. */
cJSON *srv_resp_reasoning_item(const char *id, const char *text, const char *status)
{
    cJSON *it = cJSON_CreateObject();
    cJSON_AddStringToObject(it, "type", "reasoning");
    cJSON_AddStringToObject(it, "id", id);
    cJSON_AddArrayToObject(it, "summary");
    cJSON *content = cJSON_AddArrayToObject(it, "content");
    if (text) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddStringToObject(p, "type", "reasoning_text");
        cJSON_AddStringToObject(p, "text", text);
        cJSON_AddItemToArray(content, p);
    }
    cJSON_AddStringToObject(it, "status", status);
    return it;
}

/* A tool call of a chat message as a function_call output item (id fc_ + the call's suffix). */
cJSON *srv_resp_call_item(const char *call_id, const char *name, const char *args,
                          const char *status)
{
    cJSON *it = cJSON_CreateObject();
    char id[80];
    snprintf(id, sizeof(id), "fc_%s", !strncmp(call_id, "call_", 5) ? call_id + 5 : call_id);
    cJSON_AddStringToObject(it, "type", "function_call");
    cJSON_AddStringToObject(it, "id", id);
    cJSON_AddStringToObject(it, "call_id", call_id);
    cJSON_AddStringToObject(it, "name", name);
    cJSON_AddStringToObject(it, "arguments", args);
    cJSON_AddStringToObject(it, "status", status);
    return it;
}

cJSON *srv_resp_object(const struct srv_resp *r, const char *status, const cJSON *msg,
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
    const cJSON *content = msg ? cJSON_GetObjectItemCaseSensitive(msg, "content") : NULL;
    const cJSON *calls = msg ? cJSON_GetObjectItemCaseSensitive(msg, "tool_calls") : NULL;
    const char *item_status = !strcmp(status, "in_progress") ? "in_progress"
                              : !strcmp(status, "completed") ? "completed"
                                                             : "incomplete";
    /* the reasoning first, then the message (unless it is only tool calls), then the calls */
    const cJSON *reasoning =
        msg ? cJSON_GetObjectItemCaseSensitive(msg, "reasoning_content") : NULL;
    if (cJSON_IsString(reasoning) && *reasoning->valuestring)
        cJSON_AddItemToArray(
            out, srv_resp_reasoning_item(r->rs_id, reasoning->valuestring, item_status));
    int thought = cJSON_IsString(reasoning) && *reasoning->valuestring;
    if (msg && (cJSON_IsString(content) && *content->valuestring ? 1 : !calls && !thought))
        cJSON_AddItemToArray(
            out, srv_resp_message_item(
                     r->msg_id, cJSON_IsString(content) ? content->valuestring : "", item_status));
    for (const cJSON *c = calls ? calls->child : NULL; c; c = c->next) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(c, "function");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(c, "id");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(f, "name");
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(f, "arguments");
        cJSON_AddItemToArray(out, srv_resp_call_item(cJSON_IsString(id) ? id->valuestring : "",
                                                     cJSON_IsString(name) ? name->valuestring : "",
                                                     cJSON_IsString(args) ? args->valuestring : "",
                                                     item_status));
    }
    echo_field(o, r->echo, "parallel_tool_calls", cJSON_CreateTrue());
    echo_field(o, r->echo, "temperature", cJSON_CreateNumber(1));
    echo_field(o, r->echo, "tool_choice", cJSON_CreateString("auto"));
    echo_field(o, r->echo, "tools", cJSON_CreateArray());
    echo_field(o, r->echo, "top_p", cJSON_CreateNumber(1));
    cJSON *settings = cJSON_AddObjectToObject(o, "reasoning");
    cJSON_AddNullToObject(settings, "effort");
    cJSON_AddNullToObject(settings, "summary");
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
                                "reasoning_tokens", r->reasoning_tokens);
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

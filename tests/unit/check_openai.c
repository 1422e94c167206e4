/*
 * tests/unit/check_openai.c - OpenAI request validation (server/openai.c)
 * against the default model's engine: every field of the wrong type or out
 * of range is a 400 whose param names it; a good request parses into what
 * the engine is given (prompts, n, sampling settings, stop strings); and a
 * job's non-streamed answer has the shape the SDK parses.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/srv.h"
#include "tests/unit/suites.h"

static struct engine *g_e;
static struct srv_chat g_chat;
static struct srv_model k_model = {.id = "m", .alias = "alias", .created = 1};

static void setup(void)
{
    char err[512];
    struct eng_config cfg = {.threads = 1, .ctx = 256, .kv_memory_mib = 8};
    ck_assert_msg(eng_create(test_model_path(), &cfg, &g_e, err, sizeof(err)) == 0, "%s", err);
    ck_assert_msg(srv_chat_load(&g_chat, g_e, NULL, err, sizeof(err)) == 0, "%s", err);
    k_model.chat = &g_chat;
}

static void teardown(void)
{
    srv_chat_free(&g_chat);
    k_model.chat = NULL;
    eng_destroy(g_e);
    g_e = NULL;
}

/* Parses body; returns the error's status (0 when it parsed) and its param in param. */
static unsigned parse_on(struct engine *e, enum srv_kind kind, const char *body,
                         struct srv_request *r, char *param)
{
    struct srv_error err;
    memset(&err, 0, sizeof(err));
    int rc = srv_parse_request(kind, body, strlen(body), e, &k_model, r, &err);
    if (param)
        snprintf(param, 64, "%s", rc ? err.param : "");
    if (rc)
        ck_assert_msg(err.message[0] && err.type, "an error without a message or type: %s", body);
    return rc ? err.status : 0;
}

static unsigned parse(enum srv_kind kind, const char *body, struct srv_request *r, char *param)
{
    return parse_on(g_e, kind, body, r, param);
}

struct bad {
    enum srv_kind kind;
    const char *body;
    unsigned status;
    const char *param;
};

#define C SRV_COMPLETION
#define H SRV_CHAT
#define P "\"prompt\": \"Hi\""
#define M "\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]"

static const struct bad k_bad[] = {
    {C, "{" P ", \"temperature\": \"hot\"}", 400, "temperature"},
    {C, "{" P ", \"temperature\": 2.5}", 400, "temperature"},
    {C, "{" P ", \"temperature\": -0.1}", 400, "temperature"},
    {C, "{" P ", \"top_p\": 0}", 400, "top_p"},
    {C, "{" P ", \"top_p\": 1.01}", 400, "top_p"},
    {C, "{" P ", \"top_k\": 1.5}", 400, "top_k"},
    {C, "{" P ", \"top_k\": \"many\"}", 400, "top_k"},
    {C, "{" P ", \"min_p\": 2}", 400, "min_p"},
    {C, "{" P ", \"presence_penalty\": 3}", 400, "presence_penalty"},
    {C, "{" P ", \"frequency_penalty\": -2.5}", 400, "frequency_penalty"},
    {C, "{" P ", \"repetition_penalty\": 0}", 400, "repetition_penalty"},
    {C, "{" P ", \"n\": 0}", 400, "n"},
    {C, "{" P ", \"n\": 17}", 400, "n"},
    {C, "{" P ", \"n\": \"2\"}", 400, "n"},
    {C, "{" P ", \"seed\": \"x\"}", 400, "seed"},
    {C, "{" P ", \"max_tokens\": 0}", 400, "max_tokens"},
    {C, "{" P ", \"max_tokens\": 1.5}", 400, "max_tokens"},
    {C, "{" P ", \"max_tokens\": 300}", 400, "max_tokens"}, /* past the 256 context */
    {H, "{" M ", \"max_completion_tokens\": -1}", 400, "max_completion_tokens"},
    {C, "{" P ", \"stream\": \"yes\"}", 400, "stream"},
    {C, "{" P ", \"stream_options\": 1}", 400, "stream_options"},
    {C, "{" P ", \"stream_options\": {\"include_usage\": 1}}", 400, "stream_options.include_usage"},
    {C, "{" P ", \"ignore_eos\": 1}", 400, "ignore_eos"},
    {C, "{" P ", \"echo\": \"no\"}", 400, "echo"},
    {C, "{" P ", \"logprobs\": 21}", 400, "logprobs"},
    {C, "{" P ", \"logprobs\": true}", 400, "logprobs"},
    {H, "{" M ", \"logprobs\": 1}", 400, "logprobs"},
    {H, "{" M ", \"top_logprobs\": 21}", 400, "top_logprobs"},
    {C, "{" P ", \"user\": 7}", 400, "user"},
    {C, "{" P ", \"stop\": 7}", 400, "stop"},
    {C, "{" P ", \"stop\": [\"a\", 1]}", 400, "stop"},
    {C,
     "{" P
     ", \"stop\": [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\",\"12\","
     "\"13\",\"14\",\"15\",\"16\",\"17\"]}",
     400, "stop"},
    {C, "{" P ", \"logit_bias\": {\"x\": 1}}", 400, "logit_bias"},
    {C, "{" P ", \"logit_bias\": {\"1\": 101}}", 400, "logit_bias"},
    {C, "{" P ", \"logit_bias\": {\"99999999\": 1}}", 400, "logit_bias"},
    {C, "{" P ", \"model\": 3}", 400, "model"},
    {C, "{" P ", \"model\": \"other\"}", 404, "model"},
    {C, "{}", 400, "prompt"},
    {C, "{\"prompt\": []}", 400, "prompt"},
    {C, "{\"prompt\": [1, \"a\"]}", 400, "prompt"},
    {C, "{\"prompt\": [-1]}", 400, "prompt"},
    {C, "{\"prompt\": [[1], \"a\"]}", 400, "prompt"},
    {H, "{}", 400, "messages"},
    {H, "{\"messages\": []}", 400, "messages"},
    {H, "{\"messages\": [{\"role\": \"wizard\", \"content\": \"Hi\"}]}", 400, "messages[0].role"},
    {H, "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", 400, "messages[0].content"},
    {H, "{\"messages\": [{\"role\": \"user\"}], \"max_tokens\": 2}", 400, "messages"},
    {C, "[1, 2]", 400, ""},
    {C, "{\"prompt\": \"Hi\"} trailing", 400, ""},
};

START_TEST(each_bad_field_is_a_400_naming_it)
{
    const struct bad *b = &k_bad[_i];
    struct srv_request r;
    char param[64];
    unsigned st = parse(b->kind, b->body, &r, param);
    srv_request_free(&r);
    ck_assert_msg(st == b->status && !strcmp(param, b->param),
                  "%s: status %u param '%s', wanted %u '%s'", b->body, st, param, b->status,
                  b->param);
}
END_TEST

START_TEST(a_good_request_parses_into_its_settings)
{
    struct srv_request r;
    const char *body = "{\"model\": \"alias\", \"prompt\": [[7, 8], [1, 2, 3]], \"n\": 3, "
                       "\"max_tokens\": 5, \"temperature\": 0.5, \"top_p\": 0.9, \"top_k\": 7, "
                       "\"seed\": 42, \"stop\": \"\\n\", \"logprobs\": 2, \"echo\": true, "
                       "\"stream\": true, \"stream_options\": {\"include_usage\": true}, "
                       "\"logit_bias\": {\"5\": -100}, \"user\": \"u\"}";
    ck_assert_uint_eq(parse(C, body, &r, NULL), 0);
    ck_assert_str_eq(r.model, "alias");
    ck_assert_int_eq(r.n_prompts, 2);
    ck_assert_int_eq(r.n, 3);
    ck_assert_int_eq(r.n_prompt[1], 3);
    ck_assert_int_eq(r.prompts[1][2], 3);
    ck_assert_int_eq(r.n_prompt[0], 2);
    ck_assert_int_eq(r.prompts[0][1], 8);
    ck_assert_int_eq(r.p.max_tokens, 5);
    ck_assert(r.p.sp.temperature == 0.5f && r.p.sp.top_p == 0.9f && r.p.sp.top_k == 7);
    ck_assert_uint_eq(r.p.sp.seed, 42);
    ck_assert_int_eq(r.p.n_stop, 1);
    ck_assert_str_eq(r.stop[0], "\n");
    ck_assert(r.p.logprobs && r.top_logprobs == 2 && r.echo && r.stream && r.include_usage);
    ck_assert_int_eq(r.p.sp.n_bias, 1);
    srv_request_free(&r);
    /* chat: the default length is the rest of the context; completions: 16 */
    ck_assert_uint_eq(parse(H, "{" M "}", &r, NULL), 0);
    ck_assert_int_eq(r.p.max_tokens, 256);
    ck_assert_int_eq(r.max_tokens_given, 0);
    srv_request_free(&r);
    ck_assert_uint_eq(parse(C, "{" P "}", &r, NULL), 0);
    ck_assert_int_eq(r.p.max_tokens, 16);
    srv_request_free(&r);
}
END_TEST

/* Runs a request to its end on e and returns the non-streamed answer as JSON. */
static cJSON *answer(struct engine *e, enum srv_kind kind, const char *body, int *status)
{
    struct srv_request r;
    ck_assert_uint_eq(parse_on(e, kind, body, &r, NULL), 0);
    struct srv_job *j;
    struct srv_error err;
    ck_assert_int_eq(srv_job_start(e, &k_model, &r, NULL, &j, &err), 0);
    struct buf out = {0};
    int rc;
    while ((rc = srv_job_pump(j, &out, 100)) != SRV_JOB_DONE)
        ck_assert_int_ge(rc, 0);
    *status = srv_job_status(j);
    srv_job_free(j);
    cJSON *o = cJSON_ParseWithLength(out.p, out.n);
    ck_assert_msg(o != NULL, "not JSON: %.*s", (int)out.n, out.p);
    free(out.p);
    return o;
}

START_TEST(non_streamed_answers_have_the_sdk_shape)
{
    /* the fixture's engine thread stays in the parent process: this test needs its own */
    char emsg[512];
    struct eng_config cfg = {.threads = 1, .ctx = 256, .kv_memory_mib = 8};
    struct engine *e;
    ck_assert_msg(eng_create(test_model_path(), &cfg, &e, emsg, sizeof(emsg)) == 0, "%s", emsg);
    int st;
    cJSON *o = answer(e, C,
                      "{\"prompt\": \"The capital of France is\", \"max_tokens\": 3, "
                      "\"temperature\": 0, \"n\": 2, \"logprobs\": 2, \"ignore_eos\": true}",
                      &st);
    ck_assert_int_eq(st, 200);
    ck_assert_str_eq(cJSON_GetObjectItem(o, "object")->valuestring, "text_completion");
    const cJSON *ch = cJSON_GetObjectItem(o, "choices");
    ck_assert_int_eq(cJSON_GetArraySize(ch), 2);
    for (int i = 0; i < 2; i++) {
        const cJSON *c = cJSON_GetArrayItem(ch, i);
        ck_assert_int_eq(cJSON_GetObjectItem(c, "index")->valueint, i);
        ck_assert_str_eq(cJSON_GetObjectItem(c, "finish_reason")->valuestring, "length");
        const cJSON *lp = cJSON_GetObjectItem(c, "logprobs");
        ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(lp, "tokens")), 3);
        ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(lp, "token_logprobs")), 3);
        const cJSON *top = cJSON_GetObjectItem(lp, "top_logprobs");
        ck_assert_int_eq(cJSON_GetArraySize(top), 3);
        ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetArrayItem(top, 0)), 2);
        ck_assert_int_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "text_offset"), 0)->valueint,
                         0);
    }
    const cJSON *u = cJSON_GetObjectItem(o, "usage");
    ck_assert_int_eq(cJSON_GetObjectItem(u, "completion_tokens")->valueint, 6);
    ck_assert_int_eq(cJSON_GetObjectItem(u, "total_tokens")->valueint,
                     cJSON_GetObjectItem(u, "prompt_tokens")->valueint + 6);
    cJSON_Delete(o);
    o = answer(e, H,
               "{" M ", \"max_tokens\": 2, \"temperature\": 0, \"logprobs\": true, "
               "\"top_logprobs\": 1, \"ignore_eos\": true}",
               &st);
    ck_assert_str_eq(cJSON_GetObjectItem(o, "object")->valuestring, "chat.completion");
    const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    const cJSON *msg = cJSON_GetObjectItem(c, "message");
    ck_assert_str_eq(cJSON_GetObjectItem(msg, "role")->valuestring, "assistant");
    ck_assert(cJSON_IsString(cJSON_GetObjectItem(msg, "content")));
    const cJSON *content = cJSON_GetObjectItem(cJSON_GetObjectItem(c, "logprobs"), "content");
    ck_assert_int_eq(cJSON_GetArraySize(content), 2);
    const cJSON *t0 = cJSON_GetArrayItem(content, 0);
    ck_assert(cJSON_IsString(cJSON_GetObjectItem(t0, "token")));
    ck_assert(cJSON_IsArray(cJSON_GetObjectItem(t0, "bytes")));
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(t0, "top_logprobs")), 1);
    cJSON_Delete(o);
    eng_destroy(e);
}
END_TEST

/* Everything one parse released, as "C:content|R:reasoning|name=args;..." */
static char *split_all(enum srv_tool_fmt fmt, int think_open, int forced, const char *text,
                       size_t step)
{
    int n_calls = 0;
    char *names[] = {"get_weather", "get_time"};
    struct srv_request r = {.tool_mode = forced ? SRV_TOOL_REQUIRED : SRV_TOOL_AUTO,
                            .tool_fmt = fmt,
                            .parallel_tool_calls = 1,
                            .reasoning = 1,
                            .think_open = think_open,
                            .tool_names = names,
                            .n_tool_names = 2};
    struct srv_outp p;
    srv_outp_init(&p, &r);
    struct buf content = {0}, reasoning = {0}, calls = {0};
    size_t n = strlen(text);
    for (size_t at = 0; at <= n; at += step) {
        struct srv_outp_out o = {0};
        size_t k = at + step <= n ? step : n - at;
        ck_assert_int_eq(srv_outp_feed(&p, text + at, k, &o), 0);
        if (at + step > n)
            ck_assert_int_eq(srv_outp_finish(&p, &o), 0);
        buf_append(&content, o.content.p ? o.content.p : "", o.content.n);
        buf_append(&reasoning, o.reasoning.p ? o.reasoning.p : "", o.reasoning.n);
        for (const cJSON *c = o.calls ? o.calls->child : NULL; c; c = c->next) {
            const cJSON *name = cJSON_GetObjectItem(c, "name");
            const cJSON *args = cJSON_GetObjectItem(c, "arguments");
            if (name)
                buf_printf(&calls, "%s%s=", n_calls++ ? ";" : "", name->valuestring);
            if (args)
                buf_printf(&calls, "%s", args->valuestring);
        }
        srv_outp_out_free(&o);
    }
    if (n_calls)
        buf_printf(&calls, ";");
    struct buf all = {0};
    buf_printf(&all, "C:%.*s|R:%.*s|%.*s", (int)content.n, content.p ? content.p : "",
               (int)reasoning.n, reasoning.p ? reasoning.p : "", (int)calls.n,
               calls.p ? calls.p : "");
    free(content.p), free(reasoning.p), free(calls.p);
    srv_outp_free(&p);
    return all.p;
}

START_TEST(output_splits_the_same_however_the_text_arrives)
{
    static const struct {
        enum srv_tool_fmt fmt;
        int think_open, forced;
        const char *text, *want;
    } cases[] = {
        {SRV_TOOLS_HERMES, 0, 0,
         "<think>a < b</think>Hi <tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": "
         "\"</tool\"}}\n</tool_call>",
         "C:Hi |R:a < b|get_time={\"zone\":\"</tool\"};"},
        {SRV_TOOLS_HERMES, 0, 0, "x <tool_call>{broken</tool_call> y",
         "C:x <tool_call>{broken</tool_call> y|R:|"},
        {SRV_TOOLS_HERMES, 0, 0, "  {\"name\": \"get_time\", \"arguments\": {}}",
         "C:|R:|get_time={};"},
        {SRV_TOOLS_HERMES, 0, 0, "{\"name\": \"other\", \"arguments\": {}}",
         "C:{\"name\": \"other\", \"arguments\": {}}|R:|"},
        {SRV_TOOLS_HERMES, 0, 0, "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}",
         "C:|R:|get_time={};"}, /* cut off before its closing tag, yet whole */
        {SRV_TOOLS_HERMES, 1, 0, "plan</think>done <tool", "C:done <tool|R:plan|"},
        {SRV_TOOLS_LLAMA3, 0, 0,
         "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}; {\"name\": "
         "\"get_time\", \"parameters\": {\"zone\": \"UTC\"}}",
         "C:|R:|get_weather={\"city\":\"Oslo\"};get_time={\"zone\":\"UTC\"};"},
        {SRV_TOOLS_MISTRAL, 0, 0, "[TOOL_CALLS]get_time[ARGS]{\"zone\": \"CET\"}",
         "C:|R:|get_time={\"zone\":\"CET\"};"},
        {SRV_TOOLS_MISTRAL, 0, 0,
         "ok [TOOL_CALLS][{\"name\": \"get_time\", \"arguments\": \"{}\"}]",
         "C:ok |R:|get_time={};"},
        {SRV_TOOLS_GENERIC, 0, 0,
         "{\"tool_calls\": [{\"name\": \"get_time\", \"arguments\": {\"zone\": \"é\"}}]}",
         "C:|R:|get_time={\"zone\":\"é\"};"},
        {SRV_TOOLS_GENERIC, 0, 0, "Just text, <think> not at the start.",
         "C:Just text, <think> not at the start.|R:|"},
        /* forced (the grammar's shape): the arguments stream as they come, raw */
        {SRV_TOOLS_HERMES, 0, 1,
         "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"a}\\\"{\", "
         "\"n\": [1, {}]}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": "
         "{}}\n</tool_call>",
         "C:|R:|get_weather={\"city\": \"a}\\\"{\", \"n\": [1, {}]};get_time={};"},
        {SRV_TOOLS_HERMES, 0, 1,
         "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"CE",
         "C:|R:|get_time={\"zone\": \"CE;"}, /* cut off by max_tokens */
        {SRV_TOOLS_HERMES, 0, 1, "<tool_call>\n{\"name\": \"get_time\", \"argu",
         "C:<tool_call>\n{\"name\": \"get_time\", \"argu|R:|"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = strlen(cases[i].text);
        for (size_t step = 1; step <= n; step++) {
            char *got =
                split_all(cases[i].fmt, cases[i].think_open, cases[i].forced, cases[i].text, step);
            ck_assert_msg(!strcmp(got, cases[i].want), "case %zu in steps of %zu: %s, not %s", i,
                          step, got, cases[i].want);
            free(got);
        }
    }
}
END_TEST

Suite *openai_suite(void)
{
    Suite *s = suite_create("openai");
    TCase *tc = tcase_create("requests");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, each_bad_field_is_a_400_naming_it, 0,
                        (int)(sizeof(k_bad) / sizeof(k_bad[0])));
    tcase_add_test(tc, a_good_request_parses_into_its_settings);
    tcase_add_test(tc, output_splits_the_same_however_the_text_arrives);
    tcase_add_test(tc, non_streamed_answers_have_the_sdk_shape);
    suite_add_tcase(s, tc);
    return s;
}

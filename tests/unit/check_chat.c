/*
 * tests/unit/check_chat.c - chat templates: recognising a model's template,
 * rendering each built-in format exactly, and the default model's chat
 * prompt tokenizing to its special tokens.
 */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/vocab.h"
#include "tests/unit/suites.h"

static const struct tok_msg k_msgs[] = {
    {"system", "Be brief."},
    {"user", "Hi"},
    {"assistant", "Hello!"},
    {"user", "2+2?"},
};

static void expect_render(enum tok_chat c, const char *want)
{
    struct buf b = {0};
    ck_assert_int_eq(tok_chat_render(c, k_msgs, 4, 1, &b), 0);
    ck_assert_msg(strcmp(b.p, want) == 0, "%s rendered:\n%s", tok_chat_name(c), b.p);
    free(b.p);
}

START_TEST(renders_each_format)
{
    expect_render(TOK_CHAT_CHATML, "<|im_start|>system\nBe brief.<|im_end|>\n"
                                   "<|im_start|>user\nHi<|im_end|>\n"
                                   "<|im_start|>assistant\nHello!<|im_end|>\n"
                                   "<|im_start|>user\n2+2?<|im_end|>\n"
                                   "<|im_start|>assistant\n");
    expect_render(TOK_CHAT_LLAMA3,
                  "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n");
    expect_render(TOK_CHAT_GEMMA, "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                                  "<start_of_turn>model\nHello!<end_of_turn>\n"
                                  "<start_of_turn>user\n2+2?<end_of_turn>\n"
                                  "<start_of_turn>model\n");
    expect_render(TOK_CHAT_LLAMA2, "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello!</s>"
                                   "<s>[INST] 2+2? [/INST]");
    expect_render(TOK_CHAT_MISTRAL, "[INST] Be brief.\n\nHi [/INST] Hello!</s>[INST] 2+2? [/INST]");
    struct tok_msg bad = {"wizard", "x"};
    struct buf b = {0};
    ck_assert_int_eq(tok_chat_render(TOK_CHAT_CHATML, &bad, 1, 1, &b), -EINVAL);
    free(b.p);
}
END_TEST

START_TEST(recognises_templates)
{
    enum tok_chat c;
    static const struct {
        const char *snippet;
        enum tok_chat want;
    } cases[] = {
        {"{{'<|im_start|>' + message['role']}}", TOK_CHAT_CHATML},
        {"{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}", TOK_CHAT_LLAMA3},
        {"{{ '<start_of_turn>' + role }}", TOK_CHAT_GEMMA},
        {"{{ '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>' }}", TOK_CHAT_LLAMA2},
        {"{{ '[INST] ' + message['content'] + ' [/INST]' }}", TOK_CHAT_MISTRAL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        ck_assert_int_eq(tok_chat_detect(cases[i].snippet, strlen(cases[i].snippet), &c), 0);
        ck_assert_int_eq(c, cases[i].want);
    }
    ck_assert_int_eq(tok_chat_detect("{{ message }}", 13, &c), -ENOENT);
    ck_assert_int_eq(tok_chat_from_name("llama3", &c), 0);
    ck_assert_int_eq(c, TOK_CHAT_LLAMA3);
    ck_assert_int_eq(tok_chat_from_name("vicuna", &c), -ENOENT);
}
END_TEST

START_TEST(default_model_chat_prompt)
{
    char err[512];
    struct gguf_file *g = NULL;
    struct tok *t = NULL;
    ck_assert_int_eq(gguf_open(test_model_path(), &g, err, sizeof(err)), 0);
    ck_assert_int_eq(eng_tokenizer_load(g, NULL, &t, err, sizeof(err)), 0);
    struct gguf_str tmpl;
    enum tok_chat c;
    ck_assert_int_eq(gguf_get_str(g, "tokenizer.chat_template", &tmpl), 0);
    ck_assert_int_eq(tok_chat_detect(tmpl.p, tmpl.n, &c), 0);
    ck_assert_int_eq(c, TOK_CHAT_CHATML);
    struct buf b = {0};
    ck_assert_int_eq(tok_chat_render(c, k_msgs + 1, 1, 1, &b), 0);
    int32_t ids[64];
    int64_t n = tok_encode(t, b.p, b.n, TOK_PARSE_SPECIAL, ids, 64);
    /* <|im_start|> user \n Hi <|im_end|> \n <|im_start|> ass istant \n */
    ck_assert_int_eq(n, 10);
    ck_assert_int_eq(ids[0], 1);
    ck_assert_int_eq(ids[4], 2);
    ck_assert_int_eq(ids[6], 1);
    free(b.p);
    tok_destroy(t);
    gguf_close(g);
}
END_TEST

Suite *chat_suite(void)
{
    Suite *s = suite_create("chat");
    TCase *tc = tcase_create("chat");
    tcase_add_test(tc, renders_each_format);
    tcase_add_test(tc, recognises_templates);
    tcase_add_test(tc, default_model_chat_prompt);
    suite_add_tcase(s, tc);
    return s;
}

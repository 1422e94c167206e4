/*
 * tokenizer/chat.c - chat messages -> prompt text in the built-in formats of
 * tokenizer.h.  A GGUF's tokenizer.chat_template is Jinja; we recognise
 * which format it spells (by its marker tokens, as llama.cpp does) instead
 * of running it.  Formats without a system role fold the system message into
 * the first user turn.
 */
#include <errno.h>
#include <string.h>

#include "tokenizer/tokenizer.h"

static const struct {
    const char *name;
    enum tok_chat c;
} k_names[] = {
    {"chatml", TOK_CHAT_CHATML},   {"llama2", TOK_CHAT_LLAMA2}, {"llama3", TOK_CHAT_LLAMA3},
    {"mistral", TOK_CHAT_MISTRAL}, {"gemma", TOK_CHAT_GEMMA},
};

static int contains(const char *s, size_t n, const char *needle)
{
    return memmem(s, n, needle, strlen(needle)) != NULL;
}

int tok_chat_detect(const char *t, size_t n, enum tok_chat *out)
{
    if (contains(t, n, "<|im_start|>"))
        *out = TOK_CHAT_CHATML;
    else if (contains(t, n, "<|start_header_id|>"))
        *out = TOK_CHAT_LLAMA3;
    else if (contains(t, n, "<start_of_turn>"))
        *out = TOK_CHAT_GEMMA;
    else if (contains(t, n, "[INST]") && contains(t, n, "<<SYS>>"))
        *out = TOK_CHAT_LLAMA2;
    else if (contains(t, n, "[INST]"))
        *out = TOK_CHAT_MISTRAL;
    else
        return -ENOENT;
    return 0;
}

int tok_chat_from_name(const char *name, enum tok_chat *out)
{
    for (size_t i = 0; i < sizeof(k_names) / sizeof(*k_names); i++)
        if (strcmp(name, k_names[i].name) == 0) {
            *out = k_names[i].c;
            return 0;
        }
    return -ENOENT;
}

const char *tok_chat_name(enum tok_chat c)
{
    for (size_t i = 0; i < sizeof(k_names) / sizeof(*k_names); i++)
        if (k_names[i].c == c)
            return k_names[i].name;
    return "?";
}

static int put(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

static int is_system(const char *role)
{
    return strcmp(role, "system") == 0 || strcmp(role, "developer") == 0;
}

static int known_role(const char *role)
{
    return is_system(role) || strcmp(role, "user") == 0 || strcmp(role, "assistant") == 0 ||
           strcmp(role, "tool") == 0;
}

/* <|im_start|>role\n content <|im_end|>\n; Llama 3 and Gemma alike with their markers */
static int render_turns(const struct tok_msg *m, int n, int gen, const char *open, const char *mid,
                        const char *close, const char *assistant, int fold_system, struct buf *b)
{
    int rc = 0;
    const char *pending_system = NULL;
    for (int i = 0; i < n && !rc; i++) {
        const char *role = m[i].role;
        if (fold_system && is_system(role)) {
            pending_system = m[i].content;
            continue;
        }
        if (strcmp(role, "assistant") == 0)
            role = assistant;
        else if (is_system(role))
            role = "system";
        rc = put(b, open);
        rc = rc ? rc : put(b, role);
        rc = rc ? rc : put(b, mid);
        if (!rc && pending_system && strcmp(m[i].role, "user") == 0) {
            rc = put(b, pending_system);
            rc = rc ? rc : put(b, "\n\n");
            pending_system = NULL;
        }
        rc = rc ? rc : put(b, m[i].content);
        rc = rc ? rc : put(b, close);
    }
    if (!rc && gen) {
        rc = put(b, open);
        rc = rc ? rc : put(b, assistant);
        rc = rc ? rc : put(b, mid);
    }
    return rc;
}

/* [INST] user [/INST] assistant</s>..., the system message in the first [INST] */
static int render_inst(const struct tok_msg *m, int n, int llama2, struct buf *b)
{
    int rc = 0;
    const char *sys = NULL;
    int first = 1;
    for (int i = 0; i < n && !rc; i++) {
        if (is_system(m[i].role)) {
            sys = m[i].content;
        } else if (strcmp(m[i].role, "assistant") == 0) {
            rc = put(b, " ");
            rc = rc ? rc : put(b, m[i].content);
            rc = rc ? rc : put(b, "</s>");
        } else {
            rc = put(b, first || !llama2 ? "[INST] " : "<s>[INST] ");
            if (!rc && sys) {
                rc = put(b, llama2 ? "<<SYS>>\n" : "");
                rc = rc ? rc : put(b, sys);
                rc = rc ? rc : put(b, llama2 ? "\n<</SYS>>\n\n" : "\n\n");
                sys = NULL;
            }
            rc = rc ? rc : put(b, m[i].content);
            rc = rc ? rc : put(b, " [/INST]");
            first = 0;
        }
    }
    return rc;
}

int tok_chat_render(enum tok_chat c, const struct tok_msg *msgs, int n, int gen, struct buf *out)
{
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content || !known_role(msgs[i].role))
            return -EINVAL;
    int rc;
    switch (c) {
    case TOK_CHAT_CHATML:
        rc = render_turns(msgs, n, gen, "<|im_start|>", "\n", "<|im_end|>\n", "assistant", 0, out);
        break;
    case TOK_CHAT_LLAMA3:
        rc = render_turns(msgs, n, gen, "<|start_header_id|>", "<|end_header_id|>\n\n",
                          "<|eot_id|>", "assistant", 0, out);
        break;
    case TOK_CHAT_GEMMA:
        rc =
            render_turns(msgs, n, gen, "<start_of_turn>", "\n", "<end_of_turn>\n", "model", 1, out);
        break;
    case TOK_CHAT_LLAMA2:
        rc = render_inst(msgs, n, 1, out);
        break;
    case TOK_CHAT_MISTRAL:
        rc = render_inst(msgs, n, 0, out);
        break;
    default:
        return -EINVAL;
    }
    return rc ? rc : buf_append(out, "", 0);
}

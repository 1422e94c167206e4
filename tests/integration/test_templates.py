"""Chat templates: the server renders the model's own Jinja template.

Python's jinja2, set up as transformers sets it up (the environment of
tests/fixtures/templates/make_template_cases.py), is the oracle: for each
conversation the prompt the server reports (POST /apply-template) is
byte-equal to jinja2's rendering of the template inside the GGUF, and
usage.prompt_tokens of a chat request equals the token count of that
rendering.  --chat-template overrides the model's template; what a
template refuses (raise_exception) is a 400 carrying its message.
"""

import importlib.util
import json
import subprocess

import openai
import pytest

from conftest import CINFER_BIN, CINFER_MODEL, REPO_ROOT, Server, _finish, _start, err_obj, make_client

_spec = importlib.util.spec_from_file_location(
    "make_template_cases", REPO_ROOT / "tests/fixtures/templates/make_template_cases.py"
)
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)

ENV = cases.make_env()
TEMPLATE = cases.gguf_metadata_value(str(CINFER_MODEL), "tokenizer.chat_template")

WEATHER_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}

CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "What is 2+2?"}],
    "with a system message": [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hello"},
    ],
    "multi-turn": [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ],
    "unicode and quotes": [{"role": "user", "content": 'Café "naïve" 中文 😀 \\n\nnew line'}],
    "empty content": [{"role": "user", "content": ""}],
    "a tool result": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "tool", "content": "21 C", "tool_call_id": "call_1"},
        {"role": "user", "content": "Thanks"},
    ],
}


def oracle(messages, add_generation_prompt=True, **kwargs):
    """What jinja2 renders for these messages, shaped as the server shapes them."""
    return ENV.from_string(TEMPLATE).render(
        messages=messages, add_generation_prompt=add_generation_prompt,
        bos_token="<|im_start|>", eos_token="<|im_end|>", **kwargs
    )


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_prompt_and_its_token_count_match_jinja2(server, client, model_id, name):
    messages = CONVERSATIONS[name]
    want = oracle(messages)
    got = server.json("POST", "/apply-template", {"messages": messages})
    assert got == (200, {"prompt": want})
    status, tok = server.json("POST", "/tokenize", {"content": want})
    assert status == 200
    r = client.chat.completions.create(model=model_id, messages=messages, max_tokens=1, temperature=0)
    assert r.usage.prompt_tokens == tok["count"] == len(tok["tokens"])


def test_the_models_default_system_message_is_in_the_prompt(server):
    # SmolLM2's template adds its own system turn when the request has none
    status, body = server.json("POST", "/apply-template", {"messages": CONVERSATIONS["one user turn"]})
    assert status == 200
    assert body["prompt"].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert body["prompt"].endswith("<|im_start|>assistant\n")


def test_add_generation_prompt_false_and_the_developer_role(server):
    msgs = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    status, body = server.json("POST", "/apply-template", {"messages": msgs, "add_generation_prompt": False})
    assert status == 200
    assert body["prompt"] == oracle(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=False,
    )


def test_bad_template_fields_are_refused(server):
    for body, param in [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": 3}, "chat_template_kwargs"),
        ({"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": "yes"}, "add_generation_prompt"),
        ({"messages": [{"role": "user", "content": "x"}], "chat_template": "{{ 1 }}"}, "chat_template"),
        ({"messages": [{"role": "user", "content": "x"}], "continue_final_message": True}, "continue_final_message"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
         "messages[0].tool_calls[0].function"),
    ]:
        status, err = server.json("POST", "/apply-template", body)
        assert status == 400, body
        assert err["error"]["param"] == param, err


CUSTOM = """{%- if messages|length > 2 -%}
{{ raise_exception('This template takes at most two messages') }}
{%- endif -%}
{%- for m in messages -%}
[{{ m.role|upper }}] {{ m.content }}{{ ' ' ~ greeting if greeting is defined }}
{% endfor -%}
{%- if tools %}TOOLS {{ tools|map(attribute='function.name')|join(',') }}
{% endif -%}
{%- if add_generation_prompt %}[ASSISTANT]{% endif %}"""


@pytest.fixture(scope="module")
def custom_server(tmp_path_factory):
    path = tmp_path_factory.mktemp("tpl") / "custom.jinja"
    path.write_text(CUSTOM)
    srv = _start(["--chat-template", str(path)], "custom-template")
    yield srv
    _finish(srv)


def test_chat_template_flag_overrides_the_models(custom_server):
    msgs = [{"role": "user", "content": "Hi"}]
    status, body = custom_server.json(
        "POST", "/apply-template", {"messages": msgs, "chat_template_kwargs": {"greeting": "there"}}
    )
    assert (status, body) == (200, {"prompt": "[USER] Hi there\n[ASSISTANT]"})
    client = make_client(custom_server)
    r = client.chat.completions.create(model=client.models.list().data[0].id,
                                       messages=msgs, max_tokens=1)
    status, tok = custom_server.json("POST", "/tokenize", {"content": "[USER] Hi\n[ASSISTANT]"})
    assert r.usage.prompt_tokens == tok["count"]


def test_what_the_template_raises_is_a_400_with_its_message(custom_server):
    client = make_client(custom_server)
    msgs = [{"role": "user", "content": str(i)} for i in range(3)]
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=client.models.list().data[0].id, messages=msgs, max_tokens=1)
    e = err_obj(ei.value)
    assert e["param"] == "messages"
    assert "This template takes at most two messages" in e["message"]


def test_a_template_that_does_not_compile_is_refused_at_start(tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("line one\n{% for x in %}\n")
    p = subprocess.run([str(CINFER_BIN), "serve", "-m", str(CINFER_MODEL), "--port", "0",
                        "--chat-template", str(bad)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "bad.jinja" in p.stderr and "line 2" in p.stderr
    missing = tmp_path / "missing.jinja"
    p = subprocess.run([str(CINFER_BIN), "serve", "-m", str(CINFER_MODEL), "--port", "0",
                        "--chat-template", str(missing)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "missing.jinja" in p.stderr


@pytest.mark.parametrize("name", ["multi-turn", "a tool result"])
def test_cinfer_template_prints_the_servers_prompt(server, name, tmp_path):
    messages = CONVERSATIONS[name]
    f = tmp_path / "messages.json"
    f.write_text(json.dumps(messages))
    r = subprocess.run([str(CINFER_BIN), "template", "-m", str(CINFER_MODEL), "--messages", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == oracle(messages)
    status, tok = server.json("POST", "/tokenize", {"content": r.stdout})
    assert status == 200
    assert f"cinfer template: {tok['count']} prompt tokens" in r.stderr
    # a request body (here with add_generation_prompt) works too
    f.write_text(json.dumps({"messages": messages, "add_generation_prompt": False}))
    r = subprocess.run([str(CINFER_BIN), "template", "-m", str(CINFER_MODEL), "--messages", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == oracle(messages, add_generation_prompt=False)

"""Tool calling and reasoning output on /v1/chat/completions.

tool_choice required and a named function are enforced by the grammar
engine: every answer is a call whose arguments validate against the
function's schema, whatever the model (SmolLM2 here, whose template does not
render tools: cinfer's generic fallback describes them in the system
message).  The output parsers of each format (hermes, llama3, mistral, the
generic one) and of reasoning (<think>) are checked on the real templates of
those families (tests/fixtures/templates) with the output forced to a known
text by guided_choice, streamed and not: what the SDK reassembles from the
stream equals the non-streamed message.
"""

import json

import jsonschema
import openai
import pytest

from conftest import REPO_ROOT, _finish, _start, err_obj, make_client

TEMPLATES = REPO_ROOT / "tests/fixtures/templates"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}},
                       "required": ["zone"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def schema_of(name):
    return {"get_weather": WEATHER, "get_time": TIME}[name]["function"]["parameters"]


def assert_valid_calls(msg, names):
    assert msg.tool_calls, msg
    for c in msg.tool_calls:
        assert c.type == "function" and c.id.startswith("call_") and len(c.id) == 29, c
        assert c.function.name in names, c
        jsonschema.validate(json.loads(c.function.arguments), schema_of(c.function.name))


def streamed(client, **kw):
    """The SDK's own reassembly of a streamed answer."""
    with client.chat.completions.stream(**kw) as s:
        for _ in s:
            pass
        return s.get_final_completion()


def test_required_always_calls_a_tool_with_valid_arguments(client, model_id):
    for seed in range(6):
        r = client.chat.completions.create(model=model_id, messages=ASK, tools=[WEATHER, TIME],
                                           tool_choice="required", temperature=1.0, seed=seed,
                                           max_tokens=200)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        assert choice.message.content is None
        assert_valid_calls(choice.message, {"get_weather", "get_time"})


def test_a_named_function_is_the_one_called(client, model_id):
    r = client.chat.completions.create(
        model=model_id, messages=ASK, tools=[WEATHER, TIME], max_tokens=200, n=3, temperature=1.0,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls"
        assert [c.function.name for c in choice.message.tool_calls] == ["get_time"]
        assert_valid_calls(choice.message, {"get_time"})


def test_parallel_tool_calls_false_gives_one_call(client, model_id):
    for seed in range(4):
        r = client.chat.completions.create(model=model_id, messages=ASK, tools=[WEATHER, TIME],
                                           tool_choice="required", parallel_tool_calls=False,
                                           temperature=1.0, seed=seed, max_tokens=200)
        assert len(r.choices[0].message.tool_calls) == 1


def test_streamed_calls_reassemble_to_the_same_message(client, model_id):
    kw = dict(model=model_id, messages=ASK, tools=[WEATHER], tool_choice="required",
              temperature=0, max_tokens=200)
    whole = client.chat.completions.create(**kw).choices[0]
    got = streamed(client, **kw).choices[0]
    assert got.finish_reason == whole.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in got.message.tool_calls] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    # OpenAI's delta order: index, id, type and name first, then the arguments
    chunks = list(client.chat.completions.create(stream=True, **kw))
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert deltas[0].id and deltas[0].function.name == "get_weather" and deltas[0].function.arguments == ""
    assert "".join(d.function.arguments for d in deltas) == whole.message.tool_calls[0].function.arguments
    assert all(d.id is None for d in deltas[1:])


def test_a_tool_result_turn_is_rendered_and_answered(server, client, model_id):
    r = client.chat.completions.create(model=model_id, messages=ASK, tools=[WEATHER],
                                       tool_choice="required", temperature=0, max_tokens=200)
    call = r.choices[0].message.tool_calls[0]
    msgs = ASK + [r.choices[0].message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "21 degrees and sunny"}]
    status, body = server.json("POST", "/apply-template", {"messages": msgs, "tools": [WEATHER]})
    assert status == 200
    assert "21 degrees and sunny" in body["prompt"] and "get_weather" in body["prompt"]
    r2 = client.chat.completions.create(model=model_id, messages=msgs, tools=[WEATHER],
                                        tool_choice="none", temperature=0, max_tokens=30)
    assert r2.choices[0].message.tool_calls is None and r2.choices[0].message.content


def test_tool_choice_none_leaves_the_tools_out(server, client, model_id):
    status, body = server.json("POST", "/apply-template",
                               {"messages": ASK, "tools": [WEATHER], "tool_choice": "none"})
    assert status == 200 and "get_weather" not in body["prompt"]
    status, body = server.json("POST", "/apply-template", {"messages": ASK, "tools": [WEATHER]})
    assert status == 200 and "get_weather" in body["prompt"]  # the generic fallback's system text
    r = client.chat.completions.create(model=model_id, messages=ASK, tools=[WEATHER],
                                       tool_choice="none", max_tokens=20)
    assert r.choices[0].message.tool_calls is None


@pytest.mark.parametrize("body,param", [
    ({"tools": {"a": 1}}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]}, "tools[0].function"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "propertyNames": {"maxLength": 3}}}}],
      "tool_choice": "required"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
])
def test_bad_tool_fields_are_400s_naming_them(server, body, param):
    status, err = server.json("POST", "/v1/chat/completions", {"messages": ASK, "max_tokens": 1, **body})
    assert status == 400, (body, err)
    assert err["error"]["param"] == param, err


def test_tools_on_completions_are_refused(server):
    status, err = server.json("POST", "/v1/completions", {"prompt": "x", "tools": [WEATHER]})
    assert status == 400 and err["error"]["param"] == "tools"


# ---- each family's format, on its real template, with the output forced ----

@pytest.fixture(scope="module")
def family():
    servers = {}

    def get(name):
        if name not in servers:
            servers[name] = _start(["--chat-template", str(TEMPLATES / name)], name.split("-")[0])
        return make_client(servers[name])

    yield get
    for srv in servers.values():
        _finish(srv)


QWEN3 = "Qwen-Qwen3-0.6B.jinja"
LLAMA = "meta-llama-Llama-3.1-8B-Instruct.jinja"
MISTRAL = "mistralai-Mistral-Nemo-Instruct-2407.jinja"
R1 = "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"

CASES = [
    # template, the forced output, content, reasoning, [(name, arguments)]
    (QWEN3, '<think>Paris needs a lookup.</think>\n\nLet me check.\n<tool_call>\n{"name": "get_weather", '
            '"arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
     "\n\nLet me check.\n", "Paris needs a lookup.", [("get_weather", {"city": "Paris", "unit": "celsius"})]),
    (QWEN3, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>',
     None, None, [("get_weather", {"city": "Oslo", "unit": "celsius"}), ("get_time", {"zone": "CET"})]),
    (QWEN3, "<tool_call>\n{not json}\n</tool_call>", "<tool_call>\n{not json}\n</tool_call>", None, []),
    (QWEN3, "<think>No tool needed.</think>It is 4.", "It is 4.", "No tool needed.", []),
    (LLAMA, '{"name": "get_weather", "parameters": {"city": "Rome", "unit": "celsius"}}',
     None, None, [("get_weather", {"city": "Rome", "unit": "celsius"})]),
    (LLAMA, '<|python_tag|>{"name": "get_time", "parameters": {"zone": "UTC"}}', None, None,
     [("get_time", {"zone": "UTC"})]),
    (LLAMA, '{"answer": 4}', '{"answer": 4}', None, []),
    (MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Bern", "unit": "celsius"}}, '
              '{"name": "get_time", "arguments": {"zone": "CET"}}]',
     None, None, [("get_weather", {"city": "Bern", "unit": "celsius"}), ("get_time", {"zone": "CET"})]),
    (MISTRAL, "Plain words [TOOL", "Plain words [TOOL", None, []),
    (R1, "The user wants the sum.</think>\n\nIt is 4.", "\n\nIt is 4.", "The user wants the sum.", []),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_each_familys_output_is_parsed(family, case):
    tpl, forced, content, reasoning, calls = CASES[case]
    client = family(tpl)
    model = client.models.list().data[0].id
    tools = [] if tpl == R1 else [WEATHER, TIME]
    kw = dict(model=model, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=300,
              extra_body={"guided_choice": [forced]}, **({"tools": tools} if tools else {}))
    for got in (client.chat.completions.create(**kw).choices[0], streamed(client, **kw).choices[0]):
        m = got.message
        assert (m.content or None) == content, m
        assert getattr(m, "reasoning_content", None) == reasoning, m
        assert [(c.function.name, json.loads(c.function.arguments)) for c in m.tool_calls or []] == calls
        assert got.finish_reason == ("tool_calls" if calls else "stop")
        if tpl == MISTRAL and calls:  # Mistral's templates want 9-character ids back
            assert all(len(c.id) == 9 and c.id.isalnum() for c in m.tool_calls)


@pytest.mark.parametrize("tpl", [QWEN3, LLAMA, MISTRAL])
def test_required_in_each_familys_format(family, tpl):
    client = family(tpl)
    model = client.models.list().data[0].id
    r = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER, TIME],
                                       tool_choice="required", max_tokens=200, temperature=0.7, seed=3)
    assert r.choices[0].finish_reason == "tool_calls"
    msg = r.choices[0].message
    assert msg.tool_calls and all(c.function.name in ("get_weather", "get_time") for c in msg.tool_calls)
    for c in msg.tool_calls:
        jsonschema.validate(json.loads(c.function.arguments), schema_of(c.function.name))
    kw = dict(model=model, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
              max_tokens=200, temperature=0)
    whole = client.chat.completions.create(**kw).choices[0].message
    got = streamed(client, **kw).choices[0].message
    assert [(c.function.name, c.function.arguments) for c in got.tool_calls] == \
        [(c.function.name, c.function.arguments) for c in whole.tool_calls]


def test_a_tool_call_turn_renders_back_in_mistrals_template(family):
    client = family(MISTRAL)
    model = client.models.list().data[0].id
    r = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER],
                                       tool_choice="required", max_tokens=200, temperature=0)
    call = r.choices[0].message.tool_calls[0]
    msgs = ASK + [r.choices[0].message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "21 C"}]
    r2 = client.chat.completions.create(model=model, messages=msgs, tools=[WEATHER], max_tokens=5)
    assert r2.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_enable_thinking_false_closes_qwen3s_reasoning(family):
    client = family(QWEN3)
    model = client.models.list().data[0].id
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=20,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}, "guided_choice": ["Hello there."]})
    assert r.choices[0].message.content == "Hello there."
    assert r.choices[0].message.reasoning_content is None

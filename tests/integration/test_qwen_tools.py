"""Tool calling with the openai SDK on Qwen2.5-Coder-0.5B-Instruct, whose own
template renders the tools (hermes format).  `make test-models` runs this
file alone and prints the figures; `make test` runs it too.

- tool_choice "required": 50 answers (5 requests of n=10 at temperature 1),
  each must hold get_weather calls whose arguments validate against its
  schema (parallel calls allowed: an answer that goes on calling it for other
  cities until max_tokens ends with "length");
- tool_choice "auto" on a prompt that needs the tool: how often the model
  calls it is printed (a property of the model, not asserted), and every
  answer must be well-formed: valid calls, or text;
- a named function, streaming deltas reassembled by the SDK, a tool-result
  turn, parallel_tool_calls false.
"""

import json
import os

import jsonschema
import pytest

from conftest import REPO_ROOT, _finish, _start, make_client

# make asan (CINFER_SLOWDOWN > 1) runs one round of each: the 50 are make test's
SLOWDOWN = float(os.environ.get("CINFER_SLOWDOWN", "1"))
ROUNDS = 5 if SLOWDOWN <= 1 else 1
QWEN = REPO_ROOT / "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather like in Paris right now?"}]


@pytest.fixture(scope="module")
def qwen():
    if not QWEN.is_file():
        pytest.fail(f"no model at {QWEN} (run make model-qwen)")
    srv = _start(["-m", str(QWEN)], "qwen")
    client = make_client(srv).with_options(timeout=60 * SLOWDOWN)  # n=10 on Qwen under ASan
    yield client, client.models.list().data[0].id
    _finish(srv)


def valid_calls(msg, cut=False):
    """All calls are get_weather with valid arguments; cut: the answer hit max_tokens, so its
    last call may be cut short (its arguments stream as they come) and needs a whole one before."""
    calls = msg.tool_calls[:-1] if cut and msg.tool_calls else msg.tool_calls
    if not calls:
        return False
    for c in calls:
        if c.function.name != "get_weather":
            return False
        jsonschema.validate(json.loads(c.function.arguments), WEATHER["function"]["parameters"])
    return True


def test_required_gives_a_valid_call_every_time(qwen):
    client, model = qwen
    good = total = 0
    finish = {}
    for seed in range(ROUNDS):
        r = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER],
                                           tool_choice="required", n=10, temperature=1.0,
                                           seed=seed, max_tokens=120)
        for ch in r.choices:
            total += 1
            good += valid_calls(ch.message, cut=ch.finish_reason == "length")
            finish[ch.finish_reason] = finish.get(ch.finish_reason, 0) + 1
            # "length": parallel calls for more cities ran into max_tokens; the cut one is content
            assert ch.finish_reason in ("tool_calls", "length"), ch
    print(f"\nqwen tool_choice=required: {good} of {total} answers have get_weather calls whose "
          f"arguments validate; finish reasons {finish}")
    assert (good, total) == (10 * ROUNDS, 10 * ROUNDS)


def test_auto_calls_the_tool_when_the_prompt_needs_it(qwen):
    client, model = qwen
    calls = total = 0
    for seed in range(2 if ROUNDS > 1 else 1):
        r = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER], n=10,
                                           temperature=0.7, seed=seed, max_tokens=120)
        for ch in r.choices:
            total += 1
            if ch.message.tool_calls:
                assert ch.finish_reason == "tool_calls" and valid_calls(ch.message), ch
                calls += 1
            else:
                assert ch.message.content, ch
    print(f"\nqwen tool_choice=auto: {calls} of {total} answers call get_weather")
    assert total == (20 if ROUNDS > 1 else 10)


def test_named_streamed_and_a_tool_result_turn(qwen):
    client, model = qwen
    kw = dict(model=model, messages=ASK, tools=[WEATHER], temperature=0, max_tokens=120,
              tool_choice={"type": "function", "function": {"name": "get_weather"}})
    whole = client.chat.completions.create(**kw).choices[0].message
    with client.chat.completions.stream(**kw) as s:
        for _ in s:
            pass
        got = s.get_final_completion().choices[0]
    assert got.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in got.message.tool_calls] == \
        [(c.function.name, c.function.arguments) for c in whole.tool_calls]
    assert json.loads(whole.tool_calls[0].function.arguments)["city"] == "Paris"
    # a forced call's arguments stream as the model writes them: several fragments
    frags = [d.function.arguments for ch in client.chat.completions.create(stream=True, **kw)
             if ch.choices and ch.choices[0].delta.tool_calls
             for d in ch.choices[0].delta.tool_calls if d.function.arguments]
    print(f"\nqwen named, streamed: {len(frags)} argument fragments {frags}")
    assert len(frags) > 2 and "".join(frags) == whole.tool_calls[0].function.arguments
    call = whole.tool_calls[0]
    msgs = ASK + [whole.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'}]
    r = client.chat.completions.create(model=model, messages=msgs, tools=[WEATHER], temperature=0,
                                       max_tokens=60)
    answer = r.choices[0].message
    print(f"\nqwen after the tool result: {answer.content!r}")
    assert answer.content and "21" in answer.content and not answer.tool_calls


def test_parallel_tool_calls_false_one_call(qwen):
    client, model = qwen
    two = [{"role": "user", "content": "What is the weather in Paris and in Tokyo?"}]
    r = client.chat.completions.create(model=model, messages=two, tools=[WEATHER], tool_choice="required",
                                       parallel_tool_calls=False, n=5, temperature=1.0, seed=1, max_tokens=120)
    assert all(len(ch.message.tool_calls) == 1 for ch in r.choices)
    r = client.chat.completions.create(model=model, messages=two, tools=[WEATHER], tool_choice="required",
                                       n=5, temperature=1.0, seed=1, max_tokens=200)
    counts = [len(ch.message.tool_calls) for ch in r.choices]
    print(f"\nqwen parallel allowed, two cities: calls per answer {counts}")
    assert all(n >= 1 for n in counts)

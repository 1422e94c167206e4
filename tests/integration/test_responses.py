"""The Responses API (POST /v1/responses) through the official openai
package: client.responses.create streamed and not, the event sequence, the
response object the SDK parses, text.format, and the 400s for what a
stateless server cannot honour."""

import json
from pathlib import Path

import openai
import pytest

from conftest import Server, make_client

QUESTION = "Name the capital of France."


def test_create_returns_a_response_the_sdk_reads(client, model_id):
    r = client.responses.create(
        model=model_id, input=QUESTION, max_output_tokens=30, temperature=0
    )
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status == "completed"
    assert "Paris" in r.output_text
    msg = r.output[0]
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "output_text" and msg.content[0].text == r.output_text
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 30
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    # the same prompt through chat: the same tokens (greedy)
    c = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": QUESTION}], max_tokens=30,
        temperature=0,
    )
    assert c.choices[0].message.content == r.output_text
    assert c.usage.prompt_tokens == r.usage.input_tokens


def test_instructions_and_message_list(client, model_id):
    r = client.responses.create(
        model=model_id,
        instructions="You answer in one word.",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hi."}]},
            {"role": "developer", "content": "Be brief."},
            {"type": "message", "role": "user", "content": QUESTION},
        ],
        max_output_tokens=8,
        temperature=0,
    )
    assert r.instructions == "You answer in one word."
    assert r.status in ("completed", "incomplete") and r.output_text
    c = client.chat.completions.create(
        model=model_id,
        messages=[
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": QUESTION},
        ],
        max_tokens=8,
        temperature=0,
    )
    assert c.usage.prompt_tokens == r.usage.input_tokens
    assert c.choices[0].message.content == r.output_text


def test_max_output_tokens_makes_it_incomplete(client, model_id):
    r = client.responses.create(model=model_id, input=QUESTION, max_output_tokens=3, temperature=0)
    assert r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3


def test_stream_event_sequence(client, model_id):
    events = list(
        client.responses.create(
            model=model_id, input=QUESTION, max_output_tokens=30, temperature=0, stream=True
        )
    )
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 2 and set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert "".join(deltas) == done.output_text == events[-4].text
    assert done.status == "completed" and done.usage.output_tokens > 0
    plain = client.responses.create(model=model_id, input=QUESTION, max_output_tokens=30, temperature=0)
    assert plain.output_text == done.output_text


def test_sdk_stream_helper(client, model_id):
    with client.responses.stream(
        model=model_id, input=QUESTION, max_output_tokens=30, temperature=0
    ) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text and "Paris" in text


def test_text_format_json_schema(client, model_id):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    r = client.responses.create(
        model=model_id,
        input=QUESTION + " Answer as JSON.",
        max_output_tokens=60,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
    )
    doc = json.loads(r.output_text)
    assert set(doc) == {"city"} and isinstance(doc["city"], str)
    assert r.text.format.type == "json_schema"


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"background": True}, "background"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"truncation": "auto"}, "truncation"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"temperature": 5}, "temperature"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(client, model_id, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=model_id, input=QUESTION, **extra)
    assert e.value.body["param"] == param, e.value.body


@pytest.mark.parametrize(
    "body,param",
    [
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": 5}, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input"),
        ({"input": [{"type": "function_call", "call_id": "c"}]}, "input"),
        ({"input": [{"type": "function_call_output", "call_id": 5, "output": "x"}]}, "input"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input"),
        ({"input": "hi", "instructions": 3}, "instructions"),
    ],
)
def test_bad_input_is_a_400(server, body, param):
    status, out = server.json("POST", "/v1/responses", body)
    assert status == 400, out
    assert out["error"]["param"] == param


def test_store_false_and_unknown_fields_are_fine(server):
    status, out = server.json(
        "POST",
        "/v1/responses",
        {"input": QUESTION, "store": False, "metadata": {"k": "v"}, "max_output_tokens": 4,
         "some_field_we_never_heard_of": 1},
    )
    assert status == 200, out
    assert out["store"] is False and out["metadata"] == {"k": "v"}


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
ASK = "What is the weather in Paris?"


def test_function_tools_give_function_call_items(client, model_id):
    r = client.responses.create(
        model=model_id, input=ASK, tools=[WEATHER], tool_choice="required",
        max_output_tokens=60, temperature=0,
    )
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and r.status == "completed"
    c = calls[0]
    assert c.name == "get_weather" and c.call_id.startswith("call_") and c.id.startswith("fc_")
    args = json.loads(c.arguments)
    assert set(args) == {"city"}
    assert r.tools[0].name == "get_weather" and r.tool_choice == "required"
    # the same request through chat: the same call
    chat = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": ASK}], max_tokens=60, temperature=0,
        tools=[{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}],
        tool_choice="required",
    )
    assert json.loads(chat.choices[0].message.tool_calls[0].function.arguments) == args

    # the next turn: the call and its output go back as input items
    r2 = client.responses.create(
        model=model_id,
        input=[{"role": "user", "content": ASK},
               {"type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments},
               {"type": "function_call_output", "call_id": c.call_id, "output": '{"temp_c": 21}'}],
        tools=[WEATHER], max_output_tokens=30, temperature=0,
    )
    assert r2.status in ("completed", "incomplete") and r2.usage.input_tokens > r.usage.input_tokens


def test_function_call_streamed(client, model_id):
    events = list(client.responses.create(
        model=model_id, input=ASK, tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=60, temperature=0, stream=True,
    ))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    added = [e for e in events if e.type == "response.output_item.added"]
    assert added and added[0].item.type == "function_call" and added[0].item.arguments == ""
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"][0]
    assert done.arguments == deltas and set(json.loads(deltas)) == {"city"}
    final = events[-1].response
    assert final.output[0].type == "function_call" and final.output[0].arguments == deltas
    assert [e.sequence_number for e in events] == list(range(len(events)))
    plain = client.responses.create(
        model=model_id, input=ASK, tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=60, temperature=0,
    )
    assert plain.output[0].arguments == deltas


R1_TEMPLATE = Path(__file__).resolve().parents[1] / "fixtures/templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"


def test_reasoning_is_an_item_of_its_own():
    # DeepSeek-R1's template opens <think> in the prompt: the answer starts as reasoning
    srv = Server(["--chat-template", str(R1_TEMPLATE)], "r1_server").start()
    try:
        client = make_client(srv)
        model = client.models.list().data[0].id
        kw = dict(model=model, max_output_tokens=12, temperature=0)
        r = client.responses.create(input="What is 2+2?", **kw)
        chat = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=12,
            temperature=0).choices[0].message
        assert chat.reasoning_content
        assert r.output[0].type == "reasoning"
        assert r.output[0].content[0].text == chat.reasoning_content
        assert [o.type for o in r.output[1:]] == (["message"] if chat.content else [])
        assert 0 < r.usage.output_tokens_details.reasoning_tokens <= r.usage.output_tokens
        events = list(client.responses.create(input="What is 2+2?", stream=True, **kw))
        text = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
        done = [e for e in events if e.type == "response.reasoning_text.done"]
        assert text == chat.reasoning_content and done and done[0].text == text
        final = events[-1].response
        assert final.output[0].type == "reasoning" and final.output[0].content[0].text == text
        assert [e.sequence_number for e in events] == list(range(len(events)))
    finally:
        assert srv.stop() == 0

"""`cinfer serve` driven by the official openai package (chat, completions,
models, errors).  Greedy (temperature 0) results are compared between request
forms: streaming vs not, text parts vs string, token ids vs text, stop."""

import json
import math

import openai
import pytest

from conftest import API_KEY, err_obj, make_client

QUESTION = "What is 2+2?"
PROMPT = "The capital of France is"
PROMPT2 = "Once upon a time"


def chat(client, model_id, content=QUESTION, **kw):
    kw.setdefault("max_tokens", 16)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": content}], **kw)


def complete(client, model_id, prompt=PROMPT, **kw):
    kw.setdefault("max_tokens", 8)
    kw.setdefault("temperature", 0)
    return client.completions.create(model=model_id, prompt=prompt, **kw)


def tokenize(server, text):
    status, body = server.json("POST", "/tokenize", {"content": text})
    assert status == 200, body
    assert isinstance(body["tokens"], list) and all(isinstance(t, int) for t in body["tokens"])
    return body["tokens"]


# --------------------------------------------------------------------------
# chat completions
# --------------------------------------------------------------------------


def test_chat_basic(client, model_id):
    r = chat(client, model_id)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == model_id
    assert isinstance(r.created, int)
    assert isinstance(r.system_fingerprint, str)
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str) and c.message.content != ""
    assert c.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 0
    assert 1 <= u.completion_tokens <= 16
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details is not None
    assert isinstance(u.prompt_tokens_details.cached_tokens, int)
    assert u.prompt_tokens_details.cached_tokens >= 0


def test_chat_without_model_field(server):
    status, body = server.json(
        "POST", "/v1/chat/completions",
        {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 2, "temperature": 0},
    )
    assert status == 200, body
    assert body["object"] == "chat.completion"


def test_chat_stream_matches_non_stream(client, model_id):
    ref = chat(client, model_id)
    chunks = list(chat(client, model_id, stream=True, stream_options={"include_usage": True}))
    assert len(chunks) >= 3
    ids = {ch.id for ch in chunks}
    assert len(ids) == 1, ids
    assert next(iter(ids)).startswith("chatcmpl-")
    for ch in chunks:
        assert ch.object == "chat.completion.chunk"
        assert ch.model == model_id
    first = chunks[0]
    assert first.choices and first.choices[0].delta.role == "assistant"
    # the last chunk: usage only
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == ref.usage.completion_tokens
    assert last.usage.prompt_tokens == ref.usage.prompt_tokens
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    for ch in chunks[:-1]:
        assert ch.usage is None, "only the include_usage chunk carries usage"
        assert len(ch.choices) == 1 and ch.choices[0].index == 0
    finishes = [ch.choices[0].finish_reason for ch in chunks[:-1] if ch.choices[0].finish_reason is not None]
    assert finishes == [ref.choices[0].finish_reason]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks[:-1])
    assert text == ref.choices[0].message.content


def test_chat_stream_without_usage(client, model_id):
    chunks = list(chat(client, model_id, max_tokens=4, stream=True))
    assert chunks
    assert all(ch.choices for ch in chunks), "no usage-only chunk without include_usage"
    assert all(ch.usage is None for ch in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_chat_content_parts(client, model_id):
    # text parts are joined with "\n" before the template sees them, as vLLM does
    ref = chat(client, model_id, content="What is\n2+2?")
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "2+2?"}]
    r = chat(client, model_id, content=parts)
    assert r.choices[0].message.content == ref.choices[0].message.content
    assert r.usage.prompt_tokens == ref.usage.prompt_tokens


def test_chat_image_part_rejected(client, model_id):
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    with pytest.raises(openai.BadRequestError) as ei:
        chat(client, model_id, content=parts)
    assert "image_url" in err_obj(ei.value)["message"]


def test_chat_all_roles(client, model_id):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "What is the weather?"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "tool", "content": "Sunny, 21 C", "tool_call_id": "call_1"},
        {"role": "user", "content": "Thanks. Summarize."},
    ]
    r = client.chat.completions.create(model=model_id, messages=messages, max_tokens=4, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens >= 1


def test_chat_unknown_role(client, model_id):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(
            model=model_id, messages=[{"role": "wizard", "content": "abracadabra"}], max_tokens=4
        )
    err = err_obj(ei.value)
    assert "messages" in (err.get("param") or ""), err


def test_chat_n2(client, model_id):
    r = chat(client, model_id, n=2, temperature=0.8, seed=1, max_tokens=8)
    assert sorted(c.index for c in r.choices) == [0, 1]
    for c in r.choices:
        assert c.message.role == "assistant"
        assert isinstance(c.message.content, str)
        assert c.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 16


def test_chat_max_tokens_length(client, model_id):
    r = chat(client, model_id, max_tokens=3, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3


def test_chat_max_completion_tokens_length(client, model_id):
    r = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": QUESTION}],
        max_completion_tokens=3, temperature=0, extra_body={"ignore_eos": True},
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3


def test_chat_seed_reproducible(client, model_id):
    a = chat(client, model_id, content="Tell me a story.", temperature=1.0, seed=1234, max_tokens=12)
    b = chat(client, model_id, content="Tell me a story.", temperature=1.0, seed=1234, max_tokens=12)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_chat_logprobs(client, model_id):
    r = chat(client, model_id, max_tokens=4, logprobs=True, top_logprobs=3)
    c = r.choices[0]
    assert c.logprobs is not None and c.logprobs.content is not None
    entries = c.logprobs.content
    n = r.usage.completion_tokens
    if c.finish_reason == "length":
        assert len(entries) == n
    else:  # the end-of-text token may or may not be counted / listed
        assert len(entries) in (n, n - 1)
    for e in entries:
        assert isinstance(e.token, str)
        assert isinstance(e.logprob, float) and e.logprob <= 0.0 and math.isfinite(e.logprob)
        assert isinstance(e.bytes, list) and all(isinstance(b, int) and 0 <= b <= 255 for b in e.bytes)
        assert len(e.top_logprobs) == 3
        lps = [t.logprob for t in e.top_logprobs]
        assert lps == sorted(lps, reverse=True), lps
        assert all(lp <= 0.0 for lp in lps)
        # greedy picks the most likely token
        assert e.logprob == pytest.approx(lps[0], abs=1e-4)
    if c.finish_reason == "length":
        assert b"".join(bytes(e.bytes) for e in entries) == c.message.content.encode()


# --------------------------------------------------------------------------
# completions
# --------------------------------------------------------------------------


def test_completion_basic(client, model_id):
    r = complete(client, model_id)
    assert r.object == "text_completion"
    assert r.id.startswith("cmpl-")
    assert r.model == model_id
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0
    assert isinstance(c.text, str)
    assert c.finish_reason in ("stop", "length")
    u = r.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert 1 <= u.completion_tokens <= 8


def test_completion_default_max_tokens_is_16(client, model_id):
    r = client.completions.create(
        model=model_id, prompt=PROMPT2, temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 16


def test_completion_stream_matches_non_stream(client, model_id):
    ref = complete(client, model_id)
    chunks = list(complete(client, model_id, stream=True, stream_options={"include_usage": True}))
    assert len({ch.id for ch in chunks}) == 1
    assert chunks[0].id.startswith("cmpl-")
    assert all(ch.object == "text_completion" for ch in chunks)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens == ref.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])
    text = "".join(ch.choices[0].text for ch in chunks[:-1])
    assert text == ref.choices[0].text
    finishes = [ch.choices[0].finish_reason for ch in chunks[:-1] if ch.choices[0].finish_reason]
    assert finishes == [ref.choices[0].finish_reason]


def test_completion_prompt_list_of_strings(client, model_id):
    a = complete(client, model_id, prompt=PROMPT).choices[0].text
    b = complete(client, model_id, prompt=PROMPT2).choices[0].text
    r = complete(client, model_id, prompt=[PROMPT, PROMPT2])
    assert sorted(c.index for c in r.choices) == [0, 1]
    by_index = {c.index: c.text for c in r.choices}
    assert by_index[0] == a
    assert by_index[1] == b


def test_completion_prompt_token_ids(client, server, model_id):
    ids = tokenize(server, PROMPT)
    assert ids
    ref = complete(client, model_id)
    r = complete(client, model_id, prompt=ids)
    assert r.choices[0].text == ref.choices[0].text
    assert r.usage.prompt_tokens == ref.usage.prompt_tokens


def test_completion_prompt_list_of_token_id_lists(client, server, model_id):
    ids1 = tokenize(server, PROMPT)
    ids2 = tokenize(server, PROMPT2)
    r = complete(client, model_id, prompt=[ids1, ids2], max_tokens=4)
    assert sorted(c.index for c in r.choices) == [0, 1]
    ref2 = complete(client, model_id, prompt=PROMPT2, max_tokens=4).choices[0].text
    assert {c.index: c.text for c in r.choices}[1] == ref2


def test_completion_echo(client, model_id):
    r = complete(client, model_id, echo=True, max_tokens=4)
    assert r.choices[0].text.startswith(PROMPT)
    assert len(r.choices[0].text) > len(PROMPT) or r.choices[0].finish_reason == "stop"


def test_completion_logprobs(client, model_id):
    r = complete(client, model_id, logprobs=2, max_tokens=4)
    c = r.choices[0]
    lp = c.logprobs
    assert lp is not None
    n = r.usage.completion_tokens
    lengths = {len(lp.tokens), len(lp.token_logprobs), len(lp.top_logprobs), len(lp.text_offset)}
    assert len(lengths) == 1, lengths
    if c.finish_reason == "length":
        assert len(lp.tokens) == n
        if not any("\ufffd" in t for t in lp.tokens):
            assert "".join(lp.tokens) == c.text
    else:
        assert len(lp.tokens) in (n, n - 1)
    for tok, tlp, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert isinstance(tok, str)
        assert isinstance(tlp, float) and tlp <= 0.0
        assert isinstance(top, dict) and 1 <= len(top) <= 2
        assert all(isinstance(k, str) and isinstance(v, float) and v <= 0.0 for k, v in top.items())
        # temperature 0: the chosen token is the top one
        assert tlp == pytest.approx(max(top.values()), abs=1e-4)
    assert all(isinstance(o, int) for o in lp.text_offset)
    assert lp.text_offset == sorted(lp.text_offset)


def test_completion_max_tokens_length(client, model_id):
    r = complete(client, model_id, max_tokens=3, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3


# --------------------------------------------------------------------------
# stop strings
# --------------------------------------------------------------------------


def _stop_candidates(client, model_id):
    """Greedy 24-token text of PROMPT2 and two stop strings inside it: a word
    from the middle (it sits inside a token that begins with a space), and a
    3-char piece "x y" across two words, which spans a token boundary."""
    ref = complete(client, model_id, prompt=PROMPT2, max_tokens=24)
    text = ref.choices[0].text
    words = text.split()
    assert len(words) >= 6, f"greedy text too short to pick a stop string from: {text!r}"
    k = len(words) // 2
    stops = []
    if text.find(words[k]) > 0:
        stops.append(words[k])
    for j in range(k, len(words) - 1):
        piece = words[j][-1] + " " + words[j + 1][0]
        if text.find(piece) > 0:
            stops.append(piece)
            break
    assert stops, f"no usable stop string in {text!r}"
    return text, stops


def test_stop_strings(client, model_id):
    text, stops = _stop_candidates(client, model_id)
    for stop in stops:
        want = text[: text.find(stop)]
        r = complete(client, model_id, prompt=PROMPT2, max_tokens=24, stop=[stop])
        got = r.choices[0].text
        assert got == want, f"stop={stop!r}"
        assert stop not in got
        assert r.choices[0].finish_reason == "stop"

        chunks = list(complete(client, model_id, prompt=PROMPT2, max_tokens=24, stop=[stop], stream=True))
        streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        assert streamed == want, f"streaming, stop={stop!r}"
        finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert finishes == ["stop"]


def test_stop_string_chat(client, model_id):
    ref = chat(client, model_id, content="Tell me about Paris.", max_tokens=24)
    text = ref.choices[0].message.content
    words = text.split()
    assert len(words) >= 4, text
    stop = words[len(words) // 2]
    want = text[: text.find(stop)]
    r = chat(client, model_id, content="Tell me about Paris.", max_tokens=24, stop=stop)
    assert r.choices[0].message.content == want
    assert r.choices[0].finish_reason == "stop"
    chunks = list(chat(client, model_id, content="Tell me about Paris.", max_tokens=24, stop=stop, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------


def test_models(client):
    models = client.models.list().data
    assert len(models) >= 1
    m = models[0]
    assert m.object == "model"
    assert isinstance(m.id, str) and m.id
    assert isinstance(m.owned_by, str)
    got = client.models.retrieve(m.id)
    assert got.id == m.id and got.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_model_id_is_file_basename(model_id):
    from conftest import CINFER_MODEL

    name = CINFER_MODEL.name
    assert model_id == (name[: -len(".gguf")] if name.endswith(".gguf") else name)


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


def test_error_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as ei:
        chat(client, "nope", max_tokens=2)
    assert ei.value.status_code == 404
    err = err_obj(ei.value)
    assert err["code"] == "model_not_found"
    assert err["param"] == "model"


@pytest.mark.parametrize(
    "kw,param",
    [
        ({"temperature": -1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 2}, "top_p"),
        ({"n": 17}, "n"),
        ({"n": 0}, "n"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"stop": [str(i) for i in range(17)]}, "stop"),
        ({"extra_body": {"top_k": -2}}, "top_k"),
        ({"extra_body": {"min_p": 1.5}}, "min_p"),
        ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty"),
        ({"logit_bias": {"1": 101}}, "logit_bias"),
    ],
)
def test_error_param_range(client, model_id, kw, param):
    kw = dict(kw)
    kw.setdefault("max_tokens", 2)
    with pytest.raises(openai.BadRequestError) as ei:
        chat(client, model_id, **kw)
    err = err_obj(ei.value)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param, err


def test_error_completion_logprobs_range(client, model_id):
    with pytest.raises(openai.BadRequestError) as ei:
        complete(client, model_id, logprobs=21, max_tokens=2)
    assert err_obj(ei.value)["param"] == "logprobs"


def test_error_empty_messages(client, model_id):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=model_id, messages=[], max_tokens=2)
    assert err_obj(ei.value)["type"] == "invalid_request_error"


def test_error_context_length_exceeded_prompt(client, model_id):
    with pytest.raises(openai.BadRequestError) as ei:
        chat(client, model_id, content="hello " * 20000, max_tokens=4)
    assert err_obj(ei.value)["code"] == "context_length_exceeded"


def test_error_context_length_exceeded_max_tokens(client, model_id):
    # prompt + max_tokens beyond the context is refused up front, not truncated
    with pytest.raises(openai.BadRequestError) as ei:
        complete(client, model_id, max_tokens=1_000_000)
    assert err_obj(ei.value)["code"] == "context_length_exceeded"


# --------------------------------------------------------------------------
# API key
# --------------------------------------------------------------------------


def test_api_key_wrong(keyed_server):
    bad = make_client(keyed_server, api_key="wrong")
    with pytest.raises(openai.AuthenticationError) as ei:
        bad.models.list()
    assert ei.value.status_code == 401
    err = err_obj(ei.value)
    assert err["type"] == "authentication_error"
    assert err["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(messages=[{"role": "user", "content": "hi"}], model="x", max_tokens=1)


def test_api_key_missing(keyed_server):
    status, body = keyed_server.json(
        "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    )
    assert status == 401, body
    assert body["error"]["code"] == "invalid_api_key"


def test_api_key_right(keyed_server):
    good = make_client(keyed_server, api_key=API_KEY)
    mid = good.models.list().data[0].id
    r = good.chat.completions.create(
        model=mid, messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0
    )
    assert r.choices[0].message.role == "assistant"


def test_api_key_health_open(keyed_server):
    status, _, _ = keyed_server.request("GET", "/health")
    assert status == 200


# --------------------------------------------------------------------------
# error JSON shape, raw
# --------------------------------------------------------------------------


def _check_error_shape(status, data):
    body = json.loads(data)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["param"] is None or isinstance(err["param"], str), err
    assert err["code"] is None or isinstance(err["code"], str), err
    return err


def test_error_json_shape(server, keyed_server, model_id):
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        (server, "POST", "/v1/chat/completions", {"messages": msgs, "temperature": "hot"}, 400),
        (server, "POST", "/v1/chat/completions", {"model": "nope", "messages": msgs}, 404),
        (server, "POST", "/v1/completions", {"prompt": "x", "max_tokens": -1}, 400),
        (server, "POST", "/v1/chat/completions", b"{not json", 400),
        (server, "GET", "/v1/models/nope", None, 404),
        (server, "GET", "/v2/foo", None, 404),
        (server, "GET", "/v1/chat/completions", None, 405),
        (keyed_server, "GET", "/v1/models", None, 401),
    ]
    for srv, method, path, body, want in cases:
        status, headers, data = srv.request(method, path, body)
        assert status == want, (method, path, body, status, data[:300])
        assert headers.get("Content-Type", "").startswith("application/json"), (path, headers.get("Content-Type"))
        err = _check_error_shape(status, data)
        if want == 400:
            assert err["type"] == "invalid_request_error", err
        if want == 401:
            assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key", err


def test_fields_cinfer_cannot_honour_are_refused(client, model_id):
    """Each field that asks for what cinfer does not do is a 400 naming it,
    never an answer in free text: a response_format type it does not know,
    tool_choice required without tools, OpenAI's deprecated functions.  The
    requests that ask for nothing more (response_format text, tool_choice
    none) pass.  (Structured output: tests/integration/test_structured.py;
    tools: tests/integration/test_tools.py.)"""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    asks = [
        ("response_format", {"response_format": {"type": "yaml"}}),
        ("tool_choice", {"tool_choice": "required"}),
        ("functions", {"extra_body": {"functions": [{"name": "f", "parameters": schema}]}}),
    ]
    for param, kw in asks:
        with pytest.raises(openai.BadRequestError) as ei:
            chat(client, model_id, **kw)
        e = err_obj(ei.value)
        assert e["param"] == param and param in e["message"], (kw, e)
    assert chat(client, model_id, response_format={"type": "text"}).choices[0].message.content
    assert chat(client, model_id, tool_choice="none").choices[0].message.content

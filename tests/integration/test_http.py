"""`cinfer serve` over raw HTTP (http.client): routes, metrics, SSE framing,
body limits, and a barrage of malformed / hostile request bodies."""

import http.client
import json
import re
import socket
import threading
import time

import pytest

MiB = 1 << 20


# --------------------------------------------------------------------------
# raw HTTP helper
# --------------------------------------------------------------------------


class Result:
    def __init__(self):
        self.status = None  # None: no status line came back
        self.headers = None
        self.data = b""
        self.send_error = None  # the server closed while the body was going out
        self.recv_error = None  # no (complete) response

    def json(self):
        return json.loads(self.data)

    def __repr__(self):
        return (f"status={self.status} send_error={self.send_error!r} recv_error={self.recv_error!r} "
                f"body={self.data[:300]!r}")


def post_raw(srv, path, body, timeout=60, content_type="application/json", method="POST"):
    """Sends BODY (bytes) with a Content-Length; a server that answers early
    and closes (413) is tolerated while sending, then the response is read."""
    r = Result()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    try:
        conn.putrequest(method, path)
        conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        try:
            view = memoryview(body)
            for i in range(0, len(body), 1 << 16):
                conn.send(view[i:i + (1 << 16)])
        except OSError as e:  # broken pipe, reset, timeout
            r.send_error = e
        try:
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            r.recv_error = e
            return r
        r.status = resp.status
        r.headers = resp.headers
        try:
            r.data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            r.recv_error = e
        return r
    finally:
        conn.close()


def get(srv, path, timeout=30):
    return srv.request("GET", path, timeout=timeout)


def assert_error_json(data, status=None):
    body = json.loads(data)
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    err = body["error"]
    assert isinstance(err.get("message"), str) and err["message"], err
    assert isinstance(err.get("type"), str), err
    assert "param" in err and (err["param"] is None or isinstance(err["param"], str)), err
    assert "code" in err and (err["code"] is None or isinstance(err["code"], str)), err
    return err


def metric_values(text, name):
    """Sum of all samples of metric NAME (any labels) in Prometheus text."""
    total, seen = 0.0, False
    pat = re.compile(r"^" + re.escape(name) + r"(\{[^}]*\})?\s+(\S+)")
    for line in text.splitlines():
        m = pat.match(line)
        if m:
            total += float(m.group(2))
            seen = True
    assert seen, f"no samples of {name} in /metrics"
    return total


def chat_body(model_id, content="What is 2+2?", **kw):
    b = {"model": model_id, "messages": [{"role": "user", "content": content}], "max_tokens": 8, "temperature": 0}
    b.update(kw)
    return b


def greedy_chat_text(srv, model_id, content="What is 2+2?", max_tokens=8):
    status, body = srv.json("POST", "/v1/chat/completions", chat_body(model_id, content, max_tokens=max_tokens))
    assert status == 200, body
    return body["choices"][0]["message"]["content"]


# --------------------------------------------------------------------------
# routes
# --------------------------------------------------------------------------


def test_health(server):
    status, _, _ = get(server, "/health")
    assert status == 200


def test_version(server):
    status, headers, data = get(server, "/version")
    assert status == 200
    body = json.loads(data)
    assert isinstance(body.get("version"), str) and body["version"]


METRICS = [
    "cinfer:num_requests_running",
    "cinfer:prompt_tokens_total",
    "cinfer:generation_tokens_total",
    "cinfer:time_to_first_token_seconds_bucket",
    "cinfer:e2e_request_latency_seconds_bucket",
]


def test_metrics(server, model_id):
    status, _, data = get(server, "/metrics")
    assert status == 200
    text = data.decode()
    for name in METRICS:
        assert name in text, name
    assert "cinfer:http_requests_total{" in text
    before = metric_values(text, "cinfer:generation_tokens_total")
    prompt_before = metric_values(text, "cinfer:prompt_tokens_total")

    status, body = server.json(
        "POST", "/v1/completions",
        {"model": model_id, "prompt": "Hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True},
    )
    assert status == 200, body

    text = get(server, "/metrics")[2].decode()
    after = metric_values(text, "cinfer:generation_tokens_total")
    assert after >= before + 4, (before, after)
    assert metric_values(text, "cinfer:prompt_tokens_total") > prompt_before
    assert metric_values(text, "cinfer:num_requests_running") == 0


def test_unknown_path_404(server):
    for method, path in [("GET", "/v2/foo"), ("POST", "/v2/foo"), ("GET", "/"), ("GET", "/v1/nothing")]:
        status, _, data = server.request(method, path, b"{}" if method == "POST" else None)
        assert status == 404, (method, path, status)
        assert_error_json(data)


def test_wrong_method_405(server):
    for method, path in [("GET", "/v1/chat/completions"), ("GET", "/v1/completions"),
                         ("DELETE", "/v1/models"), ("POST", "/health"), ("PUT", "/tokenize")]:
        status, _, data = server.request(method, path, b"{}" if method in ("POST", "PUT") else None)
        assert status == 405, (method, path, status)
        assert_error_json(data)


def test_tokenize_detokenize_roundtrip(server):
    text = "The capital of France is Paris. Ünïcödé → 日本語 🎉"
    status, body = server.json("POST", "/tokenize", {"content": text})
    assert status == 200, body
    toks = body["tokens"]
    assert toks and all(isinstance(t, int) for t in toks)
    status, body = server.json("POST", "/detokenize", {"tokens": toks})
    assert status == 200, body
    assert body["content"] == text


def test_detokenize_bad_ids(server):
    for toks in ([-1], [10**9], [2**31], [2**32], [2**63], ["a"], [1.5], "x", None):
        r = post_raw(server, "/detokenize", json.dumps({"tokens": toks}).encode())
        assert r.status is not None and 400 <= r.status < 500, (toks, r)
        if r.status == 400:
            assert_error_json(r.data)


# --------------------------------------------------------------------------
# SSE framing
# --------------------------------------------------------------------------


def _check_sse(r, obj):
    assert r.status == 200, r
    assert r.headers.get("Content-Type", "").startswith("text/event-stream"), r.headers.get("Content-Type")
    text = r.data.decode("utf-8")
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    events = text.split("\n\n")
    assert events[-1] == ""
    events = events[:-1]
    assert events[-1] == "data: [DONE]"
    assert len(events) >= 3
    for ev in events[:-1]:
        assert ev.startswith("data: "), repr(ev)
        assert "\n" not in ev, f"one line per event expected: {ev!r}"
        chunk = json.loads(ev[len("data: "):])
        assert chunk["object"] == obj, chunk
    return [json.loads(ev[6:]) for ev in events[:-1]]


def test_sse_shape_chat(server, model_id):
    body = chat_body(model_id, stream=True, stream_options={"include_usage": True})
    chunks = _check_sse(post_raw(server, "/v1/chat/completions", json.dumps(body).encode()), "chat.completion.chunk")
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    for ch in chunks[:-1]:
        assert "usage" in ch and ch["usage"] is None, ch
    assert chunks[-1]["choices"] == [] and isinstance(chunks[-1]["usage"], dict)
    # the finish chunk has an empty delta
    fin = [ch for ch in chunks[:-1] if ch["choices"][0].get("finish_reason")]
    assert len(fin) == 1
    assert not fin[0]["choices"][0]["delta"].get("content")


def test_sse_shape_completions(server, model_id):
    body = {"model": model_id, "prompt": "Hello", "max_tokens": 4, "temperature": 0, "stream": True}
    chunks = _check_sse(post_raw(server, "/v1/completions", json.dumps(body).encode()), "text_completion")
    assert all(len(ch["choices"]) == 1 for ch in chunks)


# --------------------------------------------------------------------------
# body limits
# --------------------------------------------------------------------------


def test_body_too_large_413(server, model_id):
    body = (b'{"model": "' + model_id.encode() + b'", "messages": [{"role": "user", "content": "'
            + b" " * (10 * 1000 * 1000) + b'"}]}')
    assert len(body) > 8 * MiB
    r = post_raw(server, "/v1/chat/completions", body)
    assert r.status == 413, f"no 413 status line received: {r}"
    if r.recv_error is None:
        err = assert_error_json(r.data)
        assert err["code"] == "request_too_large", err
    # and the server is fine afterwards
    assert get(server, "/health")[0] == 200


# --------------------------------------------------------------------------
# concurrency and client disconnects (beyond the letter of the spec, but
# what a server with continuous batching must get right)
# --------------------------------------------------------------------------


def test_concurrent_greedy_matches_sequential(server, model_id):
    prompts = ["What is 2+2?", "Name a color.", "Say hello.", "What is the capital of Italy?"]
    seq = [greedy_chat_text(server, model_id, p) for p in prompts]
    out = [None] * len(prompts)

    def work(i):
        out[i] = greedy_chat_text(server, model_id, prompts[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert out == seq


def test_client_disconnect_mid_stream_cancels(server, model_id):
    body = json.dumps(chat_body(model_id, "Write a long story.", max_tokens=2000,
                                stream=True, ignore_eos=True)).encode()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while got.count(b"data: ") < 3:
            d = s.recv(4096)
            assert d, f"stream ended early: {got[:500]!r}"
            got += d
        assert re.match(rb"HTTP/1\.[01] 200 ", got), got[:200]
    finally:
        s.close()
    # the 2000-token request must stop soon after its client went away
    deadline = time.monotonic() + 8
    running = None
    while time.monotonic() < deadline:
        running = metric_values(get(server, "/metrics")[2].decode(), "cinfer:num_requests_running")
        if running == 0:
            break
        time.sleep(0.1)
    assert running == 0, "generation went on after the client disconnected"


# --------------------------------------------------------------------------
# hostile bodies
# --------------------------------------------------------------------------

ANY4XX = {400, 404, 413, 422}
BAD = {400}  # clearly wrong types / out of range
MAYBE = {200, 400, 404, 422}  # legitimately accepted or refused; never 5xx or a drop

RAW = "\u0001RAW\u0001"  # placeholder for a raw JSON literal


def dump(obj, raw=None):
    """JSON text of OBJ (bytes); the string RAW is replaced by the literal RAW text."""
    text = json.dumps(obj)
    if raw is not None:
        text = text.replace(json.dumps(RAW), raw)
    return text.encode()


def build_cases(model_id):
    chat = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "temperature": 0}
    comp = {"model": model_id, "prompt": "hi", "max_tokens": 1, "temperature": 0}
    C, P = "/v1/chat/completions", "/v1/completions"
    cases = []  # (label, path, body bytes, allowed statuses)

    def add(label, path, body, allowed):
        cases.append((label, path, body, allowed))

    def field(path, name, value, allowed, base=None, raw=None):
        b = dict(base or (chat if path == C else comp))
        b[name] = value
        add(f"{path} {name}={raw if raw is not None else value!r:.60}", path, dump(b, raw), allowed)

    both, chat_only, comp_only = (C, P), (C,), (P,)
    S, A, O = "x", [1], {"a": 1}

    wrong = {
        # name: (endpoints, wrong values)
        "model": (both, [7, 1.5, [model_id], {"id": model_id}, True]),
        "max_tokens": (both, ["5", [5], {"n": 5}, True, 1.5, -1, 0]),
        "temperature": (both, ["0.5", [0.5], O, True, -0.1, 2.01]),
        "top_p": (both, ["0.5", [1], O, True, 0, -0.5, 1.01]),
        "top_k": (both, ["5", [5], O, True, 1.5, -2]),
        "min_p": (both, ["0.1", [0.1], O, True, -0.1, 1.1]),
        "n": (both, ["2", [2], O, True, 1.5, 0, 17, -1]),
        "stop": (both, [7, {"s": "x"}, True, [7], [["x"]], [None], [str(i) for i in range(17)]]),
        "seed": (both, ["1", [1], O, True, 1.5]),
        "presence_penalty": (both, ["0", [0], O, True, 2.5, -2.5]),
        "frequency_penalty": (both, ["0", [0], O, True, 2.5, -2.5]),
        "repetition_penalty": (both, ["1", [1], O, True, 0, -1, 2.5]),
        "logit_bias": (both, [S, A, 7, True, {"abc": 1}, {"1": "x"}, {"1": 101}, {"1": -101},
                              {"99999999": 1}, {"-1": 1}, {"1.5": 1}, {"": 1}, {"1": None}, {"1": [1]},
                              {"1": {}}, {"0x10": 1}, {" 1": 1}, {"1e3": 1}, {"2147483648": 1},
                              {"4294967296": 1}, {"18446744073709551617": 1}]),
        "stream": (both, ["yes", 1, [True], O]),
        "stream_options": (both, [S, 7, A, True, {"include_usage": "yes"}, {"include_usage": 1}]),
        "ignore_eos": (both, ["yes", 1, [True], O]),
        "user": (both, [7, A, O, True]),
        "messages": (chat_only, ["hi", 7, {"role": "user", "content": "hi"}, True, [], ["hi"], [7], [[]],
                                 [{"role": 7, "content": "hi"}], [{"role": ["user"], "content": "hi"}],
                                 [{"content": "hi"}], [{"role": "user"}],
                                 [{"role": "user", "content": 7}], [{"role": "user", "content": {"a": 1}}],
                                 [{"role": "user", "content": [7]}], [{"role": "user", "content": [[]]}],
                                 [{"role": "user", "content": [{"type": "text", "text": 7}]}],
                                 [{"role": "user", "content": [{"type": "text"}]}],
                                 [{"role": "user", "content": [{"text": "hi"}]}],
                                 [{"role": "user", "content": [{"type": 7, "text": "hi"}]}],
                                 [{"role": "user\u0000x", "content": "hi"}]]),
        "logprobs": (chat_only, ["yes", 7, [True], O]),
        "top_logprobs": (chat_only, ["3", [3], O, True, 1.5, -1, 21]),
        "max_completion_tokens": (chat_only, ["5", [5], O, True, 1.5, -1, 0]),
        "prompt": (comp_only, [7, 1.5, O, True, [O], [1.5], [True], [[1.5]], ["a", 1], [[1, "a"]],
                               [[[1]]], [-1], [10**9], [2**31], [2**32], [2**63], [[10**9]], [["a"]]]),
        "echo": (comp_only, ["yes", 1, [True], O]),
    }
    comp_logprobs_wrong = ["2", True, [2], O, 1.5, -1, 21]

    for name, (paths, values) in wrong.items():
        for path in paths:
            base = None
            if name == "top_logprobs":
                base = dict(chat, logprobs=True)
            if name == "stream_options":
                base = dict(chat if path == C else comp, stream=True)
            for v in values:
                field(path, name, v, BAD, base)
            # null: accepted for optional fields, refused for required ones
            if name == "messages":
                field(path, name, None, BAD)
            elif name == "max_tokens" and path == C:
                # a null max_tokens in chat means "until the context is full": bound it
                field(path, name, None, MAYBE, dict(chat, max_completion_tokens=1))
            elif name == "max_completion_tokens":
                field(path, name, None, MAYBE, dict(chat, max_tokens=1))
            else:
                field(path, name, None, MAYBE, base)
    for v in comp_logprobs_wrong:
        field(P, "logprobs", v, BAD)
    field(P, "logprobs", None, MAYBE)

    # arguably valid edge values: must not crash (empty prompt = zero tokens for a model without BOS)
    for v in ["", [], [[]], [""]]:
        field(P, "prompt", v, MAYBE)
    field(P, "prompt", "\u0000", MAYBE)
    field(C, "stop", "", MAYBE)
    field(C, "stop", [""], MAYBE)
    field(C, "seed", -1, MAYBE)
    field(C, "seed", RAW, MAYBE, raw="99999999999999999999")
    field(C, "messages", [{"role": "user", "content": ""}], MAYBE)
    field(C, "messages", [{"role": "user", "content": "a\u0000b"}], MAYBE)
    field(C, "stop", ["\u0000"], MAYBE)
    field(C, "model", model_id + "\u0000x", {400, 404})
    field(P, "model", model_id + "\u0000", {400, 404})

    # huge numbers and non-JSON number literals
    numeric = ["temperature", "top_p", "top_k", "min_p", "n", "max_tokens", "presence_penalty",
               "frequency_penalty", "repetition_penalty"]
    huge = ["1e308", "-1e308", "1e400", "-1e400", "99999999999999999999", "-99999999999999999999"]
    for i, name in enumerate(numeric):
        path = (C, P)[i % 2]
        for lit in huge:
            field(path, name, RAW, BAD, raw=lit)
    for lit in ["1e308", "-1e308", "1e400"]:
        field(C, "seed", RAW, BAD, raw=lit)
    field(C, "top_logprobs", RAW, BAD, dict(chat, logprobs=True), raw="1e400")
    field(P, "logprobs", RAW, BAD, raw="99999999999999999999")
    field(P, "prompt", [RAW], ANY4XX, raw="1e400")
    for i, lit in enumerate(["NaN", "Infinity", "-Infinity", "nan", "inf", "-inf", "+1", ".5", "0x10", "-"]):
        for name in ("temperature", "max_tokens", "top_p", "seed"):
            field((C, P)[i % 2], name, RAW, ANY4XX, raw=lit)
    # not JSON either, but harmless if a lenient number parser takes them
    for lit in ["01", "1."]:
        field(C, "temperature", RAW, MAYBE, raw=lit)

    # truncated JSON: every prefix of a chat request, every 3rd of a completions one
    full_c = dump(dict(chat, stop=["\n"], top_p=0.9, stream=False, logit_bias={"1": -1}))
    for k in range(len(full_c)):
        add(f"chat prefix {k}", C, full_c[:k], ANY4XX)
    full_p = dump(dict(comp, prompt=[[1, 2, 3], "x"], echo=False))
    for k in range(0, len(full_p), 3):
        add(f"completions prefix {k}", P, full_p[:k], ANY4XX)

    # not an object at the top level, junk around it
    for i, b in enumerate([b"", b"null", b"[]", b'"str"', b"123", b"true", b"   ", b"{", b"}", b"{}",
                           dump(chat) + b"x", dump(chat) + b"{}", b"{'model': 'x'}", b'{"a" 1}',
                           b'{"messages": [{"role": "user", "content": "hi"},]}', b"\x00", b"\xff\xfe"]):
        add(f"top-level {b[:40]!r}", (C, P)[i % 2] if b != b"{}" else C, b, ANY4XX)

    # deep nesting
    depth = 100000
    add("[ x 100000", C, b"[" * depth, ANY4XX)
    add('{"a": x 100000', P, b'{"a":' * depth, ANY4XX)
    add("messages nested", C, b'{"messages": ' + b"[" * depth, ANY4XX)
    add("messages nested closed", C, b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", ANY4XX)
    add("logit_bias nested", C, dump(chat)[:-1] + b', "logit_bias": {"1": ' + b"[" * depth + b"}", ANY4XX)
    add("prompt nested", P, b'{"prompt": ' + b"[" * depth + b"]" * depth + b"}", ANY4XX)

    # invalid UTF-8 and raw NULs inside strings
    bad_utf8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"\xe2\x82",
                b"\xf4\x90\x80\x80", b"\x80"]
    for i, seq in enumerate(bad_utf8):
        add(f"chat content utf8 {seq!r}", C,
            b'{"messages": [{"role": "user", "content": "a' + seq + b'"}], "max_tokens": 1}', ANY4XX)
        add(f"prompt utf8 {seq!r}", P, b'{"prompt": "a' + seq + b'", "max_tokens": 1}', ANY4XX)
    add("model utf8", C, b'{"model": "\xff", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}', ANY4XX)
    add("key utf8", C, b'{"mod\xffel": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}', ANY4XX)
    add("stop utf8", P, b'{"prompt": "hi", "stop": ["\xc3"], "max_tokens": 1}', ANY4XX)
    for esc in [b"\\ud800", b"\\udc00", b"\\ud800\\u0041", b"\\ud800x", b"\\u12", b"\\x41", b"\\"]:
        add(f"escape {esc!r}", C,
            b'{"messages": [{"role": "user", "content": "a' + esc + b'"}], "max_tokens": 1}', ANY4XX)
    add("raw NUL in content", C, b'{"messages": [{"role": "user", "content": "a\x00b"}], "max_tokens": 1}', ANY4XX)
    add("raw NUL in prompt", P, b'{"prompt": "a\x00b", "max_tokens": 1}', ANY4XX)
    add("raw NUL between tokens", C, b'{"messages": [{"role": "user", "content": "hi"}],\x00 "max_tokens": 1}', ANY4XX)
    add("raw NUL in model", P, b'{"model": "' + model_id.encode() + b'\x00", "prompt": "hi", "max_tokens": 1}',
        ANY4XX)

    # sizes
    add("stop x 1000", C, dump(dict(chat, stop=[f"s{i}" for i in range(1000)])), ANY4XX)
    add("stop x 1000 long", P, dump(dict(comp, stop=["x" * 1000] * 1000)), ANY4XX)
    big_msgs = dump(dict(chat, messages=[{"role": "user", "content": ""}] * 100000))
    assert len(big_msgs) < 8 * MiB
    add("messages x 100000", C, big_msgs, ANY4XX)
    add("10 MB body", P, b'{"prompt": "' + b" " * (10 * 1000 * 1000) + b'"}', {413})
    return cases


def test_hostile_bodies(server, model_id):
    before = greedy_chat_text(server, model_id)
    cases = build_cases(model_id)
    assert len(cases) >= 200, len(cases)
    failures = []
    for label, path, body, allowed in cases:
        r = post_raw(server, path, body, timeout=60)
        if r.status is None:
            if not server.alive():
                pytest.fail(f"server died on {label}: {r}\n--- server stderr ---\n{server.stderr_text()}")
            failures.append(f"{label}: no response ({r})")
            continue
        if r.status >= 500 or r.status not in allowed:
            failures.append(f"{label}: status {r.status}, allowed {sorted(allowed)}: {r.data[:200]!r}")
            continue
        if r.status == 400:
            try:
                assert_error_json(r.data)
            except Exception as e:  # noqa: BLE001
                failures.append(f"{label}: 400 without a proper error JSON ({e}): {r.data[:200]!r}")
        elif r.recv_error is not None and r.status != 413:
            failures.append(f"{label}: status {r.status} but the body was cut: {r.recv_error!r}")
    assert not failures, f"{len(failures)} of {len(cases)} hostile bodies mishandled:\n" + "\n".join(failures[:80])
    assert greedy_chat_text(server, model_id) == before

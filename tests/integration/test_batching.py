"""Continuous batching in `cinfer serve`: many streams at once give the same
greedy text as one stream alone; preemption when the KV pool runs short; the
prefix cache (cached_tokens, metrics); the waiting-queue limits (429 with
Retry-After); cancellation of running and queued requests when clients go
away; draining on SIGTERM (503 for new work, open streams finish, exit 0);
a second signal exits at once; GET /health/ready.

Tests that need special flags start their own server (a second or so each).
Raw HTTP goes through http.client, the rest through the openai package."""

import contextlib
import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from conftest import CINFER_BIN, CINFER_MODEL, Server, make_client

RATE_LIMIT_TYPE = "rate_limit_error"
RATE_LIMIT_CODE = "rate_limit_exceeded"
UNAVAILABLE_CODE = "service_unavailable"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


@contextlib.contextmanager
def serving(args, name):
    """A server started with ARGS for one test.  When the test fails, the
    server's exit status (if it died) and the tail of its stderr go to the
    test's captured stdout, and it is killed.  At a normal end a server still
    running gets SIGTERM and must exit 0; a test that ends the process itself
    checks its exit status itself."""
    srv = Server(args, name).start()
    ok = False
    try:
        yield srv
        ok = True
    finally:
        if not ok:
            died = srv.proc.poll()
            print(f"--- {name}: `{' '.join(srv.cmd)}`"
                  + (f" died with exit status {died}" if died is not None else "")
                  + f"; stderr (tail) ---\n{srv.stderr_text(6000)}")
            srv._kill()
    if srv.proc.poll() is None:
        rc = srv.stop()
        assert rc == 0, f"{name}: exit status after SIGTERM was {rc!r}, not 0\n--- server stderr ---\n{srv.stderr_text()}"
    with contextlib.suppress(OSError):
        os.unlink(srv._stderr.name)


def wait_for(pred, timeout, what, interval=0.1):
    """Polls PRED until it returns a true value; fails naming WHAT after TIMEOUT s."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text):
    """Prometheus text -> {name: sum of its samples over all label sets}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def metrics(srv):
    status, _, data = srv.request("GET", "/metrics", timeout=10)
    assert status == 200, data[:300]
    return parse_metrics(data.decode())


def metric(srv, name, m=None):
    m = metrics(srv) if m is None else m
    assert name in m, f"no samples of {name} in /metrics (has: {sorted(m)})"
    return m[name]


def gauges(srv):
    m = metrics(srv)
    return (metric(srv, "cinfer:num_requests_running", m), metric(srv, "cinfer:num_requests_waiting", m),
            metric(srv, "cinfer:kv_cache_usage_perc", m))


def ready_line_kv(srv, timeout=5):
    """(blocks, tokens per block) from the server's 'ready in ...' log line, or None."""
    pat = re.compile(r"KV cache (\d+) blocks of (\d+) tokens")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = pat.search(srv.stderr_text())
        if m:
            return int(m.group(1)), int(m.group(2))
        time.sleep(0.05)
    return None


def tokenize(srv, text):
    status, body = srv.json("POST", "/tokenize", {"content": text})
    assert status == 200, body
    return body["tokens"]


def text_of_tokens(srv, sentences, min_tokens, max_tokens=None):
    """SENTENCES joined, then words of the next one, until the text has at
    least MIN_TOKENS tokens (checked with /tokenize) -> (text, tokens)."""
    text = ""
    for s in sentences:
        if len(tokenize(srv, text + s)) < min_tokens:
            text += s
            continue
        for w in s.split(" ")[1:]:
            text += " " + w
            n = len(tokenize(srv, text))
            if n >= min_tokens:
                assert max_tokens is None or n <= max_tokens, (n, text)
                return text, n
    raise AssertionError(f"not enough sentences for {min_tokens} tokens")


def filler(tag, count=200):
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "white"]
    things = ["box", "cup", "lamp", "stone", "book"]
    return [f" {tag} {i}: the {colors[(i * 3) % 7]} {things[i % 5]} weighs {3 * i + 1} grams"
            f" and sits on shelf {i % 9}." for i in range(count)]


def comp_body(prompt, max_tokens, **kw):
    b = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    b.update(kw)
    return b


def post(srv, body, path="/v1/completions", timeout=120):
    """One raw POST -> (status, headers, body bytes); ('error', None, repr) if no response came."""
    try:
        return srv.request("POST", path, body, timeout=timeout)
    except (OSError, http.client.HTTPException) as e:
        return "error", None, repr(e).encode()


def error_obj(data):
    body = json.loads(data)
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    err = body["error"]
    assert isinstance(err.get("message"), str) and err["message"], err
    assert isinstance(err.get("type"), str) and err["type"], err
    assert "code" in err, err
    assert "param" in err, err
    return err


def assert_429(status, headers, data):
    assert status == 429, (status, data[:300])
    ra = headers.get("Retry-After")
    assert ra is not None, "a 429 without Retry-After"
    assert ra.strip().isdigit() and int(ra) >= 1, f"Retry-After: {ra!r}"
    err = error_obj(data)
    assert err["type"] == RATE_LIMIT_TYPE and err["code"] == RATE_LIMIT_CODE, err
    return err


def assert_completion(data, max_tokens=None):
    body = json.loads(data)
    assert body.get("object") == "text_completion", body
    assert body["choices"] and all(isinstance(c["text"], str) for c in body["choices"]), body
    assert all(c["finish_reason"] in ("stop", "length") for c in body["choices"]), body
    if max_tokens is not None:
        assert body["usage"]["completion_tokens"] == max_tokens * len(body["choices"]), body["usage"]
    return body


class Stream:
    """A streaming completion over a raw connection (http.client).  The request
    goes out at construction; start() waits for the status line; events are
    read one at a time so a test can stop reading and close whenever it likes."""

    def __init__(self, srv, body, path="/v1/completions", timeout=60):
        body = dict(body, stream=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
        self.conn.request("POST", path, body=json.dumps(body).encode(),
                          headers={"Content-Type": "application/json"})
        self.sock = self.conn.sock
        self.resp = None
        self.chunks = []  # the JSON events
        self.text = ""
        self.n_content = 0  # events that carried text
        self.finish_reasons = []
        self.usage = None
        self.done = False  # saw data: [DONE]
        self.eof = False
        self.error = None  # what ended a background read_all early
        self.got_content = threading.Event()

    def start(self):
        if self.resp is None:
            self.resp = self.conn.getresponse()
            assert self.resp.status == 200, (self.resp.status, self.resp.read()[:300])
            ctype = self.resp.headers.get("Content-Type", "")
            assert ctype.startswith("text/event-stream"), ctype
        return self

    def next_event(self):
        """The next event: a dict, '[DONE]', or None at the end of the body."""
        self.start()
        data = []
        while True:
            line = self.resp.readline()
            if not line:
                self.eof = True
                return None
            line = line.rstrip(b"\r\n")
            if not line:
                if data:
                    break
                continue
            if line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" "))
            # other fields and ':' comments (keep-alives) are skipped
        payload = b"\n".join(data).decode("utf-8")
        if payload == "[DONE]":
            self.done = True
            return payload
        ev = json.loads(payload)
        self.chunks.append(ev)
        if ev.get("usage"):
            self.usage = ev["usage"]
        for c in ev.get("choices") or []:
            piece = c.get("text")
            if piece is None:
                piece = (c.get("delta") or {}).get("content") or ""
            if piece:
                self.text += piece
                self.n_content += 1
                self.got_content.set()
            if c.get("finish_reason"):
                self.finish_reasons.append(c["finish_reason"])
        return ev

    def read_until_content(self, n):
        while self.n_content < n:
            ev = self.next_event()
            assert ev is not None and ev != "[DONE]", \
                f"stream ended after {self.n_content} content events, {n} wanted: {self.text!r}"
        return self

    def read_all(self):
        try:
            while self.next_event() not in (None, "[DONE]"):
                pass
            if self.done:  # nothing may follow [DONE]
                if self.next_event() is not None:
                    self.error = "an event after data: [DONE]"
        except Exception as e:  # noqa: BLE001 - kept for the test thread to report
            self.error = repr(e)
        return self

    def close(self):
        with contextlib.suppress(OSError):
            if self.sock is not None:
                self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.conn.close()


def long_stream_body(i, max_tokens=2000):
    return comp_body(f"Write a very long story about dragon number {i} and its cave.", max_tokens,
                     ignore_eos=True)


# --------------------------------------------------------------------------
# 1. many streams at once == each alone
# --------------------------------------------------------------------------

CHAT_PROMPTS = [
    "What is 2+2?", "Name a color.", "Say hello to Bob.", "What is the capital of Italy?",
    "Describe the sea in one sentence.", "List three fruits.", "What do cats eat?", "Why is the sky blue?",
]
COMP_PROMPTS = [
    "Once upon a time", "The capital of France is", "def fibonacci(n):", "My favourite food is",
    "The quick brown fox", "In the year 2050,", "Dear diary, today I", "The three laws of robotics are",
]
N_CONC_TOKENS = 24


def _request(client, model_id, kind, prompt, stream):
    """-> (text, [finish reasons], completion_tokens, time of the first and the last content)"""
    kw = dict(model=model_id, max_tokens=N_CONC_TOKENS, temperature=0, extra_body={"ignore_eos": True})
    if kind == "chat":
        kw["messages"] = [{"role": "user", "content": prompt}]
        create = client.chat.completions.create
    else:
        kw["prompt"] = prompt
        create = client.completions.create
    if not stream:
        r = create(**kw)
        c = r.choices[0]
        return (c.message.content if kind == "chat" else c.text), [c.finish_reason], r.usage.completion_tokens, 0, 0
    text, finishes, usage, first, last = "", [], None, None, None
    for ch in create(stream=True, stream_options={"include_usage": True}, **kw):
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            piece = c.delta.content if kind == "chat" else c.text
            if piece:
                text += piece
                last = time.monotonic()
                first = first or last
            if c.finish_reason:
                finishes.append(c.finish_reason)
    assert usage is not None, "no usage chunk with include_usage"
    return text, finishes, usage.completion_tokens, first, last


def test_concurrent_streams_match_alone(server, model_id):
    jobs = [("chat", p) for p in CHAT_PROMPTS] + [("completion", p) for p in COMP_PROMPTS]
    assert len(jobs) == 16
    client = make_client(server)
    alone = [_request(client, model_id, kind, p, stream=False) for kind, p in jobs]
    for (kind, p), (text, fin, n, _, _) in zip(jobs, alone):
        assert fin == ["length"] and n == N_CONC_TOKENS, (kind, p, fin, n)
        assert text, (kind, p)

    clients = [make_client(server) for _ in jobs]
    barrier = threading.Barrier(len(jobs))

    def work(i):
        barrier.wait(30)
        return _request(clients[i], model_id, *jobs[i], stream=True)

    with ThreadPoolExecutor(len(jobs)) as ex:
        together = list(ex.map(work, range(len(jobs))))

    bad = []
    for (kind, p), (ref, _, _, _, _), (text, fin, n, _, _) in zip(jobs, alone, together):
        if text != ref or fin != ["length"] or n != N_CONC_TOKENS:
            bad.append(f"{kind} {p!r}: alone {ref!r}, together {text!r}, finish {fin}, tokens {n}")
    assert not bad, "streams run together differ from the same requests alone:\n" + "\n".join(bad)
    # all 16 were generating at the same time: every stream had its first
    # piece of text before any stream had its last one
    firsts = [r[3] for r in together]
    lasts = [r[4] for r in together]
    assert max(firsts) < min(lasts), "the 16 streams were not decoded together"


# --------------------------------------------------------------------------
# 2. preemption when the KV pool is short
# --------------------------------------------------------------------------

PREEMPT_TOKENS = 64


def _prompts_of_about(srv, n, lo, hi):
    animals = ["cat", "dog", "owl", "fox", "bear", "wolf", "hare", "crow", "seal", "deer", "lynx", "mole",
               "toad", "swan", "goat", "newt"]
    out = []
    for i in range(n):
        head = [f"Story {i} is about a {animals[i % len(animals)]} called {chr(65 + i)}ella."]
        text, _ = text_of_tokens(srv, head + filler(animals[i % len(animals)].capitalize()), lo, hi)
        out.append(text)
    return out


def test_preemption_keeps_outputs(server):
    # 16 MiB of f16 KV for this model (30 layers x 2 x 3 heads x 64 dims x 2
    # bytes = 22.5 KiB a token) is 45 blocks of 16 tokens, about 720 tokens;
    # eight requests of ~60 + 64 tokens need about 1000.
    with serving(["--kv-memory", "16", "--kv-block", "16", "--ctx", "2048", "--max-seqs", "16"],
                 "small_kv") as small:
        kv = ready_line_kv(small)
        n_req = 8
        if kv is not None:
            blocks, bs = kv
            need = math.ceil((70 + PREEMPT_TOKENS) / bs)
            assert need <= blocks, f"the KV pool ({blocks} blocks of {bs}) cannot hold even one request"
            while n_req * math.ceil((56 + PREEMPT_TOKENS) / bs) < 1.3 * blocks and n_req < 16:
                n_req += 1
        prompts = _prompts_of_about(small, n_req, 56, 70)
        bodies = [comp_body(p, PREEMPT_TOKENS, ignore_eos=True) for p in prompts]

        ref = []
        for b in bodies:  # alone, on a server with plenty of KV
            status, _, data = post(server, b)
            assert status == 200, data[:300]
            ref.append(assert_completion(data, PREEMPT_TOKENS)["choices"][0]["text"])

        assert metric(small, "cinfer:num_preemptions_total") == 0
        barrier = threading.Barrier(len(bodies))

        def work(b):
            barrier.wait(30)
            return post(small, b)

        with ThreadPoolExecutor(len(bodies)) as ex:
            got = list(ex.map(work, bodies))
        bad = []
        for i, ((status, _, data), want) in enumerate(zip(got, ref)):
            if status != 200:
                bad.append(f"request {i}: status {status}: {data[:300]!r}")
                continue
            body = assert_completion(data, PREEMPT_TOKENS)
            if body["choices"][0]["text"] != want:
                bad.append(f"request {i}: {body['choices'][0]['text']!r} != alone {want!r}")
        assert not bad, "with a short KV pool:\n" + "\n".join(bad)
        m = metrics(small)
        assert metric(small, "cinfer:num_preemptions_total", m) > 0, \
            f"{len(bodies)} requests of ~{len(tokenize(small, prompts[0])) + PREEMPT_TOKENS} tokens on {kv} " \
            "(blocks, block size) caused no preemption"
        assert metric(small, "cinfer:num_requests_running", m) == 0
        assert metric(small, "cinfer:num_requests_waiting", m) == 0


# --------------------------------------------------------------------------
# 3. prefix cache
# --------------------------------------------------------------------------


def _prefix_run(srv, prefix):
    out = []
    for q in (" Question one?", " Question two?"):
        status, body = srv.json("POST", "/v1/completions", comp_body(prefix + q, 16))
        assert status == 200, body
        out.append(body)
    return out


def test_prefix_cache(server):
    prefix, n_prefix = text_of_tokens(server, filler("Fact"), 280, 400)
    assert n_prefix >= 256
    with serving([], "prefix_cache") as srv:
        m0 = metrics(srv)
        assert metric(srv, "cinfer:prefix_cache_hits_total", m0) == 0
        assert metric(srv, "cinfer:prefix_cache_queries_total", m0) == 0
        a, b = _prefix_run(srv, prefix)
        m = metrics(srv)
    with serving(["--no-prefix-cache"], "no_prefix_cache") as nsrv:
        na, nb = _prefix_run(nsrv, prefix)
        nm = metrics(nsrv)

    def cached(r):
        d = r["usage"].get("prompt_tokens_details")
        assert isinstance(d, dict) and isinstance(d.get("cached_tokens"), int), r["usage"]
        return d["cached_tokens"]

    assert cached(a) == 0, "the first request on a fresh server cannot find anything cached"
    assert cached(b) >= 240, f"B shares {n_prefix}+ prompt tokens with A but cached_tokens is {cached(b)}"
    assert cached(b) < b["usage"]["prompt_tokens"], b["usage"]
    assert cached(na) == 0 and cached(nb) == 0, (na["usage"], nb["usage"])
    assert a["choices"][0]["text"] == na["choices"][0]["text"]
    assert b["choices"][0]["text"] == nb["choices"][0]["text"], "a prefix-cache hit changed the output"
    assert a["usage"]["prompt_tokens"] == na["usage"]["prompt_tokens"]
    assert b["usage"]["prompt_tokens"] == nb["usage"]["prompt_tokens"]

    hits = metric(srv, "cinfer:prefix_cache_hits_total", m)
    queries = metric(srv, "cinfer:prefix_cache_queries_total", m)
    assert hits > 0 and hits >= cached(b), (hits, cached(b))  # counted in tokens
    assert queries >= hits, (queries, hits)
    assert queries >= cached(b)
    if "cinfer:prefix_cache_hits_total" in nm:
        assert nm["cinfer:prefix_cache_hits_total"] == 0, nm


# --------------------------------------------------------------------------
# 4. overload: --max-queue
# --------------------------------------------------------------------------


def test_overload_429_with_retry_after():
    with serving(["--max-queue", "4", "--max-seqs", "2"], "overload") as srv:
        assert srv.request("GET", "/health/ready")[0] == 200
        n = 40
        barrier = threading.Barrier(n)

        def work(i):
            barrier.wait(30)
            return post(srv, comp_body(f"Request {i}: tell me about the number {i}.", 16, ignore_eos=True))

        with ThreadPoolExecutor(n) as ex:
            results = list(ex.map(work, range(n)))
        bad, n200, n429 = [], 0, 0
        for i, (status, headers, data) in enumerate(results):
            try:
                if status == 200:
                    assert_completion(data, 16)
                    n200 += 1
                elif status == 429:
                    assert_429(status, headers, data)
                    n429 += 1
                else:
                    bad.append(f"request {i}: status {status}: {data[:200]!r}")
            except (AssertionError, ValueError) as e:
                bad.append(f"request {i}: status {status}: {e}")
        assert not bad, "\n".join(bad)
        assert n200 >= 1 and n429 >= 1, f"{n200} answered 200, {n429} answered 429"
        # at most 2 running + 4 waiting can be accepted at the same time; later
        # arrivals may find room again, so only a lower bound on 429s holds
        status, _, data = post(srv, comp_body("Hello", 4))
        assert status == 200, data[:300]
        wait_for(lambda: gauges(srv)[:2] == (0, 0), 5, "running and waiting back to 0")
        assert srv.request("GET", "/health/ready")[0] == 200


def test_queue_counts_each_choice():
    """n=2 is two waiting requests: with --max-queue 2 the queue is then full."""
    with serving(["--max-queue", "2", "--max-seqs", "1"], "queue_choices") as srv:
        long = Stream(srv, long_stream_body(0))
        try:
            long.read_until_content(1)
            box = {}
            t = threading.Thread(target=lambda: box.update(r=post(srv, comp_body("Hi", 4, n=2, temperature=0.8,
                                                                                  seed=3))))
            t.start()
            wait_for(lambda: gauges(srv)[1] == 2, 5, "num_requests_waiting 2 (one request with n=2)")
            assert_429(*post(srv, comp_body("Hi", 4)))
            # and through the official client
            client = make_client(srv)
            with pytest.raises(openai.RateLimitError) as ei:
                client.completions.create(model=client.models.list().data[0].id, prompt="Hi", max_tokens=4)
            assert int(ei.value.response.headers["retry-after"]) >= 1
        finally:
            long.close()
        t.join(60)
        status, _, data = box["r"]
        assert status == 200, data[:300]
        assert len(assert_completion(data)["choices"]) == 2


def test_queue_tokens_limit():
    with serving(["--max-queue-tokens", "100", "--max-seqs", "1"], "queue_tokens") as srv:
        p60, n60 = text_of_tokens(srv, filler("Item"), 55, 65)
        p60b, n60b = text_of_tokens(srv, filler("Thing"), 55, 65)
        p20, n20 = text_of_tokens(srv, filler("Mark"), 15, 25)
        assert n60 + n60b > 100 >= n60 + n20
        long = Stream(srv, long_stream_body(1))
        boxes = [{}, {}]
        threads = []
        try:
            long.read_until_content(1)
            threads.append(threading.Thread(target=lambda: boxes[0].update(r=post(srv, comp_body(p60, 4)))))
            threads[-1].start()
            wait_for(lambda: gauges(srv)[1] == 1, 5, "the first request waiting")
            assert_429(*post(srv, comp_body(p60b, 4)))  # 60 + 60 prompt tokens waiting > 100
            threads.append(threading.Thread(target=lambda: boxes[1].update(r=post(srv, comp_body(p20, 4)))))
            threads[-1].start()
            wait_for(lambda: gauges(srv)[1] == 2, 5, "60 + 20 prompt tokens waiting (<= 100)")
        finally:
            long.close()
        for t in threads:
            t.join(60)
        for box in boxes:
            status, _, data = box["r"]
            assert status == 200, data[:300]


# --------------------------------------------------------------------------
# 5. cancellation of running and queued requests
# --------------------------------------------------------------------------


def test_cancel_running_and_queued():
    with serving(["--max-seqs", "4"], "cancel") as srv:
        run0, wait0, kv0 = gauges(srv)
        assert (run0, wait0) == (0, 0)
        running, queued = [], []
        try:
            for i in range(4):
                running.append(Stream(srv, long_stream_body(i)))
            for s in running:
                s.read_until_content(1)
            wait_for(lambda: gauges(srv)[:2] == (4, 0), 5, "4 running, 0 waiting")
            for i in range(4, 8):
                queued.append(Stream(srv, long_stream_body(i)))
            wait_for(lambda: gauges(srv)[:2] == (4, 4), 5, "4 running, 4 waiting")
            for s in queued:  # abandoned before they produced a token
                s.close()
            for s in running:
                s.read_until_content(5)
                s.close()
        finally:
            for s in running + queued:
                s.close()
        deadline = time.monotonic() + 5
        while True:
            g = gauges(srv)
            if g == (0, 0, kv0):
                break
            assert time.monotonic() < deadline, \
                f"5 s after the clients left: running, waiting, kv usage = {g}; kv usage before: {kv0}"
            time.sleep(0.1)
        # and it still serves
        status, _, data = post(srv, comp_body("Hello", 4))
        assert status == 200, data[:300]


def test_non_streamed_client_leaving_cancels():
    """A non-streamed request whose client closes the connection while it is
    generating is cancelled: the gauges go back to idle within seconds."""
    with serving([], "cancel-plain") as srv:
        run0, wait0, kv0 = gauges(srv)
        assert (run0, wait0) == (0, 0)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        body = dict(long_stream_body(0), stream=False)
        conn.request("POST", "/v1/completions", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        wait_for(lambda: gauges(srv)[0] == 1, 10, "the request to be running")
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        wait_for(lambda: gauges(srv) == (0, 0, kv0), 5,
                 "running, waiting and kv usage back to idle after the client left")
        status, _, data = post(srv, comp_body("Hello", 4))
        assert status == 200, data[:300]


def test_request_timeout():
    """--request-timeout 1: a long request ends after about a second - not
    streamed, with 504 and an OpenAI error (code "timeout"); streamed, with an
    error event and no [DONE] - and the server goes on serving."""
    with serving(["--request-timeout", "1"], "timeout") as srv:
        t0 = time.monotonic()
        status, _, data = post(srv, dict(long_stream_body(1), stream=False), timeout=30)
        took = time.monotonic() - t0
        assert status == 504, (status, data[:300])
        err = error_obj(data)
        assert err["code"] == "timeout" and "--request-timeout" in err["message"], err
        assert took < 5, f"the 1 s timeout took {took:.1f} s"
        s = Stream(srv, long_stream_body(2))
        try:
            s.read_all()
        finally:
            s.close()
        assert s.error is None, s.error
        assert not s.done, "a timed-out stream ended with [DONE]"
        last = s.chunks[-1]
        assert "error" in last and last["error"]["code"] == "timeout", last
        assert s.n_content > 0, "no tokens before the timeout"
        wait_for(lambda: gauges(srv)[:2] == (0, 0), 5, "no requests running or waiting")
        status, _, data = post(srv, comp_body("Hello", 4))
        assert status == 200, data[:300]
        assert_completion(data, 4)


# --------------------------------------------------------------------------
# 6. draining on SIGTERM
# --------------------------------------------------------------------------

DRAIN_TOKENS = 64


def test_drain_on_sigterm():
    # The streams need a second or two; the generous timeout keeps a slow
    # (loaded, sanitizer) machine from cutting them off.
    with serving(["--shutdown-timeout", "120"], "drain") as srv:
        streams = [Stream(srv, comp_body(f"Tell me about planet {i}.", DRAIN_TOKENS, ignore_eos=True,
                                         stream_options={"include_usage": True})) for i in range(4)]
        threads = [threading.Thread(target=s.read_all, daemon=True) for s in streams]
        try:
            for t in threads:
                t.start()
            for i, s in enumerate(streams):
                assert s.got_content.wait(30), f"stream {i} produced no token: {s.error}"
            srv.proc.send_signal(signal.SIGTERM)
            # the signal is handled asynchronously: readiness goes first
            wait_for(lambda: srv.request("GET", "/health/ready", timeout=5)[0] == 503, 2,
                     "GET /health/ready 503 after SIGTERM")
            status, headers, data = post(srv, comp_body("Hello", 4), timeout=10)
            assert status == 503, (status, data[:300])
            err = error_obj(data)
            assert err["code"] == UNAVAILABLE_CODE, err
            status, _, data = post(srv, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
                                   path="/v1/chat/completions", timeout=10)
            assert status == 503, (status, data[:300])
            error_obj(data)
            for t in threads:
                t.join(150)
            t_end = time.monotonic()
            for i, s in enumerate(streams):
                assert s.error is None, f"stream {i}: {s.error}"
                assert s.done, f"stream {i} ended without data: [DONE]"
                assert s.finish_reasons == ["length"], (i, s.finish_reasons)
                assert s.usage and s.usage["completion_tokens"] == DRAIN_TOKENS, (i, s.usage)
            try:
                rc = srv.proc.wait(timeout=max(0.1, 10 - (time.monotonic() - t_end)))
            except subprocess.TimeoutExpired:
                pytest.fail("the server did not exit within 10 s after its last stream ended")
            assert rc == 0, f"exit status {rc} after draining\n--- server stderr ---\n{srv.stderr_text()}"
        finally:
            for s in streams:
                s.close()


def test_second_signal_exits_at_once():
    with serving([], "second_signal") as srv:
        streams = [Stream(srv, long_stream_body(i)) for i in range(2)]
        threads = [threading.Thread(target=s.read_all, daemon=True) for s in streams]
        try:
            for t in threads:
                t.start()
            for s in streams:
                assert s.got_content.wait(30), s.error
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert srv.alive(), "the server exited on the first SIGTERM with 2 long streams open"
            srv.proc.send_signal(signal.SIGTERM)
            try:
                srv.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pytest.fail("the server was still running 3 s after a second SIGTERM")
        finally:
            for s in streams:
                s.close()
        for t in threads:
            t.join(10)


def test_drain_gives_up_after_shutdown_timeout():
    with serving(["--shutdown-timeout", "1"], "shutdown_timeout") as srv:
        s = Stream(srv, long_stream_body(0))
        t = threading.Thread(target=s.read_all, daemon=True)
        try:
            t.start()
            assert s.got_content.wait(30), s.error
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            try:
                srv.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pytest.fail("still running 5 s after SIGTERM with --shutdown-timeout 1")
            assert time.monotonic() - t0 >= 0.5, "exited before the shutdown timeout with a stream open"
        finally:
            s.close()
        t.join(10)
        assert not t.is_alive()


# --------------------------------------------------------------------------
# 8. readiness and settings
# --------------------------------------------------------------------------


def test_health_ready_idle(server):
    status, _, _ = server.request("GET", "/health/ready")
    assert status == 200


def _print_config(*args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("CINFER_")}
    e.update(env or {})
    r = subprocess.run([str(CINFER_BIN), "serve", *args, "--print-config"], env=e, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, (args, env, r.stderr)
    return json.loads(r.stdout)


def _truthy(v):
    return str(v).lower() in ("true", "1")


def test_new_settings(tmp_path):
    got = _print_config()
    for key in ("max_queue", "max_queue_tokens", "prefix_cache", "request_timeout", "shutdown_timeout"):
        assert key in got, key
    assert got["max_queue"] == 256
    assert got["shutdown_timeout"] == 30
    assert _truthy(got["prefix_cache"])
    got = _print_config("--no-prefix-cache", "--max-queue", "7", "--max-queue-tokens", "99",
                        "--request-timeout", "12", "--shutdown-timeout", "5")
    assert not _truthy(got["prefix_cache"])
    assert (got["max_queue"], got["max_queue_tokens"], got["request_timeout"], got["shutdown_timeout"]) == \
        (7, 99, 12, 5)
    got = _print_config(env={"CINFER_MAX_QUEUE": "9", "CINFER_SHUTDOWN_TIMEOUT": "3"})
    assert (got["max_queue"], got["shutdown_timeout"]) == (9, 3)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"prefix_cache": False, "max_queue": 11}))
    got = _print_config("--config", str(cfg))
    assert not _truthy(got["prefix_cache"]) and got["max_queue"] == 11
    r = subprocess.run([str(CINFER_BIN), "serve", "-m", str(CINFER_MODEL), "--max-queue", "lots"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--max-queue" in r.stderr, r.stderr


def test_n_choices_share_prompt_blocks(server, model_id):
    """n=3 choices of one prompt: the second and third reuse the first one's
    cached prompt blocks instead of computing them again."""
    prompt = "shared choices " + " ".join(f"w{i}" for i in range(150))
    n_tok = len(server.json("POST", "/tokenize", {"content": prompt})[1]["tokens"])
    before = metric(server, "cinfer:prefix_cache_hits_total")
    status, body = server.json("POST", "/v1/completions", {
        "model": model_id, "prompt": prompt, "n": 3, "max_tokens": 4, "temperature": 0})
    assert status == 200, body
    texts = [c["text"] for c in body["choices"]]
    assert len(texts) == 3 and texts[0] == texts[1] == texts[2]
    gained = metric(server, "cinfer:prefix_cache_hits_total") - before
    whole_blocks = (n_tok - 1) // 16 * 16
    assert gained >= 2 * whole_blocks, (gained, n_tok)

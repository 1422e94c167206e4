#!/usr/bin/env python3
"""bench/hostile.py - the front-door findings measured against one binary,
loopback only, each case bounded in time and count.

    python3 bench/hostile.py [--bin bin/cinfer] [--model M] [--idle 5000] [--json]

Prints one line per case (a JSON object with --json):
  idle       a keyed chat request with N idle sockets open: status, seconds
  fanout     64 prompts x n=16 on an idle server: status, seconds
  unauth     20 unauthenticated 8 MiB uploads: the server's RSS growth (MiB)
  sigterm    SIGTERM during a ~2000-token prefill on 1 thread: seconds until
             /health/ready is 503, and until the process exits after a second signal
  sighup     SIGHUP: whether the server still serves afterwards
  fairness   a 3072-token prompt arriving beside a running stream, --threads 1:
             the stream's longest gap between tokens, a newcomer's TTFT, the long
             prompt's own time
  ids        one 8 MiB body of token ids: peak RSS growth (VmHWM)
  logprobs   non-streamed chat, n=16 x 512 tokens, top_logprobs 20: peak RSS growth
  lone       a 3072-token prompt alone, 3 times: seconds each (not in the default run)
Run it for two binaries (before/after) in the same session to compare."""

import argparse
import contextlib
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from serve_load import free_port  # bench/, beside this script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "sekrit"


class Server:
    def __init__(self, binary, model, args):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="hostile-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([binary, "serve", "-m", model, "--port", str(self.port), *args],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.get("/health", timeout=1)[0] == 200:
                return
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def request(self, method, path, body=None, headers=None, timeout=60):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            h = dict(headers or {})
            if body is not None:
                body = json.dumps(body).encode()
                h["Content-Type"] = "application/json"
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            c.close()
            return r.status, data
        except (OSError, http.client.HTTPException) as e:
            return "error", repr(e).encode()

    def get(self, path, timeout=5):
        return self.request("GET", path, timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        os.unlink(self.log.name)


def rss_mib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def case_ids(a):
    """One 8 MiB body of token ids (refused: longer than the context): peak RSS growth."""
    srv = Server(a.bin, a.model, [])
    try:
        chat(srv)
        before = rss_mib(srv.proc.pid, "VmHWM")
        body = b'{"prompt": [' + b",".join([b"1"] * (((8 << 20) - 64) // 2)) + b'], "max_tokens": 1}'
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
        c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        st = c.getresponse().status
        c.close()
        return {"case": "ids", "body_mib": round(len(body) / 2**20, 1), "status": st,
                "peak_growth_mib": round(rss_mib(srv.proc.pid, "VmHWM") - before, 1)}
    finally:
        srv.stop()


def _logprobs_growth(a, logprobs):
    srv = Server(a.bin, a.model, [])
    try:
        chat(srv)
        before = rss_mib(srv.proc.pid, "VmHWM")
        body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "n": 16, "max_tokens": 512,
                "ignore_eos": True, "temperature": 0.8, "seed": 1}
        if logprobs:
            body.update(logprobs=True, top_logprobs=20)
        st, data = srv.request("POST", "/v1/chat/completions", body, timeout=900)
        return st, len(data), rss_mib(srv.proc.pid, "VmHWM") - before
    finally:
        srv.stop()


def case_logprobs(a):
    """A non-streamed chat request, n=16 x 512 tokens: peak RSS growth without and with
    top_logprobs 20 (each on a fresh server: the KV cache's pages are touched alike)."""
    st0, n0, g0 = _logprobs_growth(a, False)
    st1, n1, g1 = _logprobs_growth(a, True)
    return {"case": "logprobs", "status": [st0, st1], "response_mib": round(n1 / 2**20, 1),
            "peak_growth_without_mib": round(g0, 1), "peak_growth_with_mib": round(g1, 1),
            "logprobs_cost_mib": round(g1 - g0, 1)}


def chat(srv, max_tokens=4, timeout=30):
    t0 = time.monotonic()
    st, data = srv.request("POST", "/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": max_tokens,
                            "temperature": 0},
                           headers={"Authorization": f"Bearer {KEY}"}, timeout=timeout)
    return st, time.monotonic() - t0


def case_idle(a):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.idle + 500), hard))
    srv = Server(a.bin, a.model, ["--api-key", KEY])
    socks = []
    try:
        for _ in range(a.idle):
            with contextlib.suppress(OSError):
                socks.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
        time.sleep(1)
        st, took = chat(srv, timeout=10)
        return {"case": "idle", "sockets": len(socks), "status": st, "seconds": round(took, 3)}
    finally:
        for s in socks:
            s.close()
        srv.stop()


def case_fanout(a):
    srv = Server(a.bin, a.model, [])
    try:
        t0 = time.monotonic()
        st, data = srv.request("POST", "/v1/completions",
                               {"prompt": [f"Prompt {i}:" for i in range(64)], "n": 16, "max_tokens": 4,
                                "temperature": 0.7}, timeout=120)
        took = time.monotonic() - t0
        msg = ""
        with contextlib.suppress(ValueError, KeyError, TypeError):
            msg = json.loads(data)["error"]["message"][:100]
        return {"case": "fanout", "status": st, "seconds": round(took, 3), "message": msg}
    finally:
        srv.stop()


def _upload(port):
    with contextlib.suppress(OSError):
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % (8 << 20))
        chunk = b"1," * 32768
        for _ in range((8 << 20) // len(chunk)):
            s.sendall(chunk)
        s.settimeout(20)
        s.recv(4096)
        s.close()


def case_unauth(a):
    srv = Server(a.bin, a.model, ["--api-key", KEY])
    try:
        chat(srv)
        before = rss_mib(srv.proc.pid)
        peak = before
        ts = [threading.Thread(target=_upload, args=(srv.port,)) for _ in range(20)]
        for t in ts:
            t.start()
        while any(t.is_alive() for t in ts):
            peak = max(peak, rss_mib(srv.proc.pid))
            time.sleep(0.02)
        after = rss_mib(srv.proc.pid)
        return {"case": "unauth", "rss_before_mib": round(before, 1), "peak_growth_mib": round(peak - before, 1),
                "growth_after_mib": round(after - before, 1)}
    finally:
        srv.stop()


def _long_prompt(srv, n_tokens):
    words = " ".join(f"item {i} is a {['red', 'blue', 'green'][i % 3]} box on shelf {i % 7}." for i in range(2000))
    lo, hi = 0, len(words)
    while hi - lo > 20:  # the longest prefix of words with at most n_tokens tokens
        mid = (lo + hi) // 2
        st, data = srv.request("POST", "/tokenize", {"content": words[:mid]})
        if len(json.loads(data)["tokens"]) <= n_tokens:
            lo = mid
        else:
            hi = mid
    return words[:lo]


def case_sigterm(a):
    srv = Server(a.bin, a.model, ["--threads", "1", "--max-batch-tokens", "2048", "--ctx", "4096",
                                  "--shutdown-timeout", "60"])
    try:
        prompt = _long_prompt(srv, 2000)
        threading.Thread(target=lambda: srv.request("POST", "/v1/completions",
                                                    {"prompt": prompt, "max_tokens": 4}, timeout=120),
                         daemon=True).start()
        time.sleep(1.5)
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        ready = None
        while time.monotonic() - t0 < 60:
            if srv.get("/health/ready", timeout=2)[0] == 503:
                ready = time.monotonic() - t0
                break
            time.sleep(0.02)
        t1 = time.monotonic()
        srv.proc.send_signal(signal.SIGINT)
        rc = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            rc = srv.proc.wait(60)
        return {"case": "sigterm", "ready_503_after_s": ready and round(ready, 3),
                "second_signal_exit_s": round(time.monotonic() - t1, 3), "exit_status": rc}
    finally:
        srv.stop()


def case_sighup(a):
    srv = Server(a.bin, a.model, [])
    try:
        srv.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        alive = srv.proc.poll() is None
        st = srv.get("/health")[0] if alive else None
        return {"case": "sighup", "alive": alive, "health": st, "exit_status": srv.proc.returncode}
    finally:
        srv.stop()


def _stream(srv, body, marks, timeout=300):
    """Streams BODY; appends the arrival time of each content event to MARKS."""
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    c.request("POST", "/v1/completions", body=json.dumps(dict(body, stream=True)).encode(),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    while True:
        line = r.readline()
        if not line or line.startswith(b"data: [DONE]"):
            break
        if line.startswith(b"data: ") and b'"text":"' in line and b'"text":""' not in line:
            marks.append(time.monotonic())
    c.close()


def case_fairness(a):
    srv = Server(a.bin, a.model, ["--threads", "1", "--ctx", "4096", *a.extra])
    try:
        prompt = _long_prompt(srv, 3072)
        running = []
        t_run = threading.Thread(target=_stream, args=(srv, {"prompt": "Count slowly:", "max_tokens": 400,
                                                             "ignore_eos": True, "temperature": 0}, running))
        t_run.start()
        while len(running) < 5:
            time.sleep(0.01)
        long_s = []

        def long_one():
            t = time.monotonic()
            srv.request("POST", "/v1/completions", {"prompt": prompt, "max_tokens": 1}, timeout=600)
            long_s.append(time.monotonic() - t)

        t_long = threading.Thread(target=long_one)
        t_long.start()
        time.sleep(0.3)
        new = []
        t0 = time.monotonic()
        t_new = threading.Thread(target=_stream, args=(srv, {"prompt": "Hi", "max_tokens": 4, "temperature": 0}, new))
        t_new.start()
        t_new.join(600)
        ttft = new[0] - t0 if new else None
        t_long.join(600)
        t_run.join(600)
        gaps = [b - a for a, b in zip(running, running[1:])]
        return {"case": "fairness", "stream_max_gap_s": round(max(gaps), 3) if gaps else None,
                "stream_tokens": len(running), "newcomer_ttft_s": ttft and round(ttft, 3),
                "long_prompt_s": long_s and round(long_s[0], 2)}
    finally:
        srv.stop()


def case_lone(a):
    """A 3072-token prompt alone (2 threads): what small chunks cost it."""
    srv = Server(a.bin, a.model, ["--ctx", "4096", *a.extra])
    try:
        prompt = _long_prompt(srv, 3072)
        out = []
        for i in range(3):
            t = time.monotonic()
            st, _ = srv.request("POST", "/v1/completions", {"prompt": f"{i} " + prompt, "max_tokens": 1},
                                timeout=600)
            out.append(round(time.monotonic() - t, 2))
        return {"case": "lone", "seconds": out}
    finally:
        srv.stop()


CASES = {"idle": case_idle, "fanout": case_fanout, "unauth": case_unauth, "sigterm": case_sigterm,
         "sighup": case_sighup, "fairness": case_fairness, "ids": case_ids, "logprobs": case_logprobs,
         "lone": case_lone}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "bin/cinfer"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--idle", type=int, default=5000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--extra", action="append", default=[], help="another server flag (lone, fairness)")
    ap.add_argument("cases", nargs="*", default=[c for c in CASES if c != "lone"])
    a = ap.parse_args()
    for name in a.cases:
        try:
            r = CASES[name](a)
        except Exception as e:  # noqa: BLE001 - a case that breaks is reported, the rest go on
            r = {"case": name, "failed": repr(e)}
        print(json.dumps(r) if a.json else "  ".join(f"{k}={v}" for k, v in r.items()), flush=True)


if __name__ == "__main__":
    sys.exit(main())

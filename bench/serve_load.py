#!/usr/bin/env python3
"""Load generator for OpenAI-compatible completion servers (cinfer, llama-server).

Python 3 standard library only.  Subcommands:

  serve_load.py port                      print a free TCP port on 127.0.0.1
  serve_load.py wait URL [--timeout S] [--pid PID]
                                          wait until GET URL/health answers 200
  serve_load.py run URL --label NAME -c "1 4" [-r N] [-i 128] [-o 128] [--round K]
                  [--extra JSON] --out FILE
                                          run the load at each concurrency level and
                                          append one JSON line per level to FILE;
                                          exit status 3 if any request failed
  serve_load.py report FILE... [--json OUT]
                                          print the tables (and the ratios when two
                                          servers were measured) from run's output;
                                          lines of one server and level from several
                                          rounds are pooled into one row

Each level sends N streaming POST /v1/completions requests from C client
threads (one http.client connection per request); a thread takes the next
request as soon as its previous one ends.  Per request it measures, with
time.perf_counter():
  TTFT: request start (before connecting) to the first SSE event whose
        choices[0].text is non-empty;
  ITL:  the gaps between successive content events;
  TPOT: (end - first token) / (output tokens - 1), output tokens from the
        usage chunk (stream_options.include_usage), else the content events.
A request fails if the status is not 200, the stream does not end with
`data: [DONE]`, or anything raises.
"""

import argparse
import http.client
import json
import os
import random
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request

WORDS = """
the of and to in is was that for it with as his on be at by had are but from
or have an they which one you were all we her she there would their will when
who him been has more if no out do so can what up said about other into than
its time only could new them man some these then two first may any like now my
such make over our even most me state after also made many did must before back
see through way where get much go well your know should down work year because
come people just say each those take day good how long little own great use
world life still under last never place while found old day small house between
home light water every always people city tree river mountain garden window
music morning evening story letter number question answer reason country market
school family friend problem system program company money history science nature
animal winter summer spring autumn village journey ocean island forest station
bridge engine paper table chair door kitchen bread coffee apple orange yellow
green blue red quiet gentle careful simple strong bright heavy early late slowly
quickly together against between during without within around toward across
remember believe consider discover explain follow imagine listen notice promise
travel wonder gather measure harvest carry build paint write read speak learn
""".split()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def split_url(url):
    u = urllib.parse.urlsplit(url)
    return u.hostname or "127.0.0.1", u.port or 80


def get_json(url, path, timeout=10.0):
    host, port = split_url(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        return r.status, (json.loads(body) if body else None)
    finally:
        conn.close()


def post_json(url, path, obj, timeout=60.0):
    host, port = split_url(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(obj), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        body = r.read()
        return r.status, (json.loads(body) if body else None)
    finally:
        conn.close()


def cmd_wait(a):
    deadline = time.monotonic() + a.timeout
    while time.monotonic() < deadline:
        if a.pid:
            try:
                os.kill(a.pid, 0)
            except OSError:
                print("serve_load: server process %d exited" % a.pid, file=sys.stderr)
                return 1
        try:
            st, _ = get_json(a.url, "/health", timeout=2.0)
            if st == 200:
                return 0
        except (OSError, http.client.HTTPException, ValueError):
            pass
        time.sleep(0.2)
    print("serve_load: %s/health did not answer 200 within %g s" % (a.url, a.timeout), file=sys.stderr)
    return 1


# ---------------------------------------------------------------- prompts

def words(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def prompt_head(level, i):
    # A unique number first, so no two prompts share a prefix (no prefix caching);
    # rounds after the first number their requests on (run --round).
    return "%d%05d. " % (level, i)


class Prompts:
    """~input_tokens of random words, calibrated through POST /tokenize once."""

    def __init__(self, url, input_tokens, seed):
        self.seed = seed
        self.words_per_prompt = max(1, round(input_tokens / 1.3))
        self.calibrated = False
        try:
            rng = random.Random(seed ^ 0x5EED)
            head = prompt_head(0, 0)
            sample_words = 1000
            st1, h = post_json(url, "/tokenize", {"content": head})
            st2, s = post_json(url, "/tokenize", {"content": head + words(rng, sample_words)})
            if st1 == 200 and st2 == 200:
                nh, ns = len(h["tokens"]), len(s["tokens"])
                tpw = (ns - nh) / sample_words
                self.words_per_prompt = max(1, round((input_tokens - nh) / tpw))
                self.calibrated = True
                self.tokens_per_word = tpw
        except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
            pass

    def get(self, level, i):
        rng = random.Random(self.seed * 1000003 + level * 100003 + i)
        return prompt_head(level, i) + words(rng, self.words_per_prompt)


# ---------------------------------------------------------------- one request

# run --extra: fields merged into every request body (e.g. a response_format)
EXTRA = {}


def one_request(url, model, prompt, max_tokens, timeout):
    host, port = split_url(url)
    obj = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    obj.update(EXTRA)
    body = json.dumps(obj)
    res = {"ok": False, "error": None, "ttft": None, "tpot": None, "e2e": None,
           "output_tokens": 0, "prompt_tokens": None, "events": 0, "itl": []}
    t0 = time.perf_counter()
    res["start"] = t0
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", body=body,
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        r = conn.getresponse()
        if r.status != 200:
            res["error"] = "HTTP %d: %s" % (r.status, r.read()[:300].decode("utf-8", "replace"))
            return res
        times = []
        usage = None
        done = False
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                continue
            now = time.perf_counter()
            obj = json.loads(data)
            if isinstance(obj, dict) and obj.get("error"):
                res["error"] = "stream error: %s" % json.dumps(obj["error"])[:300]
                return res
            ch = obj.get("choices") or []
            if ch and ch[0].get("text"):
                times.append(now)
            if obj.get("usage"):
                usage = obj["usage"]
        end = time.perf_counter()
        res["e2e"] = end - t0
        res["events"] = len(times)
        if not done:
            res["error"] = "stream ended without data: [DONE]"
            return res
        if not times:
            res["error"] = "no content events"
            return res
        n = len(times)
        res["usage_present"] = usage is not None
        if usage is not None and usage.get("completion_tokens"):
            n = int(usage["completion_tokens"])
        if usage is not None:
            res["prompt_tokens"] = usage.get("prompt_tokens")
        res["output_tokens"] = n
        res["ttft"] = times[0] - t0
        if n > 1:
            res["tpot"] = (end - times[0]) / (n - 1)
        res["itl"] = [b - a for a, b in zip(times, times[1:])]
        res["ok"] = True
        return res
    except Exception as e:  # noqa: BLE001 -- any exception is a failed request
        res["error"] = "%s: %s" % (type(e).__name__, e)
        return res
    finally:
        res["end"] = time.perf_counter()
        conn.close()


# ---------------------------------------------------------------- statistics

def pct(xs, p):
    """Percentile with linear interpolation (numpy's default)."""
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(label, conc, results, wall, words_per_prompt):
    ok = [r for r in results if r["ok"]]
    ttft = [r["ttft"] for r in ok]
    tpot = [r["tpot"] for r in ok if r["tpot"] is not None]
    itl = [g for r in ok for g in r["itl"]]
    out_tok = sum(r["output_tokens"] for r in ok)
    ptoks = [r["prompt_tokens"] for r in ok if r.get("prompt_tokens")]
    ms = lambda v: None if v is None else v * 1000.0  # noqa: E731
    return {
        "server": label,
        "concurrency": conc,
        "requests": len(results),
        "completed": len(ok),
        "failures": len(results) - len(ok),
        "errors": sorted({r["error"] for r in results if not r["ok"]})[:10],
        "wall_s": wall,
        "output_tokens": out_tok,
        "output_tok_s": out_tok / wall if wall > 0 else None,
        "req_s": len(ok) / wall if wall > 0 else None,
        "prompt_tokens_mean": (sum(ptoks) / len(ptoks)) if ptoks else None,
        "usage_chunks": sum(1 for r in ok if r.get("usage_present")),
        "ttft_ms": {"p50": ms(pct(ttft, 50)), "p90": ms(pct(ttft, 90)), "p99": ms(pct(ttft, 99)),
                    "mean": ms(sum(ttft) / len(ttft)) if ttft else None},
        "tpot_ms": {"p50": ms(pct(tpot, 50)), "p90": ms(pct(tpot, 90)),
                    "mean": ms(sum(tpot) / len(tpot)) if tpot else None},
        "itl_ms": {"p50": ms(pct(itl, 50)), "p90": ms(pct(itl, 90)), "p99": ms(pct(itl, 99))},
        "prompt_words": words_per_prompt,
        "raw": [{k: v for k, v in r.items()} for r in results],
    }


# ---------------------------------------------------------------- run

def run_level(url, model, prompts, conc, nreq, first, max_tokens, timeout):
    results = [None] * nreq
    lock = threading.Lock()
    nxt = [0]
    t_start = time.perf_counter()

    def worker():
        while True:
            with lock:
                i = nxt[0]
                if i >= nreq:
                    return
                nxt[0] += 1
            results[i] = one_request(url, model, prompts.get(conc, first + i), max_tokens, timeout)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(conc, nreq))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    for r in results:  # times relative to the level's start, for the raw dump
        r["start"] -= t_start
        r["end"] -= t_start
    return results, wall


def default_requests(c):
    """max(8, 2C) -- two waves -- up to C = 16; one wave (C) from C = 32 up.

    A full default run (levels 1 4 16 64, cinfer and llama-server) stays near
    10 minutes on 2 cores that way; llama-server -np 64 alone needs ~5 min a
    wave there.
    """
    return max(8, min(2 * c, max(c, 32)))


def cmd_run(a):
    if a.extra:
        EXTRA.update(json.loads(a.extra))
    levels = [int(x) for x in a.concurrency.replace(",", " ").split()]
    st, models = get_json(a.url, "/v1/models")
    if st != 200:
        print("serve_load: GET /v1/models: HTTP %d" % st, file=sys.stderr)
        return 1
    model = models["data"][0]["id"]
    prompts = Prompts(a.url, a.input_tokens, a.seed)
    if not prompts.calibrated:
        print("serve_load: no /tokenize; assuming 1.3 tokens per word", file=sys.stderr)
    # One short warm-up request, not measured.
    w = one_request(a.url, model, "warm up " + words(random.Random(1), 16), 8, a.timeout)
    if not w["ok"]:
        print("serve_load: warm-up request failed: %s" % w["error"], file=sys.stderr)
    failed = False
    cpu0 = os.times().user + os.times().system
    with open(a.out, "a") as f:
        for c in levels:
            n = a.requests if a.requests else default_requests(c)
            if n < c:
                print("serve_load: %d requests at concurrency %d: only %d in flight" % (n, c, n), file=sys.stderr)
            print("serve_load: %s: concurrency %d, %d requests, %d output tokens each ..."
                  % (a.label, c, n, a.output_tokens), file=sys.stderr, flush=True)
            results, wall = run_level(a.url, model, prompts, c, n, a.round * n, a.output_tokens,
                                      a.timeout)
            s = summarize(a.label, c, results, wall, prompts.words_per_prompt)
            s["round"] = a.round
            s["model"] = model
            s["input_tokens_target"] = a.input_tokens
            s["max_tokens"] = a.output_tokens
            s["loadavg_1m_after"] = os.getloadavg()[0]
            cpu = os.times()
            s["client_cpu_s"] = cpu.user + cpu.system - cpu0
            cpu0 = cpu.user + cpu.system
            print("serve_load: %s: concurrency %d: %.1f s, %.1f output tok/s, %d failures%s"
                  % (a.label, c, wall, s["output_tok_s"] or 0, s["failures"],
                     ("; " + "; ".join(s["errors"][:3])) if s["failures"] else ""),
                  file=sys.stderr, flush=True)
            f.write(json.dumps(s) + "\n")
            f.flush()
            failed = failed or s["failures"] > 0
    return 3 if failed else 0


# ---------------------------------------------------------------- report

def fmt(v, nd=1):
    return "-" if v is None else "%.*f" % (nd, v)


def table(rows, title):
    out = ["", "### " + title, ""]
    out.append("| conc | reqs | fail | prompt tok | out tok/s | req/s | TTFT p50 | TTFT p90 | TTFT p99"
               " | TPOT p50 | TPOT p90 | ITL p50 | ITL p90 | wall s |")
    out.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in rows:
        out.append("| %d | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            s["concurrency"], s["requests"], s["failures"], fmt(s["prompt_tokens_mean"], 0),
            fmt(s["output_tok_s"]), fmt(s["req_s"], 2),
            fmt(s["ttft_ms"]["p50"]), fmt(s["ttft_ms"]["p90"]), fmt(s["ttft_ms"]["p99"]),
            fmt(s["tpot_ms"]["p50"]), fmt(s["tpot_ms"]["p90"]),
            fmt(s["itl_ms"]["p50"]), fmt(s["itl_ms"]["p90"]), fmt(s["wall_s"])))
    out.append("")
    out.append("Latencies in ms; TTFT from request start (connect included); prompt tok is the mean"
               " prompt_tokens the server reported.")
    return "\n".join(out)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def pool(lines):
    """One row from a server's lines of one level: its rounds' requests pooled.

    Output tok/s and req/s are over the rounds' summed wall time; the
    percentiles are over every request.  "round_tok_s" keeps each round's own.
    """
    lines = sorted(lines, key=lambda s: s.get("round", 0))
    if len(lines) == 1:
        s = dict(lines[0])
    else:
        first = lines[0]
        raw = [r for s in lines for r in s["raw"]]
        s = summarize(first["server"], first["concurrency"], raw, sum(s["wall_s"] for s in lines),
                      first.get("prompt_words"))
        for k in ("model", "input_tokens_target", "max_tokens"):
            s[k] = first.get(k)
        s["client_cpu_s"] = sum(x.get("client_cpu_s", 0) for x in lines)
    s["rounds"] = [x.get("round", 0) for x in lines]
    s["round_tok_s"] = [x["output_tok_s"] for x in lines]
    return s


def cmd_report(a):
    lines = {}
    order = []
    for fn in a.files:
        for line in open(fn):
            line = line.strip()
            if not line:
                continue
            s = json.loads(line)
            if s["server"] not in lines:
                lines[s["server"]] = {}
                order.append(s["server"])
            lines[s["server"]].setdefault(s["concurrency"], []).append(s)
    by = {name: [pool(lines[name][c]) for c in sorted(lines[name])] for name in order}
    for name in order:
        print(table(by[name], name))
    ratios = []
    if len(order) >= 2:
        x, y = order[0], order[1]
        ym = {s["concurrency"]: s for s in by[y]}
        print("")
        print("### %s vs %s (> 1: %s is better)" % (x, y, x))
        print("")
        print("| conc | out tok/s %s/%s | TTFT p50 %s/%s | TPOT p50 %s/%s | rounds |"
              % (x, y, y, x, y, x))
        print("| ---: | ---: | ---: | ---: | --- |")
        for s in by[x]:
            t = ym.get(s["concurrency"])
            if t is None:
                continue
            r = {"concurrency": s["concurrency"],
                 "output_tok_s": ratio(s["output_tok_s"], t["output_tok_s"]),
                 "ttft_p50": ratio(t["ttft_ms"]["p50"], s["ttft_ms"]["p50"]),
                 "tpot_p50": ratio(t["tpot_ms"]["p50"], s["tpot_ms"]["p50"])}
            # each round's out tok/s ratio, pairing the two servers' rounds by number
            tr = dict(zip(t["rounds"], t["round_tok_s"]))
            r["round_output_tok_s"] = [ratio(v, tr.get(k)) for k, v in zip(s["rounds"], s["round_tok_s"])]
            ratios.append(r)
            each = " ".join(fmt(v, 2) for v in r["round_output_tok_s"]) if len(s["rounds"]) > 1 else "-"
            print("| %d | %s | %s | %s | %s |" % (r["concurrency"], fmt(r["output_tok_s"], 2),
                                                  fmt(r["ttft_p50"], 2), fmt(r["tpot_p50"], 2), each))
        if any(len(s["rounds"]) > 1 for s in by[x]):
            print("")
            print("rounds: each round's own out tok/s ratio; the servers took turns within a level"
                  " (rounds alternate which goes first).")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"servers": {k: by[k] for k in order},
                       "ratios": {"numerator": order[0], "denominator": order[1], "levels": ratios}
                       if len(order) >= 2 else None}, f, indent=1)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("port")
    w = sub.add_parser("wait")
    w.add_argument("url")
    w.add_argument("--timeout", type=float, default=120.0)
    w.add_argument("--pid", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("url")
    r.add_argument("--label", required=True)
    r.add_argument("-c", "--concurrency", default="1 4 16 64")
    r.add_argument("-r", "--requests", type=int, default=0,
                   help="per level (0: max(8, min(2C, max(C, 32))))")
    r.add_argument("-i", "--input-tokens", type=int, default=128)
    r.add_argument("-o", "--output-tokens", type=int, default=128)
    r.add_argument("--seed", type=int, default=1234)
    r.add_argument("--round", type=int, default=0,
                   help="K > 0: requests are numbered from K*N on (new prompts), and the level's"
                        " line is one round of an interleaved comparison")
    r.add_argument("--timeout", type=float, default=600.0,
                   help="socket timeout, s: a request fails after this long without a byte")
    r.add_argument("--out", required=True, help="append one JSON line per level here")
    r.add_argument("--extra", default="",
                   help="a JSON object merged into every request body (e.g. a response_format)")
    p = sub.add_parser("report")
    p.add_argument("files", nargs="+")
    p.add_argument("--json")
    a = ap.parse_args()
    if a.cmd == "port":
        print(free_port())
        return 0
    return {"wait": cmd_wait, "run": cmd_run, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())

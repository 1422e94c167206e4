#!/usr/bin/env python3
"""deploy/deploy_test.py - the heavy deployment test (make deploy-test).

Starts two cinfer containers (IMAGE, podman, --network host, each on its own
loopback port) and a load balancer on the host (HAProxy and then nginx, with
deploy/haproxy.cfg and deploy/nginx.conf, their servers rewritten to the
replicas' ports), and under a streaming load of CLIENTS clients for SECONDS
per scenario does each of:

  kill -9   one replica killed: only requests in flight at the kill may fail,
            and every request started after it succeeds;
  SIGTERM   one replica stopped (it drains): zero failed requests;
  rolling   both replicas restarted, one after the other: zero failed requests;

then a replica started with a 1-CPU limit must log "CPU threads: 1", and one
long request through each balancer must stream (its first SSE chunk arrives
well before its last).  Prints a table: balancer, scenario, requests,
succeeded, failed, p50/p99 TTFT.  Exit 0 when every promise held.

Python's standard library only.  Traffic goes to 127.0.0.1 only.
"""

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PODMAN = os.environ.get("PODMAN", "podman").split()


def log(msg):
    print(f"deploy-test: {msg}", flush=True)


def sh(*args, check=True, timeout=300, **kw):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(args)}: exit {r.returncode}: {r.stderr.strip()[-2000:]}")
    return r


def get_status(port, path, timeout=2.0):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", path)
        st = c.getresponse().status
        c.close()
        return st
    except OSError:
        return None


def wait_status(port, path, want=200, timeout=90.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if get_status(port, path) == want:
            return True
        time.sleep(0.1)
    return False


class Replica:
    def __init__(self, image, name, port, extra=()):
        self.image, self.name, self.port, self.extra = image, name, port, list(extra)

    def start(self):
        sh(*PODMAN, "rm", "-f", "-t", "0", self.name, check=False)
        sh(*PODMAN, "run", "-d", "--name", self.name, "--network", "host",
           "-e", f"CINFER_PORT={self.port}", "-e", "CINFER_HOST=127.0.0.1",
           *self.extra, self.image)
        if not wait_status(self.port, "/health/ready"):
            raise RuntimeError(f"{self.name} not ready on port {self.port}: {self.logs()[-2000:]}")

    def logs(self):
        r = sh(*PODMAN, "logs", self.name, check=False)
        return r.stdout + r.stderr

    def sigterm(self):
        """SIGTERM, and wait until it has drained and exited"""
        sh(*PODMAN, "stop", "-t", "60", self.name, timeout=120)

    def kill9(self):
        """SIGKILL; returns once the container has exited, with the time it had"""
        sh(*PODMAN, "kill", "-s", "KILL", self.name)
        sh(*PODMAN, "wait", self.name, check=False, timeout=60)
        return time.monotonic()

    def remove(self):
        sh(*PODMAN, "rm", "-f", "-t", "0", self.name, check=False)


class Balancer:
    """HAProxy or nginx on the host, in the foreground, its config rewritten to our ports"""

    def __init__(self, kind, port, backends, tmp):
        self.kind, self.port, self.proc = kind, port, None
        # how long after a replica is ready the balancer sends to it again: HAProxy's
        # checks rise 2 at 1 s; nginx's passive ones forget a failure after fail_timeout 5 s
        self.settle = 3 if kind == "haproxy" else 6
        src = (HERE / ("haproxy.cfg" if kind == "haproxy" else "nginx.conf")).read_text()
        for i, b in enumerate(backends, 1):
            src = src.replace(f"cinfer{i}:8080", f"127.0.0.1:{b}")
        src = src.replace("bind :8080", f"bind 127.0.0.1:{port}")
        src = src.replace("listen 8080;", f"listen 127.0.0.1:{port};")
        self.cfg = Path(tmp) / f"{kind}.conf"
        self.cfg.write_text(src)
        self.log = open(Path(tmp) / f"{kind}.log", "w")
        self.tmp = tmp

    def start(self):
        if self.kind == "haproxy":
            cmd = ["haproxy", "-db", "-f", str(self.cfg)]
        else:
            cmd = ["nginx", "-c", str(self.cfg), "-p", self.tmp, "-g", "daemon off;"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_status(self.port, "/health", timeout=30):
            raise RuntimeError(f"{self.kind} does not answer on port {self.port}")

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


class Load:
    """CLIENTS threads streaming chat completions through port until stop()"""

    def __init__(self, port, clients, max_tokens, model):
        self.port, self.clients, self.max_tokens, self.model = port, clients, max_tokens, model
        self.results, self.lock, self.stopping = [], threading.Lock(), threading.Event()
        self.threads = []

    def one(self, i, n):
        body = json.dumps({
            "model": self.model, "stream": True, "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": f"Client {i}, request {n}: tell me a story."}],
        })
        r = {"start": time.monotonic(), "ttft": None, "end": None, "ok": False, "err": None}
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            resp = c.getresponse()
            if resp.status != 200:
                r["err"] = f"HTTP {resp.status}: {resp.read(300)!r}"
            else:
                done = False
                for raw in resp:
                    line = raw.strip()
                    if not line.startswith(b"data: "):
                        continue
                    if line == b"data: [DONE]":
                        done = True
                        break
                    d = json.loads(line[6:])
                    if "error" in d:
                        r["err"] = f"error event: {d['error']}"
                        break
                    # time to the first token: the first chunk with content
                    delta = (d.get("choices") or [{}])[0].get("delta", {})
                    if r["ttft"] is None and delta.get("content"):
                        r["ttft"] = time.monotonic() - r["start"]
                r["ok"] = done and r["err"] is None
                if not done and r["err"] is None:
                    r["err"] = "stream ended without [DONE]"
            c.close()
        except (OSError, http.client.HTTPException, ValueError) as e:
            r["err"] = f"{type(e).__name__}: {e}"
        r["end"] = time.monotonic()
        with self.lock:
            self.results.append(r)

    def loop(self, i):
        n = 0
        while not self.stopping.is_set():
            self.one(i, n)
            n += 1

    def start(self):
        for i in range(self.clients):
            t = threading.Thread(target=self.loop, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=180)


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def run_scenario(lb, reps, name, action, args):
    load = Load(lb.port, args.clients, args.max_tokens, args.model)
    t0 = time.monotonic()
    load.start()
    time.sleep(args.seconds / 4)
    t_act = time.monotonic()
    t_act = action(reps) or t_act  # kill -9: when the replica had died
    time.sleep(max(t0 + args.seconds - time.monotonic(), 5.0))
    load.stop()
    res = load.results
    failed = [r for r in res if not r["ok"]]
    ttft = [r["ttft"] for r in res if r["ok"] and r["ttft"] is not None]
    row = {"balancer": lb.kind, "scenario": name, "requests": len(res),
           "succeeded": len(res) - len(failed), "failed": len(failed),
           "p50_ttft_s": pct(ttft, 50), "p99_ttft_s": pct(ttft, 99), "errors": []}
    if name == "kill -9":
        # only requests in flight at the kill may fail; all started after it succeed
        late = [r for r in failed if r["start"] >= t_act]
        row["failed_started_after_kill"] = len(late)
        row["pass"] = not late and len(failed) <= args.clients
    else:
        row["pass"] = not failed
    row["errors"] = sorted({r["err"] for r in failed})[:5]
    return row


def kill9(reps):
    dead = reps[0].kill9()
    time.sleep(3)  # the balancer notices; then the replica comes back
    reps[0].remove()
    reps[0].start()
    return dead


def sigterm(reps):
    reps[0].sigterm()
    reps[0].remove()
    reps[0].start()


def rolling(reps, settle):
    """each replica in turn; the next only once the balancer sends to this one again"""
    for r in reps:
        r.sigterm()
        r.remove()
        r.start()
        time.sleep(settle)


def streams(lb, max_tokens, model):
    """one long request: when its first SSE chunk and its last arrive"""
    body = json.dumps({"model": model, "stream": True, "max_tokens": max_tokens,
                       "ignore_eos": True,
                       "messages": [{"role": "user", "content": "Count from one to a thousand."}]})
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=120)
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = c.getresponse()
    first = last = None
    chunks = 0
    for raw in resp:
        line = raw.strip()
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            d = json.loads(line[6:])
            if (d.get("choices") or [{}])[0].get("delta", {}).get("content"):
                now = time.monotonic() - t0  # a chunk with a token in it
                first = now if first is None else first
                last = now
                chunks += 1
    c.close()
    return {"balancer": lb.kind, "status": resp.status, "chunks": chunks, "first_s": first,
            "last_s": last,
            "pass": resp.status == 200 and first is not None and chunks > 10 and first < 0.5 * last}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="localhost/cinfer:deploy-test")
    ap.add_argument("--balancers", default="haproxy nginx")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--port", type=int, default=18080, help="balancer; replicas on the next ports")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="cinfer-deploy-test-")
    reps = [Replica(args.image, f"cinfer-dt-{i}", args.port + i) for i in (1, 2)]
    rows, checks, ok = [], {}, True
    try:
        for r in reps:
            r.start()
        log(f"replicas up on ports {reps[0].port}, {reps[1].port}")
        c = http.client.HTTPConnection("127.0.0.1", reps[0].port, timeout=10)
        c.request("GET", "/v1/models")
        args.model = json.loads(c.getresponse().read())["data"][0]["id"]
        c.close()
        uid = sh(*PODMAN, "exec", reps[0].name, "id", "-u").stdout.strip()
        checks["uid"] = uid
        ok &= uid != "0"
        # the image's HEALTHCHECK (cinfer health; podman runs it on demand here)
        hc = sh(*PODMAN, "healthcheck", "run", reps[0].name, check=False)
        checks["healthcheck"] = hc.returncode == 0
        ok &= checks["healthcheck"]
        for kind in args.balancers.split():
            lb = Balancer(kind, args.port, [r.port for r in reps], tmp)
            lb.start()
            try:
                checks.setdefault("streaming", []).append(streams(lb, 200, args.model))
                for name, action in (("kill -9", kill9), ("SIGTERM", sigterm),
                                     ("rolling restart", lambda reps: rolling(reps, lb.settle))):
                    log(f"{kind}: {name}")
                    rows.append(run_scenario(lb, reps, name, action, args))
            finally:
                lb.stop()
        # a replica limited to one CPU runs one worker thread
        one = Replica(args.image, "cinfer-dt-1cpu", args.port + 3, ["--cpus", "1"])
        one.start()
        line = next((l for l in one.logs().splitlines() if "CPU threads" in l), "")
        one.remove()
        checks["one_cpu"] = {"log": line.split("cinfer: ", 1)[-1], "pass": "CPU threads: 1 " in line}
    finally:
        for r in reps:
            r.remove()
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print("| balancer | scenario | requests | succeeded | failed | p50 TTFT s | p99 TTFT s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['balancer']} | {r['scenario']} | {r['requests']} | {r['succeeded']} | "
              f"{r['failed']} | {r['p50_ttft_s']:.3f} | {r['p99_ttft_s']:.3f} |")
        if r["errors"]:
            print(f"|   | errors: {'; '.join(r['errors'])} | | | | | |")
        if "failed_started_after_kill" in r:
            print(f"|   | failed among those started after the kill: "
                  f"{r['failed_started_after_kill']} | | | | | |")
        ok &= r["pass"]
    print()
    for s in checks.get("streaming", []):
        print(f"streaming through {s['balancer']}: HTTP {s['status']}, {s['chunks']} chunks, "
              f"first at {s['first_s']:.3f} s, last at {s['last_s']:.3f} s"
              f" ({'ok' if s['pass'] else 'FAIL'})")
        ok &= s["pass"]
    oc = checks.get("one_cpu", {})
    print(f"replica with --cpus 1: {oc.get('log', '(none)')} ({'ok' if oc.get('pass') else 'FAIL'})")
    ok &= bool(oc.get("pass"))
    print(f"container user id: {checks.get('uid')}; the image's HEALTHCHECK: "
          f"{'healthy' if checks.get('healthcheck') else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "checks": checks}, indent=1))
    print("deploy-test:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Settings of `cinfer serve`: configs/default.json, precedence (flags >
environment > file > defaults), errors naming the bad key, --model-alias,
--api-key-file, the start-to-ready log line, and the JSON access log."""

import json
import os
import socket
import subprocess
import time

import openai

from conftest import CINFER_BIN, CINFER_MODEL, REPO_ROOT, Server, free_port


def serve(*args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("CINFER_")}
    e.update(env or {})
    return subprocess.run([str(CINFER_BIN), "serve", *args], env=e, capture_output=True,
                          text=True, timeout=30)


def test_default_json_lists_every_setting_with_its_default():
    r = serve("--print-config")
    assert r.returncode == 0, r.stderr
    with open(REPO_ROOT / "configs" / "default.json") as f:
        assert json.loads(r.stdout) == json.load(f)


def test_precedence_flag_env_file(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"port": 9000, "threads": 1, "ctx": 512, "kv_type": "f32"}))
    r = serve("--config", str(cfg), "--threads", "2", "--print-config",
              env={"CINFER_PORT": "9001", "CINFER_THREADS": "3"})
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["threads"] == 2       # flag over environment and file
    assert got["port"] == 9001       # environment over file
    assert got["ctx"] == 512         # file over default
    assert got["kv_type"] == "f32"
    assert got["max_seqs"] == 64     # default


def test_unknown_key_and_bad_values_fail_at_start(tmp_path):
    bad = tmp_path / "bad.json"
    for body, needle in [({"prot": 1}, '"prot"'), ({"port": "x"}, '"port"'),
                         ({"port": 70000}, '"port"'), ({"kv_type": "q9"}, '"kv_type"')]:
        bad.write_text(json.dumps(body))
        r = serve("--config", str(bad), "-m", str(CINFER_MODEL))
        assert r.returncode == 2 and needle in r.stderr, (body, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    r = serve("-m", str(CINFER_MODEL), env={"CINFER_THREADS": "many"})
    assert r.returncode == 2 and "CINFER_THREADS" in r.stderr
    r = serve("-m", str(CINFER_MODEL), "--max-body", "-1")
    assert r.returncode == 2 and "--max-body" in r.stderr
    r = serve("-m", str(CINFER_MODEL), "--no-such-flag", "1")
    assert r.returncode == 2 and "--no-such-flag" in r.stderr
    r = serve("-m", str(REPO_ROOT / "README.md"), "--port", "0")
    assert r.returncode == 2 and "README.md" in r.stderr


def test_alias_key_file_ready_line_and_json_log(tmp_path):
    keyf = tmp_path / "key"
    keyf.write_text("k3y\n")
    srv = Server(["--model-alias", "smol", "--api-key-file", str(keyf), "--log-format", "json"],
                 name="alias").start()
    try:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="k3y", max_retries=0)
        ids = [m.id for m in c.models.list().data]
        assert "smol" in ids and CINFER_MODEL.stem in ids
        r = c.completions.create(model="smol", prompt="Hi", max_tokens=2, temperature=0)
        assert r.model == "smol" and r.usage.completion_tokens >= 1
        bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
        try:
            bad.models.list()
            assert False, "a wrong key was accepted"
        except openai.AuthenticationError:
            pass
    finally:
        assert srv.stop() == 0
    lines = [json.loads(l) for l in srv.stderr_text().splitlines() if l.startswith("{")]
    ready = [l for l in lines if "ready in" in l.get("msg", "")]
    assert ready, srv.stderr_text()
    seconds = float(ready[0]["msg"].split("ready in ")[1].split(" s")[0])
    assert seconds < 30  # the figure itself is reported in the README, not asserted
    access = [l for l in lines if l.get("path") == "/v1/completions"]
    assert access and access[0]["status"] == 200 and access[0]["completion_tokens"] >= 1


def test_device_choice(server):
    """--device: an unknown name exits 2 naming the choices; ppu (not built in
    here) exits 2 saying why, before the model is read; run and bench take it
    too (and CINFER_DEVICE); /version and /v1/models say what runs."""
    r = serve("-m", str(CINFER_MODEL), "--device", "nosuch")
    assert r.returncode == 2 and "auto|cpu|ppu" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = serve("-m", str(CINFER_MODEL), "--device", "ppu", "--port", "0")
    assert r.returncode == 2 and "no PPU backend" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # said before listening
    e = {k: v for k, v in os.environ.items() if not k.startswith("CINFER_")}
    for cmd in (["run", "-m", str(CINFER_MODEL), "-p", "Hi", "--device", "ppu"],
                ["bench", "-m", str(CINFER_MODEL), "-p", "8", "-n", "0", "-r", "1", "--device", "gpu"]):
        r = subprocess.run([str(CINFER_BIN), *cmd], env=e, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (cmd, r.stderr)
        assert "ppu" in r.stderr and "cpu" in r.stderr, r.stderr
    r = subprocess.run([str(CINFER_BIN), "run", "-m", str(CINFER_MODEL), "-p", "Hi", "-n", "2", "--temp", "0"],
                       env=dict(e, CINFER_DEVICE="ppu"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no PPU backend" in r.stderr, r.stderr
    status, body = server.json("GET", "/version")
    assert status == 200 and body["device"] == "cpu" and body["kernels"] in ("scalar", "avx2", "avx512", "avxvnni", "avx512vnni"), body
    assert body["devices_built"] == ["cpu"], body  # this build has no PPU backend
    status, body = server.json("GET", "/v1/models")
    assert body["data"][0]["device"] == "cpu", body


def test_health_command(server, keyed_server):
    """`cinfer health URL`, the containers' probe without curl: exit 0 on 200
    (also behind an API key: /health needs none), 1 naming the status or the
    failure otherwise, 2 on a bad URL; a silent server times out."""
    def health(*args, timeout=30):
        return subprocess.run([str(CINFER_BIN), "health", *args], capture_output=True, text=True,
                              timeout=timeout)
    for srv in (server, keyed_server):
        for path in ("/health", "/health/ready"):
            r = health(srv.url + path)
            assert r.returncode == 0 and r.stdout.strip() == f"{srv.url}{path}: 200", r
    r = health(server.url + "/no-such-route")
    assert r.returncode == 1 and ": 404" in r.stderr, r
    port = free_port()
    r = health(f"http://127.0.0.1:{port}/health")
    assert r.returncode == 1 and "cannot connect" in r.stderr, r
    for bad in ("ftp://x/", "http://", "http://h:99999/", "http://h:x/"):
        r = health(bad)
        assert r.returncode == 2 and "http://HOST[:PORT][/PATH]" in r.stderr, (bad, r)
    # a listener that never answers: the timeout, not a hang
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        t0 = time.monotonic()
        r = health("--timeout", "0.5", f"http://127.0.0.1:{s.getsockname()[1]}/health")
        assert r.returncode == 1 and "timed out" in r.stderr and time.monotonic() - t0 < 10, r
    finally:
        s.close()
    # no URL: CINFER_PORT's port (a container's HEALTHCHECK), else 8080
    r = subprocess.run([str(CINFER_BIN), "health"], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, CINFER_PORT=str(server.port)))
    assert r.returncode == 0 and f":{server.port}/health: 200" in r.stdout, r

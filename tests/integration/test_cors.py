"""CORS (--allowed-origins), close to vLLM's (Starlette's CORSMiddleware).

With the default '*', every response (JSON, errors, /metrics, /health, SSE)
says Access-Control-Allow-Origin: *, with or without an Origin (Starlette
adds nothing without one); with a list,
an Origin on it is echoed (with Vary: Origin) and others get none.  OPTIONS on
a known route is a 204 preflight that needs no API key; a preflight from an
origin not let in is a 400 "Disallowed CORS origin" (Starlette's status).
Bad values of the flag stop the server at start with one line.

The last test drives a real headless Chromium: a page served from a second
loopback origin (cors_page.html) calls the server with fetch(), a plain and a
streamed chat completion with an API key (so each is preflighted), and the
test reads what the page saw from the DOM Chromium dumps.
"""

import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import urllib.parse

import pytest

from conftest import API_KEY, CINFER_BIN, CINFER_MODEL, REPO_ROOT, _finish, _start

ACAO = "Access-Control-Allow-Origin"
PAGE = REPO_ROOT / "tests/integration/cors_page.html"
CHAT = {"messages": [{"role": "user", "content": "Count from one to ten."}], "max_tokens": 8,
        "temperature": 0}
KNOWN_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/anything",
                "/tokenize", "/detokenize", "/apply-template", "/health", "/health/ready",
                "/metrics", "/version"]


def preflight(srv, path, origin, method="POST", req_headers="authorization,content-type"):
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if req_headers is not None:
        h["Access-Control-Request-Headers"] = req_headers
    return srv.request("OPTIONS", path, headers=h, timeout=10)


def words(v):
    return {w.strip().lower() for w in (v or "").split(",") if w.strip()}


def sse_lines(srv, body, headers):
    """Status, headers and the data: payloads of a streamed chat completion."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(dict(body, stream=True)),
                     headers=dict(headers, **{"Content-Type": "application/json"}))
        r = conn.getresponse()
        data = r.read().decode()
        return r.status, r.headers, [ln[5:].strip() for ln in data.splitlines() if ln.startswith("data:")]
    finally:
        conn.close()


def assert_error_json(data):
    err = json.loads(data)["error"]
    assert isinstance(err["message"], str) and err["message"] and "type" in err, err
    return err


# ---- --allowed-origins '*' (the default) -----------------------------------------------------

def test_preflight_is_204_with_the_cors_headers(server):
    status, h, data = preflight(server, "/v1/chat/completions", "http://page.example:3000")
    assert status == 204, (status, data)
    assert data == b""
    assert h.get(ACAO) == "*"
    assert {"get", "post", "options"} <= words(h.get("Access-Control-Allow-Methods"))
    assert {"authorization", "content-type"} <= words(h.get("Access-Control-Allow-Headers"))
    assert int(h.get("Access-Control-Max-Age")) > 0
    assert "options" in words(h.get("Allow")) and "post" in words(h.get("Allow"))
    assert h.get("X-Request-Id")
    # no Access-Control-Request-Headers: the headers a client needs are still listed
    status, h, _ = preflight(server, "/v1/models", "http://page.example", "GET", None)
    assert status == 204
    assert {"authorization", "content-type"} <= words(h.get("Access-Control-Allow-Headers"))
    # the connection stays open for the request the preflight was for
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for path in ("/v1/chat/completions", "/v1/models"):
            conn.request("OPTIONS", path, headers={"Origin": "http://page.example",
                                                   "Access-Control-Request-Method": "POST"})
            r = conn.getresponse()
            assert r.status == 204 and r.read() == b"" and not r.will_close, (path, r.status)
        conn.request("GET", "/v1/models", headers={"Origin": "http://page.example"})
        r = conn.getresponse()
        assert r.status == 200 and r.headers.get(ACAO) == "*" and json.loads(r.read())["data"]
    finally:
        conn.close()
    # headers that are not tokens are not echoed
    status, h, _ = preflight(server, "/v1/models", "http://page.example", "GET", "x-a, b(c)")
    assert status == 204 and "b(c)" not in h.get("Access-Control-Allow-Headers", "")


def test_options_on_every_known_route_and_404_elsewhere(server):
    for path in KNOWN_ROUTES:
        status, h, data = preflight(server, path, "http://page.example")
        assert status == 204 and h.get(ACAO) == "*", (path, status, data)
    status, h, data = preflight(server, "/v2/nothing", "http://page.example")
    assert status == 404 and h.get(ACAO) == "*", status
    assert_error_json(data)
    # a plain OPTIONS (no Origin) is answered as well: the methods the route takes
    status, h, _ = server.request("OPTIONS", "/v1/models", timeout=10)
    assert status == 204 and words(h.get("Allow")) == {"get", "head", "options"}


def test_preflight_needs_no_api_key(keyed_server):
    status, h, data = preflight(keyed_server, "/v1/chat/completions", "http://page.example")
    assert status == 204, (status, data)
    assert h.get(ACAO) == "*"
    # the request after it still needs the key, and its 401 carries the header too
    status, h, data = keyed_server.request("POST", "/v1/chat/completions", CHAT,
                                           headers={"Origin": "http://page.example"}, timeout=10)
    assert status == 401 and h.get(ACAO) == "*"
    assert_error_json(data)


def test_every_kind_of_response_carries_the_header(server):
    o = {"Origin": "http://page.example"}
    cases = [
        ("GET", "/v1/models", None, 200),
        ("GET", "/health", None, 200),
        ("GET", "/health/ready", None, 200),
        ("GET", "/metrics", None, 200),
        ("GET", "/version", None, 200),
        ("POST", "/v1/chat/completions", CHAT, 200),
        ("POST", "/tokenize", {"content": "hi"}, 200),
        ("POST", "/v1/chat/completions", b"{not json", 400),
        ("GET", "/v1/models/no-such-model", None, 404),
        ("GET", "/v2/nothing", None, 404),
        ("GET", "/v1/chat/completions", None, 405),
    ]
    for method, path, body, want in cases:
        for hdrs in (o, {}):  # with '*' the header comes without an Origin too
            status, h, data = server.request(method, path, body, headers=dict(hdrs), timeout=60)
            assert status == want, (method, path, status, data[:200])
            assert h.get(ACAO) == "*", (method, path, hdrs, dict(h))
            assert h.get("Vary") is None  # nothing depends on the Origin with '*'
    status, h, _ = server.request("GET", "/v1/models", headers=o, timeout=10)
    assert "x-request-id" in words(h.get("Access-Control-Expose-Headers"))


def test_the_sse_stream_carries_the_header(server):
    status, h, events = sse_lines(server, CHAT, {"Origin": "http://page.example"})
    assert status == 200 and h.get("Content-Type", "").startswith("text/event-stream")
    assert h.get(ACAO) == "*"
    assert events and events[-1] == "[DONE]"


# ---- a list of origins -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def listed():
    srv = _start(["--allowed-origins", "http://a.example, https://b.example:8443",
                  "--api-key", API_KEY, "--max-body", "1024"], "cors_listed")
    yield srv
    _finish(srv)


def test_a_listed_origin_is_echoed_with_vary(listed):
    key = {"Authorization": f"Bearer {API_KEY}"}
    for origin in ("http://a.example", "https://b.example:8443"):
        status, h, _ = preflight(listed, "/v1/chat/completions", origin)
        assert status == 204 and h.get(ACAO) == origin and "origin" in words(h.get("Vary"))
        for method, path, body, hdrs, want in [
            ("GET", "/v1/models", None, key, 200),
            ("GET", "/metrics", None, {}, 200),
            ("GET", "/health", None, {}, 200),
            ("GET", "/v1/models", None, {}, 401),
            ("POST", "/v1/chat/completions", b"{}", key, 400),
            ("POST", "/v1/chat/completions", b"x" * 5000, key, 413),
            ("GET", "/nowhere", None, key, 404),
        ]:
            status, h, data = listed.request(method, path, body, dict(hdrs, Origin=origin), 30)
            assert status == want, (method, path, status, data[:200])
            assert h.get(ACAO) == origin and "origin" in words(h.get("Vary")), (path, dict(h))
        status, h, events = sse_lines(listed, CHAT, dict(key, Origin=origin))
        assert status == 200 and h.get(ACAO) == origin and events[-1] == "[DONE]"


def test_an_origin_not_listed_gets_no_allow_origin(listed):
    key = {"Authorization": f"Bearer {API_KEY}"}
    for origin in ("http://evil.example", "http://a.example:8080", "https://a.example", None):
        hdrs = dict(key, Origin=origin) if origin else dict(key)
        status, h, _ = listed.request("GET", "/v1/models", headers=hdrs, timeout=10)
        assert status == 200 and ACAO not in h, (origin, dict(h))
        assert "origin" in words(h.get("Vary"))  # caches must not reuse it for another origin
        status, h, events = sse_lines(listed, CHAT, hdrs)
        assert status == 200 and ACAO not in h and events[-1] == "[DONE]"
        if origin:
            # the preflight is refused as Starlette refuses it: 400, here an OpenAI error
            status, h, data = preflight(listed, "/v1/chat/completions", origin)
            assert status == 400 and ACAO not in h, (status, dict(h))
            err = assert_error_json(data)
            assert err["message"] == "Disallowed CORS origin", err


def test_an_empty_list_turns_cors_off():
    srv = _start(["--allowed-origins", ""], "cors_off")
    try:
        status, h, _ = srv.request("GET", "/v1/models", headers={"Origin": "http://a.example"})
        assert status == 200 and ACAO not in h and "Vary" not in h
        status, h, _ = srv.request("GET", "/v1/models")
        assert status == 200 and ACAO not in h
        status, h, _ = preflight(srv, "/v1/models", "http://a.example", "GET")
        assert status == 400 and ACAO not in h
    finally:
        _finish(srv)


# ---- the flag's values -------------------------------------------------------------------------

def serve(*args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("CINFER_")}
    e.update(env or {})
    return subprocess.run([str(CINFER_BIN), "serve", *args], env=e, capture_output=True,
                          text=True, timeout=30)


def test_good_values_are_taken_everywhere(tmp_path):
    for v in ["*", "", "http://a.example", "http://a.example, https://b.example:8443",
              "http://127.0.0.1:3000,http://[::1]:8080,app+x-1.y://host-1.example"]:
        r = serve("--allowed-origins", v, "--print-config")
        assert r.returncode == 0, (v, r.stderr)
        assert json.loads(r.stdout)["allowed_origins"] == v
    assert json.loads(serve("--print-config").stdout)["allowed_origins"] == "*"
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"allowed_origins": "http://f.example"}))
    r = serve("--config", str(cfg), "--print-config")
    assert r.returncode == 0 and json.loads(r.stdout)["allowed_origins"] == "http://f.example"
    r = serve("--print-config", env={"CINFER_ALLOWED_ORIGINS": "http://e.example"})
    assert r.returncode == 0 and json.loads(r.stdout)["allowed_origins"] == "http://e.example"


def test_bad_values_are_refused_in_one_line(tmp_path):
    bad = ["a.example", "http://", "http//a.example", "http://a.example/", "http://a.example/x",
           "http://a.example:99999", "http://a.example:", "http://a.example:8o", "*,http://a.example",
           "http://a.example,", ",http://a.example", "http://a.example,,http://b.example",
           "null", "http://a b", "1http://a.example", "http://[zz]", "http://user@a.example"]
    for v in bad:
        r = serve("-m", str(CINFER_MODEL), "--allowed-origins", v)
        assert r.returncode == 2, (v, r.returncode, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "--allowed-origins" in lines[0], (v, r.stderr)
    r = serve("-m", str(CINFER_MODEL), env={"CINFER_ALLOWED_ORIGINS": "nope"})
    assert r.returncode == 2 and "CINFER_ALLOWED_ORIGINS" in r.stderr
    cfg = tmp_path / "c.json"
    for body in ({"allowed_origins": "nope"}, {"allowed_origins": ["http://a.example"]}):
        cfg.write_text(json.dumps(body))
        r = serve("--config", str(cfg), "-m", str(CINFER_MODEL))
        assert r.returncode == 2 and '"allowed_origins"' in r.stderr, (body, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1


# ---- a real browser ----------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_TIMEOUT_S = 120
HOLD_S = 90  # the page's load is held at most this long for its script (see cors_page.html)


class _PageHandler(http.server.SimpleHTTPRequestHandler):
    """cors_page.html, and /hold, answered once the page's script has POSTed /done."""

    def do_GET(self):
        if self.path.startswith("/hold"):
            self.server.done.wait(HOLD_S)
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()

    def do_POST(self):
        if not self.path.startswith("/done"):
            self.send_error(404)
            return
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.done.set()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):  # quiet: pytest shows failures, not every GET
        pass


@pytest.fixture
def page_origin(tmp_path):
    """A second origin: http.server on another loopback port serving cors_page.html."""
    shutil.copy(PAGE, tmp_path / "cors_page.html")
    handler = lambda *a, **k: _PageHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.done = threading.Event()
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.done.set()
    httpd.shutdown()
    httpd.server_close()
    t.join(timeout=10)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make deps installs it)")
def test_a_browser_page_on_another_origin_calls_the_api(page_origin):
    # the page's own origin is the only one let in, so the Origin is echoed back
    srv = _start(["--allowed-origins", page_origin, "--api-key", API_KEY], "cors_browser")
    deny = _start(["--allowed-origins", "http://a.example"], "cors_deny")
    try:
        q = urllib.parse.urlencode({"api": srv.url, "key": API_KEY, "deny": deny.url})
        url = f"{page_origin}/cors_page.html?{q}"
        with tempfile.TemporaryDirectory(prefix="cinfer-chromium-") as home:
            cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                   "--disable-extensions", "--disable-background-networking",
                   f"--user-data-dir={home}/profile", "--dump-dom", url]
            env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=f"{home}/.config",
                       XDG_CACHE_HOME=f"{home}/.cache")
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                   timeout=CHROMIUM_TIMEOUT_S, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired as e:
                pytest.fail(f"chromium did not finish in {CHROMIUM_TIMEOUT_S} s\n{e.stderr!r}")
        dom = r.stdout
        assert "<title>done</title>" in dom, f"the page's script did not finish\n{dom[-3000:]}\n--- chromium stderr ---\n{r.stderr[-3000:]}"
        start = dom.index('<pre id="out">') + len('<pre id="out">')
        text = dom[start:dom.index("</pre>", start)]
        for ent, ch in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&amp;", "&")):
            text = text.replace(ent, ch)
        got = json.loads(text)
        assert got["origin"] == page_origin
        assert got.get("plain_status") == 200, got
        assert isinstance(got.get("plain_content"), str) and got["plain_content"].strip(), got
        assert got.get("plain_request_id"), got  # exposed by Access-Control-Expose-Headers
        assert got.get("stream_status") == 200, got
        assert got.get("stream_type", "").startswith("text/event-stream"), got
        assert len(got.get("stream_deltas", [])) >= 2, got
        assert got.get("stream_done") is True, got
        assert got.get("unauth_status") == 401 and got.get("unauth_code") == "invalid_api_key", got
        # the server that does not let the page's origin in: fetch() fails in the browser
        assert "deny_status" not in got and "TypeError" in got.get("deny_error", ""), got
    finally:
        _finish(deny)
        _finish(srv)

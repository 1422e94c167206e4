"""Fixtures for the integration tests of `cinfer serve`.

Each server fixture starts the real binary ($CINFER_BIN, default bin/cinfer)
on a free loopback port with $CINFER_MODEL, waits for GET /health == 200, and
at teardown sends SIGTERM and asserts a clean exit (status 0).  The server's
stderr goes to a temp file; it is shown whenever a start, a stop or a test
goes wrong, and a server that dies during a test fails that test.
"""

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import http.client
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# ASan builds start slowly; CINFER_STARTUP_TIMEOUT overrides.
STARTUP_TIMEOUT_S = float(os.environ.get("CINFER_STARTUP_TIMEOUT", "60"))
STOP_TIMEOUT_S = 10.0
API_KEY = "sekrit"


def _repo_path(value, default):
    p = Path(value or default)
    return p if p.is_absolute() else REPO_ROOT / p


CINFER_BIN = _repo_path(os.environ.get("CINFER_BIN"), "bin/cinfer")
CINFER_MODEL = _repo_path(os.environ.get("CINFER_MODEL"), "models/SmolLM2-135M-Instruct.Q4_1.gguf")


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


class Server:
    """One `cinfer serve` process."""

    def __init__(self, extra_args=(), name="server"):
        self.extra_args = list(extra_args)
        self.name = name
        self.proc = None
        self.port = None
        self.url = None
        self._stderr = None

    # -- life cycle ---------------------------------------------------------
    def start(self):
        if not os.access(CINFER_BIN, os.X_OK):
            pytest.fail(f"no executable server binary at {CINFER_BIN} (run make, or set CINFER_BIN)")
        if not CINFER_MODEL.is_file():
            pytest.fail(f"no model at {CINFER_MODEL} (run make model, or set CINFER_MODEL)")
        # The port is free when we look; another process could take it before
        # the server binds it, so an early "address in use" exit is retried.
        for attempt in range(3):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self._stderr = tempfile.NamedTemporaryFile(
                prefix=f"cinfer-{self.name}-", suffix=".stderr", delete=False
            )
            cmd = [
                str(CINFER_BIN), "serve",
                "-m", str(CINFER_MODEL),
                "--port", str(self.port),
                "--threads", "2",
                *self.extra_args,
            ]
            self.cmd = cmd
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr, cwd=REPO_ROOT
            )
            status = self._wait_healthy()
            if status == "ok":
                return self
            err = self.stderr_text()
            if status == "exited" and attempt < 2 and "in use" in err.lower():
                continue
            self._kill()
            pytest.fail(
                f"{self.name}: `{' '.join(cmd)}` "
                + (f"exited with status {self.proc.returncode} before /health answered 200"
                   if status == "exited" else f"did not answer GET /health with 200 within {STARTUP_TIMEOUT_S:.0f} s")
                + f"\n--- server stderr ---\n{err}"
            )

    def _wait_healthy(self):
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return "exited"
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    return "ok"
                conn.close()
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        return "timeout"

    def _kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        """SIGTERM, wait up to 10 s (then SIGKILL); returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "killed after SIGTERM was ignored for 10 s"
        return self.proc.returncode

    # -- helpers ------------------------------------------------------------
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self, tail=20000):
        if self._stderr is None:
            return ""
        try:
            data = Path(self._stderr.name).read_bytes()
        except OSError:
            return ""
        return data[-tail:].decode("utf-8", "replace")

    def request(self, method, path, body=None, headers=None, timeout=60):
        """One raw HTTP request on a fresh connection -> (status, headers, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            hdrs = dict(headers or {})
            if body is not None and not isinstance(body, (bytes, bytearray)):
                body = json.dumps(body).encode()
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def json(self, method, path, body=None, headers=None, timeout=60):
        status, _, data = self.request(method, path, body, headers, timeout)
        return status, json.loads(data) if data else None


_started = []


def _start(extra_args, name):
    srv = Server(extra_args, name).start()
    _started.append(srv)
    return srv


def _finish(srv):
    if srv in _started:
        _started.remove(srv)
    rc = srv.stop()
    assert rc == 0, f"{srv.name}: exit status after SIGTERM was {rc!r}, not 0\n--- server stderr ---\n{srv.stderr_text()}"
    try:
        os.unlink(srv._stderr.name)
    except OSError:
        pass


@pytest.fixture(scope="session")
def server():
    srv = _start([], "server")
    yield srv
    _finish(srv)


@pytest.fixture(scope="session")
def keyed_server():
    srv = _start(["--api-key", API_KEY], "keyed_server")
    yield srv
    _finish(srv)


@pytest.fixture(autouse=True)
def _server_still_alive():
    """Fails the test during which a started server died (crash, abort)."""
    yield
    for srv in list(_started):
        if not srv.alive():
            _started.remove(srv)
            pytest.fail(
                f"{srv.name} died during this test with exit status {srv.proc.returncode}"
                f"\n--- server stderr ---\n{srv.stderr_text()}"
            )


def make_client(srv, api_key="none"):
    import openai

    return openai.OpenAI(base_url=srv.url + "/v1", api_key=api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def client(server):
    return make_client(server)


@pytest.fixture(scope="session")
def model_id(client):
    return client.models.list().data[0].id


def pytest_runtest_makereport(item, call):
    """On a failing test, append the tail of the servers' stderr to the report."""
    if call.when == "call" and call.excinfo is not None:
        for srv in _started:
            tail = srv.stderr_text(tail=4000)
            if tail:
                item.add_report_section("call", f"{srv.name} stderr (tail)", tail)


def err_obj(exc):
    """The `error` object of an APIStatusError (the SDK unwraps it into .body)."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    assert isinstance(body, dict), f"error body is not a JSON object: {body!r}"
    return body

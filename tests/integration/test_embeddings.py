"""POST /v1/embeddings behind --embeddings, through the official openai
package (which asks for base64 unless told otherwise) and raw HTTP: the
input forms, float and base64, pooling mean / cls / last, L2 norm, the
same vector whatever else is in the batch, the 400s, and that embeddings
go through the engine like any request (its queue limits, its metrics).

The vectors are checked against llama.cpp's own (tests/fixtures/
embeddings_smollm2.json, made by tests/fixtures/make_embeddings_fixture.py
with llama-cpp-python 0.3.16, an AVX2 build) on a server that follows that
build's arithmetic (--exact-llamacpp)."""

import base64
import json
import math
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from conftest import Server, make_client

FIXTURE_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "embeddings_smollm2.json"
N_EMBD = 576  # SmolLM2-135M's hidden size


@pytest.fixture(scope="module")
def emb_server():
    srv = Server(["--embeddings"], "emb_server").start()
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def emb_client(emb_server):
    return make_client(emb_server)


def embed(srv, **body):
    status, out = srv.json("POST", "/v1/embeddings", body)
    assert status == 200, out
    return out


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def test_off_by_default(server):
    status, out = server.json("POST", "/v1/embeddings", {"input": "hello"})
    assert status == 404 and "--embeddings" in out["error"]["message"]


def test_sdk_create_float_and_base64(emb_client):
    r = emb_client.embeddings.create(model=emb_client.models.list().data[0].id, input="hello world")
    assert r.object == "list" and len(r.data) == 1 and r.data[0].index == 0
    v = r.data[0].embedding  # the SDK asked for base64 and decoded it
    assert len(v) == N_EMBD and abs(norm(v) - 1) < 1e-5
    f = emb_client.embeddings.create(model=r.model, input="hello world", encoding_format="float")
    assert f.data[0].embedding == pytest.approx(v, abs=1e-7)
    assert r.usage.prompt_tokens == f.usage.prompt_tokens == r.usage.total_tokens > 0


def test_input_forms_and_batch_invariance(emb_server):
    texts = ["hello world", "The capital of France is Paris.", "x"]
    single = [embed(emb_server, input=t, encoding_format="float")["data"][0]["embedding"] for t in texts]
    many = embed(emb_server, input=texts, encoding_format="float")
    assert [d["index"] for d in many["data"]] == [0, 1, 2]
    for a, d in zip(single, many["data"]):
        assert d["embedding"] == a  # bit for bit: the batch does not change a sequence
    ids = [emb_server.json("POST", "/tokenize", {"content": t})[1]["tokens"] for t in texts]
    by_ids = embed(emb_server, input=ids, encoding_format="float")
    assert [d["embedding"] for d in by_ids["data"]] == single
    one = embed(emb_server, input=ids[1], encoding_format="float")
    assert one["data"][0]["embedding"] == single[1]
    assert many["usage"]["prompt_tokens"] == sum(len(i) for i in ids)
    # different texts give different vectors; a text is closest to itself
    dot = sum(x * y for x, y in zip(single[0], single[1]))
    assert dot < 0.999


def test_base64_is_little_endian_float32(emb_server):
    f = embed(emb_server, input="hello", encoding_format="float")["data"][0]["embedding"]
    b = embed(emb_server, input="hello", encoding_format="base64")["data"][0]["embedding"]
    raw = base64.b64decode(b)
    assert len(raw) == 4 * N_EMBD
    assert list(struct.unpack("<%df" % N_EMBD, raw)) == pytest.approx(f, abs=1e-7)


def test_concurrent_requests_get_the_same_vectors(emb_server):
    texts = ["alpha beta gamma " * k for k in range(1, 9)]
    alone = [embed(emb_server, input=t, encoding_format="float")["data"][0]["embedding"] for t in texts]
    with ThreadPoolExecutor(8) as ex:
        together = list(
            ex.map(lambda t: embed(emb_server, input=t, encoding_format="float"), texts)
        )
    assert [r["data"][0]["embedding"] for r in together] == alone


@pytest.mark.parametrize(
    "body,param",
    [
        ({"input": "x", "dimensions": 64}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": []}, "input"),
        ({"input": ""}, "input"),
        ({"input": [1, -1]}, "input"),
        ({"input": [["a"]]}, "input"),
        ({"input": 3}, "input"),
        ({}, "input"),
        ({"input": "x", "model": "other"}, "model"),
        ({"input": "x", "user": 5}, "user"),
    ],
)
def test_bad_requests(emb_server, body, param):
    status, out = emb_server.json("POST", "/v1/embeddings", body)
    assert status in (400, 404), out
    assert out["error"]["param"] == param


def test_many_inputs_in_one_request(emb_server):
    # LangChain sends up to 1000 texts a request; the default queue holds 256 sequences
    out = embed(emb_server, input=[f"text {i}" for i in range(200)], encoding_format="float")
    assert [d["index"] for d in out["data"]] == list(range(200))
    status, err = emb_server.json("POST", "/v1/embeddings", {"input": ["x"] * 300})
    assert status == 400 and err["error"]["code"] == "request_too_large", err
    status, err = emb_server.json("POST", "/v1/embeddings", {"input": ["x"] * 2049})
    assert status == 400 and err["error"]["param"] == "input", err


def test_dimensions_equal_to_the_model_is_fine(emb_server):
    out = embed(emb_server, input="x", dimensions=N_EMBD, encoding_format="float")
    assert len(out["data"][0]["embedding"]) == N_EMBD


def test_through_the_engine_queue_and_metrics():
    srv = Server(["--embeddings", "--max-queue", "2"], "emb_small_queue").start()
    try:
        status, out = srv.json("POST", "/v1/embeddings", {"input": ["a", "b", "c"]})
        assert status == 400 and out["error"]["code"] == "request_too_large", out
        embed(srv, input=["a", "b"])
        _, _, text = srv.request("GET", "/metrics")
        lines = [l for l in text.decode().splitlines() if l.startswith("cinfer:prompt_tokens_total")]
        assert lines and float(lines[0].split()[-1]) >= 2
    finally:
        assert srv.stop() == 0


@pytest.mark.skipif(not FIXTURE_PATH.exists(), reason="no embeddings fixture")
@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_vectors_match_llama_cpp(pooling):
    fx = json.loads(FIXTURE_PATH.read_text())
    srv = Server(["--embeddings", "--exact-llamacpp", "--pooling", pooling], "emb_" + pooling).start()
    try:
        worst = 0.0
        for case in fx["pooling"][pooling]:
            got = embed(srv, input=case["tokens"], encoding_format="float")["data"][0]["embedding"]
            ref = case["embedding"]
            worst = max(worst, max(abs(a - b) for a, b in zip(got, ref)))
        print(f"\n{pooling} pooling vs llama.cpp: worst |difference| {worst:.2e}")
        assert worst < 1e-4
    finally:
        assert srv.stop() == 0

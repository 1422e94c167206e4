"""litellm (the OpenAI-compatible provider) against the server:
litellm.embedding, and litellm.responses streamed and not.  litellm is told
to use its bundled model list, so that nothing is fetched from the
network."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
import pytest  # noqa: E402

from test_embeddings import emb_server  # noqa: F401,E402  (the --embeddings server)


def kw(srv, model_id):
    return {"model": "openai/" + model_id, "api_base": srv.url + "/v1", "api_key": "none"}


def test_embedding(emb_server, model_id):
    r = litellm.embedding(input=["hello", "world"], **kw(emb_server, model_id))
    assert len(r.data) == 2
    direct = emb_server.json("POST", "/v1/embeddings", {"input": "hello", "encoding_format": "float"})[1]
    assert r.data[0]["embedding"] == pytest.approx(direct["data"][0]["embedding"], abs=1e-7)
    assert r.usage.prompt_tokens == 2


def test_responses(server, model_id):
    args = dict(input="Name the capital of France.", max_output_tokens=20, temperature=0,
                **kw(server, model_id))
    r = litellm.responses(**args)
    text = r.output[0].content[0].text
    assert "Paris" in text and r.usage.output_tokens > 0
    events = list(litellm.responses(stream=True, **args))
    types = [str(getattr(e.type, "value", e.type)) for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    deltas = [e.delta for e in events if str(getattr(e.type, "value", e.type)) == "response.output_text.delta"]
    assert "".join(deltas) == text

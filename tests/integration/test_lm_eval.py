"""lm-eval-harness's local-completions model scoring a small multiple-
choice task (tests/integration/lm_eval: 20 questions written for this test)
end to end against a real server: lm-eval tokenizes through the server's
/tokenizer_info and /tokenize (its remote tokenizer, as with vLLM), sends
token-id prompts with echo + logprobs, and reads the prompt tokens'
log-probabilities to rank the choices.

The accuracy is then computed again here from the server's own
/v1/completions log-probabilities of each choice; lm-eval's figure must be
the same, so the harness read what the server computed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TASK_DIR = Path(__file__).resolve().parent / "lm_eval"
SLOWDOWN = float(os.environ.get("CINFER_SLOWDOWN", "1"))


def continuation_logprob(srv, model, context, continuation):
    tok = lambda t: srv.json("POST", "/tokenize", {"content": t})[1]["tokens"]
    ctx = tok(context)
    whole = tok(context + continuation)
    assert whole[: len(ctx)] == ctx
    status, body = srv.json(
        "POST",
        "/v1/completions",
        {"model": model, "prompt": whole, "echo": True, "logprobs": 1, "max_tokens": 0},
    )
    assert status == 200, body
    return sum(body["choices"][0]["logprobs"]["token_logprobs"][len(ctx):])


def test_local_completions_reports_an_accuracy(server, model_id, tmp_path):
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_HOME=str(tmp_path / "hf"))
    args = (
        f"model={model_id},base_url={server.url}/v1/completions,tokenizer_backend=remote,"
        "tokenized_requests=True,num_concurrent=2,max_retries=1"
    )
    out = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", args,
         "--tasks", "cinfer_quiz", "--include_path", str(TASK_DIR), "--output_path", str(out)],
        cwd=TASK_DIR, env=env, capture_output=True, text=True, timeout=600 * SLOWDOWN,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    results = list(out.rglob("results_*.json"))
    assert len(results) == 1, p.stdout[-2000:]
    acc = json.loads(results[0].read_text())["results"]["cinfer_quiz"]["acc,none"]
    print(f"\nlm-eval local-completions, cinfer_quiz (20 questions): acc {acc:.2f}")

    # the same ranking from the server's own log-probabilities
    items = [json.loads(l) for l in (TASK_DIR / "quiz.jsonl").read_text().splitlines()]
    right = 0
    for it in items:
        ctx = f"Question: {it['question']}\nAnswer:"
        scores = [continuation_logprob(server, model_id, ctx, " " + c) for c in it["choices"]]
        right += scores.index(max(scores)) == it["answer"]
    assert acc == pytest.approx(right / len(items))
    assert right > 0  # the model does better than never right on questions this plain

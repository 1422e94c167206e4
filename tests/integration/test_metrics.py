"""GET /metrics as vLLM's dashboards and autoscalers read it, parsed with the
Prometheus client's own parser: vLLM's series (V1 names, types, buckets and
meaning) under cinfer:, each labelled model_name="<served name>", and with
--metrics-compat vllm the same series again under vLLM's names (vllm:...),
with the extra names vLLM versions and the Gateway API Inference Extension
read (gpu_cache_usage_perc, time_per_output_token_seconds,
lora_requests_info, cache_config_info).  Each server here is this module's
own, so that the counts are exactly those of the requests it sends.
"""
import math
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import CINFER_BIN, _finish, _start, make_client

ALIAS = 'smol "q"\\n'  # a quote and a backslash: the label value must be escaped
CTX = 1000  # the 1-2-5 token buckets stop at the context length, inclusive

TTFT_LE = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
           20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_LE = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
          40.0, 80.0]
REQ_LE = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
          480.0, 960.0, 1920.0, 7680.0]
STEP_LE = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]


def le_125(max_value):
    """vLLM's build_1_2_5_buckets."""
    out, e = [], 0
    while True:
        for m in (1, 2, 5):
            if m * 10 ** e > max_value:
                return out
            out.append(m * 10 ** e)
        e += 1


HISTOGRAMS = {  # name after the prefix -> its bucket bounds (None: the 1-2-5 series to the context)
    "time_to_first_token_seconds": TTFT_LE,
    "inter_token_latency_seconds": ITL_LE,
    "e2e_request_latency_seconds": REQ_LE,
    "request_queue_time_seconds": REQ_LE,
    "request_prefill_time_seconds": REQ_LE,
    "request_decode_time_seconds": REQ_LE,
    "request_inference_time_seconds": REQ_LE,
    "request_prompt_tokens": None,
    "request_generation_tokens": None,
    "request_max_num_generation_tokens": None,
    "iteration_tokens_total": STEP_LE,
}
GAUGES = ["num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "cache_config_info"]
COUNTERS = ["prefix_cache_queries", "prefix_cache_hits", "num_preemptions", "prompt_tokens",
            "generation_tokens", "request_success"]  # family names: the parser drops _total


@pytest.fixture(scope="module")
def plain():
    srv = _start(["--model-alias", ALIAS, "--ctx", str(CTX)], "metrics_plain")
    yield srv
    _finish(srv)


@pytest.fixture(scope="module")
def compat():
    srv = _start(["--metrics-compat", "vllm"], "metrics_vllm")
    yield srv
    _finish(srv)


def scrape(srv):
    status, headers, data = srv.request("GET", "/metrics", timeout=10)
    assert status == 200, data[:300]
    assert headers["Content-Type"].startswith("text/plain")
    fams = {}
    for f in text_string_to_metric_families(data.decode()):
        assert f.name not in fams, f"family {f.name} printed twice"
        fams[f.name] = f
    return fams


def one(fams, name, suffix=""):
    """The value of the one sample NAME+SUFFIX of family NAME."""
    got = [s.value for s in fams[name].samples if s.name == name + suffix]
    assert len(got) == 1, (name, suffix, fams[name].samples)
    return got[0]


def hist(fams, name):
    """(bounds, cumulative counts, sum, count) of histogram NAME."""
    f = fams[name]
    assert f.type == "histogram", (name, f.type)
    buckets = [(s.labels["le"], s.value) for s in f.samples if s.name == name + "_bucket"]
    assert buckets and buckets[-1][0] == "+Inf", buckets
    bounds = [float(le) for le, _ in buckets[:-1]]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), f"{name}: buckets not cumulative: {buckets}"
    count = one(fams, name, "_count")
    assert counts[-1] == count, (name, counts[-1], count)
    return bounds, counts, one(fams, name, "_sum"), count


def workload(srv):
    """Chat and completions, streamed and not (one choice each): the usage the server reported."""
    client = make_client(srv)
    model = client.models.list().data[0].id
    usages = []
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is 2+2?"}],
                                       max_tokens=6, temperature=0)
    usages.append(r.usage)
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name a colour, please."}], max_tokens=5,
        temperature=0, stream=True, stream_options={"include_usage": True})
    usages.append([c.usage for c in stream if c.usage][-1])
    r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=7, temperature=0,
                                  extra_body={"ignore_eos": True})
    usages.append(r.usage)
    stream = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4,
                                       temperature=0, stream=True, stream_options={"include_usage": True})
    usages.append([c.usage for c in stream if c.usage][-1])
    return (len(usages), sum(u.prompt_tokens for u in usages), sum(u.completion_tokens for u in usages))


def test_series_types_labels_buckets_and_values(plain):
    status, models = plain.json("GET", "/v1/models")
    assert status == 200 and models["data"][0]["id"] == ALIAS, models  # the alias comes first
    n_ctx = models["data"][0]["max_model_len"]
    assert n_ctx == CTX
    n_req, prompt, generated = workload(plain)
    assert generated > 0
    fams = scrape(plain)

    assert not [n for n in fams if n.startswith("vllm:")], "vllm: series without --metrics-compat vllm"
    for name in GAUGES:
        assert fams["cinfer:" + name].type == "gauge", name
    for name in COUNTERS + ["http_requests"]:
        assert fams["cinfer:" + name].type == "counter", name
    for name, le in HISTOGRAMS.items():
        bounds, _, _, _ = hist(fams, "cinfer:" + name)
        assert bounds == (le_125(n_ctx) if le is None else le), name
    assert le_125(n_ctx)[-1] == 1000  # the context length itself is a bound
    # every series of every family carries the served name, escaped and read back as it was
    for f in fams.values():
        for s in f.samples:
            assert s.labels.get("model_name") == ALIAS, s

    # per request, from the engine's END events
    _, _, psum, pcount = hist(fams, "cinfer:request_prompt_tokens")
    assert (pcount, psum) == (n_req, prompt)
    _, _, gsum, gcount = hist(fams, "cinfer:request_generation_tokens")
    assert (gcount, gsum) == (n_req, generated)
    _, _, msum, mcount = hist(fams, "cinfer:request_max_num_generation_tokens")
    assert (mcount, msum) == (n_req, generated)  # n = 1: the most of one choice is its own
    assert one(fams, "cinfer:prompt_tokens", "_total") == prompt
    assert one(fams, "cinfer:generation_tokens", "_total") == generated
    ok = sum(s.value for s in fams["cinfer:request_success"].samples)
    assert ok == n_req
    for name in ["time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds",
                 "request_prefill_time_seconds", "request_decode_time_seconds",
                 "request_inference_time_seconds"]:
        _, _, total, count = hist(fams, "cinfer:" + name)
        assert count == n_req and total >= 0, (name, count, total)
    _, _, itl_sum, itl_count = hist(fams, "cinfer:inter_token_latency_seconds")
    assert 0 < itl_count < generated and itl_sum > 0  # about one gap fewer than tokens, per request
    _, _, pre, _ = hist(fams, "cinfer:request_prefill_time_seconds")
    _, _, dec, _ = hist(fams, "cinfer:request_decode_time_seconds")
    _, _, inf, _ = hist(fams, "cinfer:request_inference_time_seconds")
    _, _, e2e, _ = hist(fams, "cinfer:e2e_request_latency_seconds")
    _, _, queue, _ = hist(fams, "cinfer:request_queue_time_seconds")
    assert pre > 0 and dec > 0
    assert math.isclose(pre + dec, inf, rel_tol=1e-9, abs_tol=1e-6), (pre, dec, inf)
    assert math.isclose(queue + inf, e2e, rel_tol=1e-9, abs_tol=1e-6), (queue, inf, e2e)

    # per engine step: vLLM counts each sampled token and a prompt in its first token's step
    _, counts, step_sum, steps = hist(fams, "cinfer:iteration_tokens_total")
    assert step_sum >= prompt + generated, (step_sum, prompt, generated)
    assert generated / n_req <= steps <= step_sum

    info = [s for s in fams["cinfer:cache_config_info"].samples]
    assert len(info) == 1 and info[0].value == 1
    labels = info[0].labels
    assert labels["block_size"] == "16" and labels["cache_dtype"] == "f16"
    assert labels["enable_prefix_caching"] == "True" and int(labels["num_gpu_blocks"]) > 0
    assert one(fams, "cinfer:num_requests_running") == 0
    assert one(fams, "cinfer:num_requests_waiting") == 0
    routes = {(s.labels["route"], s.labels["status"]) for s in fams["cinfer:http_requests"].samples}
    assert ("/v1/chat/completions", "200") in routes and ("/v1/completions", "200") in routes


def test_responses_tokens_count_in_the_latency_series(plain):
    """/v1/responses runs through the same metrics: one inter-token gap per token after the first."""
    client = make_client(plain)
    model = client.models.list().data[0].id
    before = scrape(plain)
    r = client.responses.create(model=model, input="Count from one to twenty.", max_output_tokens=8,
                                temperature=0)
    after = scrape(plain)
    n = r.usage.output_tokens
    assert n > 1
    itl = [hist(f, "cinfer:inter_token_latency_seconds")[3] for f in (before, after)]
    assert itl[1] - itl[0] == n - 1
    gen = [hist(f, "cinfer:request_generation_tokens")[2] for f in (before, after)]
    assert gen[1] - gen[0] == n


def test_max_num_generation_tokens_is_once_per_prompt(plain):
    """n choices of one prompt: n requests in the per-request histograms, one in the max."""
    before = scrape(plain)
    status, body = plain.json("POST", "/v1/completions", {
        "model": ALIAS, "prompt": ["Hello there", "One, two,"], "n": 3, "max_tokens": 6, "temperature": 1,
        "seed": 7, "ignore_eos": True})
    assert status == 200, body
    assert len(body["choices"]) == 6
    after = scrape(plain)

    def delta(name):
        _, _, s0, c0 = hist(before, name)
        _, _, s1, c1 = hist(after, name)
        return c1 - c0, s1 - s0

    assert body["usage"]["completion_tokens"] == 36
    assert delta("cinfer:request_generation_tokens") == (6, 36)
    assert delta("cinfer:request_max_num_generation_tokens") == (2, 12)  # 6 for each prompt
    count, prompts = delta("cinfer:request_prompt_tokens")
    assert count == 6 and prompts == 3 * body["usage"]["prompt_tokens"]


def test_vllm_names_with_equal_values(compat):
    n_req, prompt, generated = workload(compat)
    fams = scrape(compat)
    # what the Gateway API Inference Extension's model server protocol reads by default
    for name in ["vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
                 "vllm:gpu_cache_usage_perc", "vllm:lora_requests_info", "vllm:cache_config_info"]:
        assert fams[name].type == "gauge", name
    model = make_client(compat).models.list().data[0].id
    for f in fams.values():
        for s in f.samples:
            assert s.labels.get("model_name") == model, s
            if f.name.startswith("vllm:"):
                assert s.labels.get("engine") == "0", s

    # every cinfer: family but the HTTP one has its vllm: twin, of the same type and values
    twins = 0
    for name, f in fams.items():
        if not name.startswith("cinfer:") or name == "cinfer:http_requests":
            continue
        v = fams.get("vllm:" + name[len("cinfer:"):])
        assert v is not None, f"no vllm: twin of {name}"
        assert v.type == f.type, name
        mine = {(s.name[len("cinfer:"):], frozenset(s.labels.items())): s.value for s in f.samples}
        theirs = {(s.name[len("vllm:"):], frozenset((k, x) for k, x in s.labels.items() if k != "engine")): s.value
                  for s in v.samples}
        assert mine == theirs, name
        twins += 1
    assert twins == len(GAUGES) + len(COUNTERS) + len(HISTOGRAMS)
    assert not [n for n in fams if n.startswith("vllm:http")]

    # the names older vLLM versions used, beside the current ones
    assert one(fams, "vllm:gpu_cache_usage_perc") == one(fams, "vllm:kv_cache_usage_perc")
    assert hist(fams, "vllm:time_per_output_token_seconds") == hist(fams, "vllm:inter_token_latency_seconds")
    _, _, psum, pcount = hist(fams, "vllm:request_prompt_tokens")
    assert (pcount, psum) == (n_req, prompt)
    assert one(fams, "vllm:generation_tokens", "_total") == generated
    # no LoRA: vLLM's labels, empty, and the time of the last update as the value
    lora = fams["vllm:lora_requests_info"].samples
    assert len(lora) == 1
    assert {k: lora[0].labels[k] for k in ["max_lora", "running_lora_adapters", "waiting_lora_adapters"]} == \
        {"max_lora": "0", "running_lora_adapters": "", "waiting_lora_adapters": ""}
    assert abs(lora[0].value - time.time()) < 600
    cache = fams["vllm:cache_config_info"].samples[0].labels
    assert cache["block_size"] == "16" and int(cache["num_gpu_blocks"]) > 0


def test_metrics_compat_setting_is_checked():
    out = subprocess.run([str(CINFER_BIN), "serve", "-m", "x.gguf", "--metrics-compat", "prometheus"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "--metrics-compat must be one of vllm|none" in out.stderr, out.stderr
    out = subprocess.run([str(CINFER_BIN), "serve", "--metrics-compat", "vllm", "--print-config"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and '"metrics_compat":\t"vllm"' in out.stdout, out.stdout

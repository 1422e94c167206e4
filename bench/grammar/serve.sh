#!/bin/sh
# bench/grammar/serve.sh [-m MODEL] [-c CLIENTS] [-r REQUESTS] [-o OUTPUT_TOKENS] [--rounds N]
#                        [--schema FILE]
#
# Serving throughput with and without a JSON schema, in the same run: one
# `bin/cinfer serve`, and bench/serve_load.py sending streaming completions
# from CLIENTS threads (default 16), ignore_eos, max_tokens OUTPUT_TOKENS
# (default 128), in alternating rounds - plain, schema, schema, plain, ... -
# so that a machine whose speed drifts slows both alike.  The schema
# (default: an object holding a list of at least 160 strings, which no
# document of 128 tokens can complete, so that every request runs to
# max_tokens like the plain ones; a schema the model may finish early
# leaves shorter requests, more of whose time is prefill, and the ratio
# then measures that rather than the grammar) goes in as response_format
# json_schema.  Prints serve_load's tables, then the schema / plain ratio of
# output tokens per second, pooled and per pair of rounds.  KEEP=1 keeps
# the server log and the rounds' JSON lines (the directory is printed).
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
gen=$here/bench/serve_load.py
model=$here/models/SmolLM2-135M-Instruct.Q4_1.gguf
clients=16
reqs=32
output=128
rounds=2
schema='{"type":"object","properties":{"notes":{"type":"array","items":{"type":"string"},"minItems":160}},"required":["notes"]}'
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || { echo "usage: see the head of $0" >&2; exit 2; }
    case $1 in
    -m) model=$2 ;;
    -c) clients=$2 ;;
    -r) reqs=$2 ;;
    -o) output=$2 ;;
    --rounds) rounds=$2 ;;
    --schema) schema=$(cat "$2") ;;
    *) echo "usage: see the head of $0" >&2; exit 2 ;;
    esac
    shift 2
done
out=$(mktemp -d)
port=$(python3 "$gen" port)
"$here/bin/cinfer" serve -m "$model" --port "$port" --max-seqs "$clients" >"$out/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$out"' EXIT
python3 "$gen" wait "http://127.0.0.1:$port" --pid $pid
extra=$(python3 -c 'import json,sys; print(json.dumps({"response_format": {"type": "json_schema",
    "json_schema": {"name": "bench", "schema": json.loads(sys.argv[1])}}}))' "$schema")
run() { # label round seed [extra] - the seeds differ so that neither side's
    # prompts are in the prefix cache when the other side has just sent them
    python3 "$gen" run "http://127.0.0.1:$port" --label "$1" --round "$2" --seed "$3" \
        -c "$clients" -r "$reqs" -o "$output" --out "$out/$1.jsonl" ${4:+--extra "$4"}
}
i=0
while [ $i -lt "$rounds" ]; do
    if [ $((i % 2)) -eq 0 ]; then
        run plain $i 1; run json_schema $i 2 "$extra"
    else
        run json_schema $i 2 "$extra"; run plain $i 1
    fi
    i=$((i + 1))
done
[ -z "${KEEP:-}" ] || echo "kept: $out"
python3 "$gen" report "$out/plain.jsonl" "$out/json_schema.jsonl"
python3 - "$out/plain.jsonl" "$out/json_schema.jsonl" <<'PY'
import json, sys
def load(p):
    return {json.loads(l)["round"]: json.loads(l) for l in open(p)}
a, b = load(sys.argv[1]), load(sys.argv[2])
pa = sum(x["output_tok_s"] for x in a.values()) / len(a)
pb = sum(x["output_tok_s"] for x in b.values()) / len(b)
for lab, d in (("plain", a), ("json_schema", b)):
    toks = [r["output_tokens"] for x in d.values() for r in x["raw"] if r["ok"]]
    print("%s: %d requests, output tokens per request mean %.1f, min %d" % (lab, len(toks), sum(toks) / len(toks), min(toks)))
print("json_schema / plain, output tok/s: %.3f (%.1f vs %.1f)" % (pb / pa, pb, pa))
rs = sorted(b[r]["output_tok_s"] / a[r]["output_tok_s"] for r in a)
print("  per-round ratios: median %.3f, range %.3f .. %.3f" % (rs[len(rs) // 2] if len(rs) % 2 else
      (rs[len(rs) // 2 - 1] + rs[len(rs) // 2]) / 2, rs[0], rs[-1]))
for r in sorted(a):
    print("  round %d: %.3f (%.1f vs %.1f)" % (r, b[r]["output_tok_s"] / a[r]["output_tok_s"],
                                            b[r]["output_tok_s"], a[r]["output_tok_s"]))
PY

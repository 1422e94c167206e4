#!/bin/sh
# bench/compare-llamacpp.sh LLAMA_BIN_DIR [-m MODEL] [-p 512] [-n 128] [-r 5] [-t THREADS]
#
# Runs the same shapes through llama.cpp's llama-bench (from a llama.cpp build
# you made yourself; nothing of it is in this repo) and through cinfer bench,
# in the same run on the same machine, and prints both with the ratio
# cinfer / llama.cpp.  Batched decode (cinfer bench --batch) has no
# llama-bench equivalent and is not compared here.
set -eu
if [ $# -lt 1 ] || [ ! -x "$1/llama-bench" ]; then
    echo "usage: $0 LLAMA_BIN_DIR [-m MODEL] [-p N] [-n N] [-r N] [-t N]" >&2
    echo "  LLAMA_BIN_DIR must contain llama-bench" >&2
    exit 2
fi
llama=$1
shift
here=$(cd "$(dirname "$0")/.." && pwd)
model=$here/models/SmolLM2-135M-Instruct.Q4_1.gguf
p=512 n=128 r=5 t=$(nproc)
while [ $# -gt 0 ]; do
    case $1 in
    -m) model=$2 ;;
    -p) p=$2 ;;
    -n) n=$2 ;;
    -r) r=$2 ;;
    -t) t=$2 ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$llama/llama-bench" -m "$model" -p "$p" -n "$n" -r "$r" -t "$t" -o jsonl >"$tmp/llama.jsonl" 2>"$tmp/llama.err" || {
    cat "$tmp/llama.err" >&2
    exit 1
}
"$here/bin/cinfer" bench -m "$model" -p "$p" -n "$n" -r "$r" -t "$t" --json >"$tmp/cinfer.jsonl"
python3 - "$tmp/llama.jsonl" "$tmp/cinfer.jsonl" "$t" <<'PY'
import json, sys
ref = {}
for line in open(sys.argv[1]):
    line = line.strip()
    if not line:
        continue
    o = json.loads(line)
    name = "pp%d" % o["n_prompt"] if o.get("n_prompt") else "tg%d" % o["n_gen"]
    ref[name] = (o["avg_ts"], o["stddev_ts"])
print("| test   | cinfer tok/s       | llama.cpp tok/s    | ratio | threads |")
print("| ------ | ------------------ | ------------------ | ----- | ------- |")
for line in open(sys.argv[2]):
    o = json.loads(line)
    if o["test"] not in ref:
        continue
    a, b = (o["tokens_per_s"], o["stddev"]), ref[o["test"]]
    print("| %-6s | %8.2f ± %-7.2f | %8.2f ± %-7.2f | %5.2f | %7s |" % (o["test"], a[0], a[1], b[0], b[1], a[0] / b[0], sys.argv[3]))
PY

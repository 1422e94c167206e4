#!/bin/sh
# bench/serve.sh [-m MODEL] [-t THREADS] [-c "1 4 16 64"] [-r REQUESTS_PER_LEVEL]
#                [-i INPUT_TOKENS] [-o OUTPUT_TOKENS] [--json FILE] [LLAMA_BIN_DIR]
#
# Serving benchmark: starts `bin/cinfer serve` on a free port and, at each
# concurrency level C, sends streaming POST /v1/completions requests from C
# client threads (bench/serve_load.py, Python standard library only) with
# random ~INPUT_TOKENS prompts (no shared prefixes) and max_tokens OUTPUT_TOKENS
# with ignore_eos.  Prints output tok/s, req/s, TTFT, TPOT and ITL per level.
#
# With LLAMA_BIN_DIR (a llama.cpp build you made yourself, containing
# llama-server; nothing of it is kept in this repo) the same load then runs
# against `llama-server -np C -c C*2048`, restarted for each level C, and a
# second table and the ratios cinfer vs llama.cpp are printed.
#
# Requests per level default to max(8, 2*C), so each level has two waves.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
load=$here/bench/serve_load.py
model=$here/models/SmolLM2-135M-Instruct.Q4_1.gguf
threads=$(nproc)
levels="1 4 16 64"
reqs=0
input=128
output=128
json=
llama=
usage() {
    echo "usage: $0 [-m MODEL] [-t THREADS] [-c \"1 4 16 64\"] [-r REQUESTS_PER_LEVEL]" >&2
    echo "          [-i INPUT_TOKENS] [-o OUTPUT_TOKENS] [--json FILE] [LLAMA_BIN_DIR]" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case $1 in
    -m | -t | -c | -r | -i | -o | --json)
        [ $# -ge 2 ] || usage
        case $1 in
        -m) model=$2 ;;
        -t) threads=$2 ;;
        -c) levels=$2 ;;
        -r) reqs=$2 ;;
        -i) input=$2 ;;
        -o) output=$2 ;;
        --json) json=$2 ;;
        esac
        shift 2
        ;;
    -h | --help) usage ;;
    -*) echo "$0: unknown option $1" >&2; usage ;;
    *)
        [ -z "$llama" ] || usage
        llama=$1
        shift
        ;;
    esac
done
[ -f "$model" ] || { echo "$0: no model file $model" >&2; exit 2; }
if [ -n "$llama" ] && [ ! -x "$llama/llama-server" ]; then
    echo "$0: $llama/llama-server not found or not executable" >&2
    exit 2
fi
case $json in "" | /*) ;; *) json=$(pwd)/$json ;; esac

tmp=$(mktemp -d)
pid=
stop() {
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=
    fi
}
trap 'stop; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# start NAME LOG CMD...: start a server in the background, wait for /health.
start() {
    name=$1 log=$2
    shift 2
    "$@" >"$log" 2>&1 &
    pid=$!
    if ! python3 "$load" wait "http://127.0.0.1:$port" --pid "$pid" --timeout 300; then
        echo "$0: $name did not come up; last lines of its log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
}

t0=$(date +%s)
echo "cinfer: $model, $threads threads, levels: $levels" >&2
port=$(python3 "$load" port)
start cinfer "$tmp/cinfer.log" "$here/bin/cinfer" serve -m "$model" --port "$port" --threads "$threads"
python3 "$load" run "http://127.0.0.1:$port" --label cinfer -c "$levels" -r "$reqs" \
    -i "$input" -o "$output" --out "$tmp/cinfer.jsonl" || { tail -n 20 "$tmp/cinfer.log" >&2; exit 1; }
stop
t1=$(date +%s)
echo "cinfer: $((t1 - t0)) s" >&2
files=$tmp/cinfer.jsonl

if [ -n "$llama" ]; then
    for c in $levels; do
        port=$(python3 "$load" port)
        echo "llama.cpp: llama-server -np $c -c $((c * 2048))" >&2
        start llama-server "$tmp/llama-$c.log" env LD_LIBRARY_PATH="$llama${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
            "$llama/llama-server" -m "$model" --port "$port" -t "$threads" -np "$c" -c $((c * 2048)) --host 127.0.0.1
        python3 "$load" run "http://127.0.0.1:$port" --label llama.cpp -c "$c" -r "$reqs" \
            -i "$input" -o "$output" --out "$tmp/llama.jsonl" || { tail -n 20 "$tmp/llama-$c.log" >&2; exit 1; }
        stop
    done
    t2=$(date +%s)
    echo "llama.cpp: $((t2 - t1)) s" >&2
    files="$files $tmp/llama.jsonl"
fi

echo "## Serving benchmark: $(basename "$model"), $threads threads, ~$input prompt tokens, $output output tokens"
# shellcheck disable=SC2086
python3 "$load" report $files ${json:+--json "$json"}

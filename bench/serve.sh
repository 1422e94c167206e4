#!/bin/sh
# bench/serve.sh [-m MODEL] [-t THREADS] [-c "1 4 16 64"] [-r REQUESTS_PER_LEVEL]
#                [-i INPUT_TOKENS] [-o OUTPUT_TOKENS] [--json FILE] [--logs DIR]
#                [LLAMA_BIN_DIR]
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
# Requests per level default to max(8, min(2*C, max(C, 32))): two waves of
# requests up to C = 16 (8, 8, 32 at 1, 4, 16), one wave from C = 32 up (64 at 64),
# which keeps a full default run with llama-server near 10 minutes on 2 cores.
# --json FILE writes every per-request measurement; --logs DIR keeps the
# servers' logs.  A request that gets no byte for 180 s counts as failed.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
gen=$here/bench/serve_load.py
model=$here/models/SmolLM2-135M-Instruct.Q4_1.gguf
threads=$(nproc)
levels="1 4 16 64"
reqs=0
input=128
output=128
json=
logs=
llama=
usage() {
    echo "usage: $0 [-m MODEL] [-t THREADS] [-c \"1 4 16 64\"] [-r REQUESTS_PER_LEVEL]" >&2
    echo "          [-i INPUT_TOKENS] [-o OUTPUT_TOKENS] [--json FILE] [--logs DIR] [LLAMA_BIN_DIR]" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case $1 in
    -m | -t | -c | -r | -i | -o | --json | --logs)
        [ $# -ge 2 ] || usage
        case $1 in
        -m) model=$2 ;;
        -t) threads=$2 ;;
        -c) levels=$2 ;;
        -r) reqs=$2 ;;
        -i) input=$2 ;;
        -o) output=$2 ;;
        --json) json=$2 ;;
        --logs) logs=$2 ;;
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
if [ -n "$logs" ]; then mkdir -p "$logs"; fi

tmp=$(mktemp -d)
pid=
stop() {
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=
        if [ -n "$logs" ]; then cp "$log" "$logs/"; fi
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
    if ! python3 "$gen" wait "http://127.0.0.1:$port" --pid "$pid" --timeout 300; then
        echo "$0: $name did not come up; last lines of its log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
}

# load LABEL LOG LEVELS OUT: run the load generator against the server on $port.
# Failed requests (exit status 3) are reported in the table; the server's log
# tail is shown so that a server-side cause is visible.
load() {
    rc=0
    python3 "$gen" run "http://127.0.0.1:$port" --label "$1" -c "$3" -r "$reqs" \
        -i "$input" -o "$output" --out "$4" || rc=$?
    case $rc in
    0) ;;
    3)
        echo "$0: $1: some requests failed; last lines of the server log ($2):" >&2
        tail -n 20 "$2" >&2
        ;;
    *)
        echo "$0: $1: the load generator failed; last lines of the server log:" >&2
        tail -n 20 "$2" >&2
        exit 1
        ;;
    esac
}

t0=$(date +%s)
echo "cinfer: $model, $threads threads, levels: $levels" >&2
port=$(python3 "$gen" port)
start cinfer "$tmp/cinfer.log" "$here/bin/cinfer" serve -m "$model" --port "$port" --threads "$threads"
load cinfer "$tmp/cinfer.log" "$levels" "$tmp/cinfer.jsonl"
stop
t1=$(date +%s)
echo "cinfer: $((t1 - t0)) s" >&2
files=$tmp/cinfer.jsonl

if [ -n "$llama" ]; then
    for c in $levels; do
        port=$(python3 "$gen" port)
        echo "llama.cpp: llama-server -np $c -c $((c * 2048))" >&2
        start llama-server "$tmp/llama-$c.log" env LD_LIBRARY_PATH="$llama${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
            "$llama/llama-server" -m "$model" --port "$port" -t "$threads" -np "$c" -c $((c * 2048)) --host 127.0.0.1
        load llama.cpp "$tmp/llama-$c.log" "$c" "$tmp/llama.jsonl"
        stop
    done
    t2=$(date +%s)
    echo "llama.cpp: $((t2 - t1)) s" >&2
    files="$files $tmp/llama.jsonl"
fi

echo "## Serving benchmark: $(basename "$model"), $threads threads, ~$input prompt tokens, $output output tokens"
# shellcheck disable=SC2086
python3 "$gen" report $files ${json:+--json "$json"}

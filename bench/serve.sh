#!/bin/sh
# bench/serve.sh [-m MODEL] [-t THREADS] [-c "1 4 16 64"] [-r REQUESTS_PER_LEVEL]
#                [-i INPUT_TOKENS] [-o OUTPUT_TOKENS] [--rounds N] [--json FILE]
#                [--logs DIR] [LLAMA_BIN_DIR]
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
# --rounds N (N >= 2, with LLAMA_BIN_DIR) interleaves the two servers instead:
# both stay up (llama-server restarted per level as above), and at each level
# they take turns, N rounds of REQUESTS_PER_LEVEL requests each (new prompts
# every round; odd rounds cinfer first, even rounds llama.cpp first).  A
# machine whose speed drifts over minutes then slows both alike, which two
# back-to-back runs do not; the report pools each server's rounds and also
# prints every round's own ratio.
#
# Requests per level default to max(8, min(2*C, max(C, 32))): two waves of
# requests up to C = 16 (8, 8, 32 at 1, 4, 16), one wave from C = 32 up (64 at 64),
# which keeps a full default run with llama-server near 10 minutes on 2 cores.
# --json FILE writes every per-request measurement; --logs DIR keeps the
# servers' logs.  A request that gets no byte for 600 s counts as failed.
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
rounds=1
usage() {
    echo "usage: $0 [-m MODEL] [-t THREADS] [-c \"1 4 16 64\"] [-r REQUESTS_PER_LEVEL]" >&2
    echo "          [-i INPUT_TOKENS] [-o OUTPUT_TOKENS] [--rounds N] [--json FILE] [--logs DIR]" >&2
    echo "          [LLAMA_BIN_DIR]" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case $1 in
    -m | -t | -c | -r | -i | -o | --rounds | --json | --logs)
        [ $# -ge 2 ] || usage
        case $1 in
        -m) model=$2 ;;
        -t) threads=$2 ;;
        -c) levels=$2 ;;
        -r) reqs=$2 ;;
        -i) input=$2 ;;
        -o) output=$2 ;;
        --rounds) rounds=$2 ;;
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
case $rounds in
'' | *[!0-9]* | 0) echo "$0: --rounds must be a positive integer" >&2; exit 2 ;;
esac
if [ "$rounds" -gt 1 ] && [ -z "$llama" ]; then
    echo "$0: --rounds $rounds interleaves cinfer with llama-server: give LLAMA_BIN_DIR" >&2
    exit 2
fi
case $json in "" | /*) ;; *) json=$(pwd)/$json ;; esac
if [ -n "$logs" ]; then mkdir -p "$logs"; fi

tmp=$(mktemp -d)
# the two servers: cinfer (c_*) and llama-server (l_*), each with pid, port, log
# shellcheck disable=SC2034 # read through eval
c_pid='' l_pid='' c_log='' l_log='' c_port='' l_port=''
# stop c|l: stops that server (if up) and keeps its log in --logs DIR
stop() {
    eval "p=\$${1}_pid lg=\$${1}_log"
    if [ -n "$p" ]; then
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
        eval "${1}_pid="
        if [ -n "$logs" ]; then cp "$lg" "$logs/"; fi
    fi
}
trap 'stop c; stop l; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# start c|l NAME LOG CMD...: starts a server on a free port, waits for /health.
# The command line ends with the port.
start() {
    which=$1 name=$2 lg=$3
    shift 3
    p=$(python3 "$gen" port)
    "$@" "$p" >"$lg" 2>&1 &
    eval "${which}_pid=\$! ${which}_port=$p ${which}_log=\$lg"
    if ! python3 "$gen" wait "http://127.0.0.1:$p" --pid "$!" --timeout 300; then
        echo "$0: $name did not come up; last lines of its log:" >&2
        tail -n 20 "$lg" >&2
        exit 1
    fi
}

# load c|l LABEL LEVELS OUT [ROUND]: runs the load generator against that server.
# Failed requests (exit status 3) are reported in the table; the server's log
# tail is shown so that a server-side cause is visible.
load() {
    rc=0
    eval "p=\$${1}_port lg=\$${1}_log"
    shift
    python3 "$gen" run "http://127.0.0.1:$p" --label "$1" -c "$2" -r "$reqs" \
        -i "$input" -o "$output" --round "${4:-0}" --out "$3" || rc=$?
    case $rc in
    0) ;;
    3)
        echo "$0: $1: some requests failed; last lines of the server log ($lg):" >&2
        tail -n 20 "$lg" >&2
        ;;
    *)
        echo "$0: $1: the load generator failed; last lines of the server log:" >&2
        tail -n 20 "$lg" >&2
        exit 1
        ;;
    esac
}

# start_llama C: llama-server with C slots of 2048 tokens
start_llama() {
    echo "llama.cpp: llama-server -np $1 -c $(($1 * 2048))" >&2
    start l llama-server "$tmp/llama-$1.log" env LD_LIBRARY_PATH="$llama${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        "$llama/llama-server" -m "$model" -t "$threads" -np "$1" -c $(($1 * 2048)) --host 127.0.0.1 --port
}

t0=$(date +%s)
echo "cinfer: $model, $threads threads, levels: $levels" >&2
start c cinfer "$tmp/cinfer.log" "$here/bin/cinfer" serve -m "$model" --threads "$threads" --port
files="$tmp/cinfer.jsonl"
[ -z "$llama" ] || files="$files $tmp/llama.jsonl"
if [ "$rounds" -gt 1 ]; then
    echo "interleaved: $rounds rounds per level" >&2
    for c in $levels; do
        start_llama "$c"
        k=1
        while [ "$k" -le "$rounds" ]; do
            if [ $((k % 2)) -eq 1 ]; then
                load c cinfer "$c" "$tmp/cinfer.jsonl" "$k"
                load l llama.cpp "$c" "$tmp/llama.jsonl" "$k"
            else
                load l llama.cpp "$c" "$tmp/llama.jsonl" "$k"
                load c cinfer "$c" "$tmp/cinfer.jsonl" "$k"
            fi
            k=$((k + 1))
        done
        stop l
    done
    stop c
    echo "both: $(($(date +%s) - t0)) s" >&2
else
    load c cinfer "$levels" "$tmp/cinfer.jsonl"
    stop c
    t1=$(date +%s)
    echo "cinfer: $((t1 - t0)) s" >&2
    if [ -n "$llama" ]; then
        for c in $levels; do
            start_llama "$c"
            load l llama.cpp "$c" "$tmp/llama.jsonl"
            stop l
        done
        echo "llama.cpp: $(($(date +%s) - t1)) s" >&2
    fi
fi

echo "## Serving benchmark: $(basename "$model"), $threads threads, ~$input prompt tokens, $output output tokens${llama:+, $rounds round(s)}"
# shellcheck disable=SC2086
python3 "$gen" report $files ${json:+--json "$json"}

#!/bin/sh
# tests/smoke.sh - runs the README's curl examples against a real server.
#
# Starts `$CINFER_BIN serve` (default bin/cinfer) with $CINFER_MODEL on a free
# loopback port, waits for GET /health == 200, then runs every ```sh block
# that lies between the README lines <!-- curl-examples:begin --> and
# <!-- curl-examples:end -->, with localhost:8080 replaced by the real
# address.  Each block must exit 0 and print something without "error"; JSON
# output must parse (and have "choices" when the block calls a completions
# endpoint); SSE output must end with `data: [DONE]`.  Fails when no block is
# found.  With SMOKE_PORT set, the examples go to a server already listening
# on 127.0.0.1:SMOKE_PORT (a container: make deploy-test) and none is started.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

CINFER_BIN=${CINFER_BIN:-bin/cinfer}
CINFER_MODEL=${CINFER_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
README=${README:-README.md}

fail() {
    echo "smoke: $*" >&2
    exit 1
}

if [ -z "${SMOKE_PORT:-}" ]; then
    [ -x "$CINFER_BIN" ] || fail "no executable server at $CINFER_BIN (run make first)"
    [ -f "$CINFER_MODEL" ] || fail "no model at $CINFER_MODEL (run make model first)"
fi
command -v curl >/dev/null 2>&1 || fail "curl is needed"

TMP=$(mktemp -d)
PID=""
cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# the examples, one file per block
awk -v dir="$TMP" '
    /^<!-- curl-examples:begin -->[[:space:]]*$/ { inside = 1; next }
    /^<!-- curl-examples:end -->[[:space:]]*$/   { inside = 0; next }
    inside && !inblock && /^```sh[[:space:]]*$/ { inblock = 1; n++; file = dir "/block." n ".sh"; printf "" > file; next }
    inblock && /^```[[:space:]]*$/ { inblock = 0; close(file); next }
    inblock { print > file }
' "$README"
COUNT=$(find "$TMP" -name 'block.*.sh' | wc -l)
[ "$COUNT" -gt 0 ] || fail "no \`\`\`sh block between <!-- curl-examples:begin --> and <!-- curl-examples:end --> in $README"

if [ -n "${SMOKE_PORT:-}" ]; then
    PORT=$SMOKE_PORT
    echo "(the server on 127.0.0.1:$PORT was started elsewhere)" >"$TMP/server.log"
else
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    "$CINFER_BIN" serve -m "$CINFER_MODEL" --port "$PORT" >"$TMP/server.log" 2>&1 &
    PID=$!
fi

i=0
until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health" 2>/dev/null)" = 200 ]; do
    if [ -z "$PID" ]; then
        i=$((i + 1))
        [ "$i" -le 600 ] || fail "no 200 from 127.0.0.1:$PORT/health within 60 s"
        sleep 0.1
        continue
    fi
    if ! kill -0 "$PID" 2>/dev/null; then
        cat "$TMP/server.log" >&2
        PID=""
        fail "the server exited before /health answered 200"
    fi
    i=$((i + 1))
    if [ "$i" -gt 600 ]; then
        cat "$TMP/server.log" >&2
        fail "no 200 from /health within 60 s"
    fi
    sleep 0.1
done

n=1
while [ "$n" -le "$COUNT" ]; do
    block="$TMP/block.$n.sh"
    run="$TMP/run.$n.sh"
    out="$TMP/out.$n"
    sed "s/localhost:8080/127.0.0.1:$PORT/g" "$block" >"$run"
    first=$(sed -n '/[^[:space:]]/{p;q;}' "$block")
    why=""
    if ! timeout 120 sh -e "$run" >"$out" 2>"$TMP/err.$n"; then
        why="exited non-zero (or ran over 120 s)"
    elif [ ! -s "$out" ]; then
        why="printed nothing"
    elif grep -q '"error"' "$out"; then
        why="printed an error"
    elif [ "$(sed -n '/[^[:space:]]/{s/^[[:space:]]*//;p;q;}' "$out" | cut -c1)" = "{" ]; then
        need=""
        if grep -q '/completions' "$block"; then
            need=choices
        fi
        if ! python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert isinstance(d, dict), "not a JSON object"
assert not sys.argv[2] or sys.argv[2] in d, "no %s in the JSON" % sys.argv[2]
' "$out" "$need" 2>"$TMP/json.$n"; then
            why="bad JSON: $(tail -n 1 "$TMP/json.$n")"
        fi
    fi
    if [ -z "$why" ] && grep -q 'data: ' "$out"; then
        last=$(grep -v '^[[:space:]]*$' "$out" | tail -n 1 | tr -d '\r')
        [ "$last" = "data: [DONE]" ] || why="SSE output does not end with data: [DONE] (last line: $last)"
    fi
    if [ -n "$why" ]; then
        echo "FAIL: $first: $why" >&2
        echo "--- block ---" >&2
        cat "$run" >&2
        echo "--- stdout ---" >&2
        head -c 2000 "$out" >&2
        echo >&2
        echo "--- stderr ---" >&2
        head -c 2000 "$TMP/err.$n" >&2
        echo >&2
        echo "--- server log (tail) ---" >&2
        tail -n 30 "$TMP/server.log" >&2
        exit 1
    fi
    echo "ok: $first"
    n=$((n + 1))
done
echo "smoke: $COUNT README examples passed"

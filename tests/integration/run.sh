#!/bin/sh
# tests/integration/run.sh - the integration tests of `cinfer serve`: a real
# server (bin/cinfer, or $CINFER_BIN) driven by the official openai package
# and by raw HTTP.  Run from anywhere; paths are taken from the repo root.
#
#   tests/integration/run.sh [pytest args...]
#
# Environment:
#   CINFER_BIN    server binary   (default bin/cinfer, relative to the repo root)
#   CINFER_MODEL  GGUF model      (default models/SmolLM2-135M-Instruct.Q4_1.gguf)
#
# The Python packages (tests/integration/requirements.txt, exact pins) go to
# a virtualenv in build/venv; pip runs only when the pins change.
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

: "${CINFER_BIN:=bin/cinfer}"
: "${CINFER_MODEL:=models/SmolLM2-135M-Instruct.Q4_1.gguf}"
export CINFER_BIN CINFER_MODEL

if [ ! -x "$CINFER_BIN" ]; then
    echo "run.sh: no executable server at $CINFER_BIN (run make first, or set CINFER_BIN)" >&2
    exit 1
fi
if [ ! -f "$CINFER_MODEL" ]; then
    echo "run.sh: no model at $CINFER_MODEL (run make model first, or set CINFER_MODEL)" >&2
    exit 1
fi

VENV=build/venv
REQ=tests/integration/requirements.txt
STAMP=$VENV/.cinfer-integration-requirements

if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p build
    if ! python3 -m venv "$VENV"; then
        echo "run.sh: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
        rm -rf "$VENV"
        exit 1
    fi
fi
if [ ! -f "$STAMP" ] || ! cmp -s "$REQ" "$STAMP"; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
    cp "$REQ" "$STAMP"
fi

exec "$VENV/bin/python" -m pytest -q tests/integration "$@"

#!/bin/sh
# tests/ppu_host.sh BIN - the PPU flavour's host-side checks (make ppu-check).
#
# Where no device is present (the build machines): --device ppu is refused
# with exit 2 and one line saying no device was found, for serve, run and
# bench; --device auto runs on the CPU and says why in one log line;
# /version lists the ppu backend as built in.  Where a device is present
# these become: --device ppu starts.  The kernels themselves are checked on
# a GPU by device/ppu/check.sh; here they are skipped, loudly.
set -eu
bin=$1
model=${CINFER_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "ppu_host: FAIL: $*" >&2; exit 1; }

gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu=1; fi

if [ $gpu = 0 ]; then
    for cmd in "serve -m $model --port 0" "run -m $model -p hi -n 2" "bench -m $model -p 8 -n 0 -r 1"; do
        rc=0
        # shellcheck disable=SC2086 # the words of cmd are the arguments
        "$bin" $cmd --device ppu >"$tmp/out" 2>"$tmp/err" || rc=$?
        [ $rc = 2 ] || fail "$cmd --device ppu: exit $rc, not 2: $(cat "$tmp/err")"
        [ "$(wc -l <"$tmp/err")" = 1 ] || fail "$cmd --device ppu: not one line: $(cat "$tmp/err")"
        grep -q "no .* device was found" "$tmp/err" || fail "$cmd --device ppu: $(cat "$tmp/err")"
    done
    echo "ppu_host: --device ppu without a device: exit 2, '$(cat "$tmp/err")'"
    rc=0
    "$bin" run -m "$model" -p "The capital of France is" -n 4 --temp 0 --device auto \
        >"$tmp/out" 2>"$tmp/err" || rc=$?
    [ $rc = 0 ] || fail "run --device auto: exit $rc: $(cat "$tmp/err")"
    grep -q "running on the CPU" "$tmp/err" || fail "run --device auto did not say why: $(cat "$tmp/err")"
    [ -s "$tmp/out" ] || fail "run --device auto generated nothing"
    echo "ppu_host: --device auto without a device: ran on the CPU ('$(head -1 "$tmp/err")')"
    for dev in ppu auto; do
        rc=0
        CINFER_PPU_GRAPHS=yes "$bin" run -m "$model" -p hi -n 2 --device $dev >"$tmp/out" 2>"$tmp/err" || rc=$?
        [ $rc = 2 ] || fail "CINFER_PPU_GRAPHS=yes, --device $dev: exit $rc, not 2: $(cat "$tmp/err")"
        [ "$(wc -l <"$tmp/err")" = 1 ] && grep -q "CINFER_PPU_GRAPHS is 'yes'; it must be 0 or 1" "$tmp/err" ||
            fail "CINFER_PPU_GRAPHS=yes, --device $dev: $(cat "$tmp/err")"
    done
    echo "ppu_host: a bad CINFER_PPU_GRAPHS: exit 2, '$(cat "$tmp/err")'"
    echo "ppu_host: SKIP: no GPU here: the PPU kernels are checked by device/ppu/check.sh on one"
else
    rc=0
    "$bin" run -m "$model" -p "The capital of France is" -n 4 --temp 0 --device ppu \
        >"$tmp/out" 2>"$tmp/err" || rc=$?
    [ $rc = 0 ] || fail "run --device ppu on a GPU: exit $rc: $(cat "$tmp/err")"
    grep -q "ppu backend" "$tmp/err" || fail "run --device ppu did not run on the ppu: $(cat "$tmp/err")"
    echo "ppu_host: --device ppu on a GPU: $(tail -1 "$tmp/err")"
fi
echo "ppu_host: passed"

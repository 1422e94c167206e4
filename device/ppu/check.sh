#!/bin/sh
# device/ppu/check.sh OUT_DIR [MODEL.gguf] - the PPU checks on a GPU machine, from the bundle
# `make ppu-bundle` makes (build/ppu/bundle: this script, check_ops, cinfer and the shared
# libraries cinfer needs that such a machine lacks).  Writes OUT_DIR/check_ops.txt and, with
# a MODEL, OUT_DIR/bench.txt (cinfer bench --device ppu); exit 0 when every check passed.
# Still to come (issue 15): random-weight GGUFs of the real shapes made on the spot, the
# whole-model comparison with the CPU, batch invariance over 1..64 sequences, serving.
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: check.sh OUT_DIR [MODEL.gguf]}
model=${2:-}
mkdir -p "$out"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
status=0
{ nvidia-smi -L 2>&1 || true; } >"$out/device.txt"
timeout 300 "$here/check_ops" >"$out/check_ops.txt" 2>&1 || status=$?
cat "$out/check_ops.txt"
if [ -n "$model" ]; then
    timeout 240 "$here/cinfer" bench -m "$model" --device ppu -p 512 -n 128 -r 3 \
        >"$out/bench.txt" 2>&1 || status=$?
    timeout 120 "$here/cinfer" bench -m "$model" --device ppu -p 0 -n 128 -r 3 --batch 16 \
        >>"$out/bench.txt" 2>&1 || status=$?
    cat "$out/bench.txt"
fi
echo "check.sh: exit $status"
exit $status

#!/bin/sh
# device/ppu/check.sh OUT_DIR [MODEL.gguf] - the PPU checks on a GPU machine, from the bundle
# `make ppu-bundle` makes (build/ppu/bundle: this script, check_ops, make_gguf, cinfer and the
# shared libraries cinfer needs that such a machine lacks).  Writes OUT_DIR/check_ops.txt and
# OUT_DIR/bench.txt: cinfer bench --device ppu on MODEL, or without one on random-weight
# GGUFs of four real shapes made on the spot (make_gguf).  Exit 0 when every check passed.
# OUT_DIR/check_model.txt: the whole model against the CPU on each shape up to 1B (logits
# NMSE, top-1 agreement, batch invariance, recompute).  Still to come (issue 15): batches
# of 1..64 sequences with prefill mixed in, serving under load.
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
models=$model
if [ -z "$models" ]; then
    tmp=${TMPDIR:-/tmp}/cinfer-check.$$
    mkdir -p "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    for shape in smollm2-135m qwen2.5-0.5b llama-3.2-1b llama-3.1-8b; do
        if timeout 120 "$here/make_gguf" "$shape" "$tmp/$shape.gguf" >>"$out/bench.txt" 2>&1; then
            models="$models $tmp/$shape.gguf"
        else
            status=1
        fi
    done
fi
# the whole model against the CPU (the CPU side is slow: not on the 8B shape)
for m in $models; do
    case $m in *8b*) continue ;; esac
    timeout 150 "$here/check_model" "$m" ppu >>"$out/check_model.txt" 2>&1 || status=1
done
[ -f "$out/check_model.txt" ] && cat "$out/check_model.txt"
for m in $models; do
    echo "== $(basename "$m")" >>"$out/bench.txt"
    timeout 120 "$here/cinfer" bench -m "$m" --device ppu -p 512 -n 128 -r 2 \
        >>"$out/bench.txt" 2>&1 || status=$?
    for b in 16 64; do
        timeout 90 "$here/cinfer" bench -m "$m" --device ppu -p 0 -n 128 -r 2 --batch $b \
            >>"$out/bench.txt" 2>&1 || status=$?
    done
done
cat "$out/bench.txt"
echo "check.sh: exit $status"
exit $status

#!/bin/sh
# device/ppu/check.sh OUT_DIR [MODEL.gguf] - the PPU checks on a GPU machine, from the bundle
# `make ppu-bundle` makes (build/ppu/bundle: this script, check_ops, check_model, make_gguf,
# membw, cinfer, bench/serve_load.py and the shared libraries cinfer needs that such a
# machine lacks).  Without MODEL, random-weight GGUFs of four real shapes are made on the
# spot (make_gguf, in parallel with the first checks).  Writes to OUT_DIR:
#   device.txt       nvidia-smi -L, membw (the device's measured copy bandwidth)
#   check_ops.txt    every op on the PPU against the CPU backend (NMSE per op, thresholds)
#   check_model.txt  the whole model against the CPU on each shape: logits NMSE, top-1
#                    agreement, batch invariance alone vs in the batch of 8 and in batches of
#                    2..64 with prefill chunks mixed in, preemption-recompute, graphs on/off
#   bench.txt        cinfer bench --device ppu: pp512, tg128 at batch 1, 16 and 64
#   serve.txt        cinfer serve --device ppu under serve_load.py at 1, 16 and 64 clients
#                    on the 1B shape, or MODEL (failed requests make the check fail)
#   nsys.txt         where the time of a decode goes (nsys, where it is installed)
#   summary.txt      one line per check, and batch-1 decode as a share of the bandwidth
# Exit 0 when every check passed.  Meant to finish in under 6 minutes on an H200.
# To rehearse the script where no GPU is: CHECK_DEVICE=cpu CHECK_SHAPES=smollm2-135m
# (the CPU against itself; membw and check_ops then fail, as they should there).
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: check.sh OUT_DIR [MODEL.gguf]}
model=${2:-}
mkdir -p "$out"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
status=0
sum="$out/summary.txt"
: >"$sum"
note() { echo "$*" | tee -a "$sum"; }
t0=$(date +%s)
el() { echo "$(($(date +%s) - t0)) s"; }

tmp=${TMPDIR:-/tmp}/cinfer-check.$$
mkdir -p "$tmp"
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT

# the shapes, made in the background while the device and the ops are checked
shapes=${CHECK_SHAPES:-smollm2-135m qwen2.5-0.5b llama-3.2-1b llama-3.1-8b}
dev=${CHECK_DEVICE:-ppu}
if [ -z "$model" ]; then
    for s in $shapes; do
        (timeout 200 "$here/make_gguf" "$s" "$tmp/$s.gguf" >"$tmp/$s.log" 2>&1 ||
            echo "make_gguf $s failed" >>"$tmp/$s.log") &
    done
fi

{ nvidia-smi -L 2>&1 || true; timeout 60 "$here/membw" 2>&1; } >"$out/device.txt"
cat "$out/device.txt"
gbs=$(awk '/^membw:/ {print $5}' "$out/device.txt")
[ -n "$gbs" ] || { note "membw: FAILED (no bandwidth measured)"; status=1; }

rc=0
timeout 120 "$here/check_ops" >"$out/check_ops.txt" 2>&1 || rc=$?
cat "$out/check_ops.txt"
[ $rc = 0 ] || status=1
note "check_ops: exit $rc ($(el))"

models=$model
if [ -z "$model" ]; then
    wait
    for s in $shapes; do
        cat "$tmp/$s.log" >>"$out/bench.txt"
        if [ -s "$tmp/$s.gguf" ] && ! grep -q failed "$tmp/$s.log"; then
            models="$models $tmp/$s.gguf"
        else
            note "make_gguf $s: FAILED"
            status=1
        fi
    done
fi

# the whole model against the CPU; the 8B shape's CPU side is slow: 8 steps, not 64
for m in $models; do
    steps=64
    case $m in *8b*) steps=8 ;; esac
    rc=0
    timeout 200 "$here/check_model" "$m" "$dev" $steps >>"$out/check_model.txt" 2>&1 || rc=$?
    [ $rc = 0 ] || status=1
    note "check_model $(basename "$m") ($steps steps): exit $rc ($(el))"
done
[ -f "$out/check_model.txt" ] && cat "$out/check_model.txt"

for m in $models; do
    echo "== $(basename "$m")" >>"$out/bench.txt"
    for b in 1 16 64; do
        p=0
        [ $b = 1 ] && p=512
        rc=0
        timeout 150 "$here/cinfer" bench -m "$m" --device "$dev" -p $p -n 128 -r 2 --batch $b \
            >"$tmp/bench" 2>&1 || rc=$?
        cat "$tmp/bench" >>"$out/bench.txt"
        [ $rc = 0 ] || { status=1; note "bench $(basename "$m") batch $b: exit $rc"; }
        if [ $b = 1 ] && [ -n "$gbs" ]; then
            awk -v gbs="$gbs" -v m="$(basename "$m")" '
                /^\| tg128 / {tps = $4} /weights read per token/ {mb = $(NF-1)}
                END { if (tps && mb) printf "decode b1 %s: %.1f tok/s x %.1f MB = %.1f GB/s = %.1f%% of the measured %.1f GB/s\n", m, tps, mb, tps*mb/1e3, 100*tps*mb/1e3/gbs, gbs }' \
                "$tmp/bench" | tee -a "$sum"
        fi
    done
done
cat "$out/bench.txt"
note "bench: done ($(el))"

# serving under load on the 1B shape
serve_model=""
for m in $models; do serve_model=$m; done
for m in $models; do case $m in *1b*) serve_model=$m ;; esac; done
[ -n "$model" ] && serve_model=$model
if [ -n "$serve_model" ] && command -v python3 >/dev/null 2>&1; then
    port=$(python3 "$here/serve_load.py" port)
    "$here/cinfer" serve -m "$serve_model" --device "$dev" --port "$port" --max-seqs 64 \
        >"$out/serve_log.txt" 2>&1 &
    spid=$!
    if python3 "$here/serve_load.py" wait "http://127.0.0.1:$port" --timeout 90 --pid $spid; then
        for c in 1 16 64; do
            rc=0
            timeout 90 python3 "$here/serve_load.py" run "http://127.0.0.1:$port" --label ppu \
                -c "$c" -r $((c * 2 < 8 ? 8 : c * 2)) -i 128 -o 64 --out "$tmp/serve.jsonl" \
                >>"$out/serve.txt" 2>&1 || rc=$?
            [ $rc = 0 ] || status=1
            note "serve_load $c clients: exit $rc ($(el))"
        done
        python3 "$here/serve_load.py" report "$tmp/serve.jsonl" >>"$out/serve.txt" 2>&1
    else
        note "serve: FAILED to start: $(tail -3 "$out/serve_log.txt")"
        status=1
    fi
    kill $spid 2>/dev/null
    wait $spid 2>/dev/null
    cat "$out/serve.txt" 2>/dev/null
else
    note "serve: SKIP (no model or no python3 here)"
fi

# where a decode step's time goes
if command -v nsys >/dev/null 2>&1 && [ -n "$serve_model" ]; then
    timeout 120 nsys profile -o "$tmp/prof" --stats=true --force-overwrite true \
        "$here/cinfer" bench -m "$serve_model" --device "$dev" -p 0 -n 32 -r 1 >"$out/nsys.txt" 2>&1 ||
        note "nsys: exit $? (see nsys.txt)"
    grep -A25 'cuda_gpu_kern_sum' "$out/nsys.txt" | head -30
else
    note "nsys: SKIP (not installed here)"
fi

note "check.sh: exit $status ($(el))"
cat "$sum"
exit $status

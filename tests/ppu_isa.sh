#!/bin/sh
# tests/ppu_isa.sh NVCC ARCH... - the PPU kernels use nothing past sm_80: for each target
# architecture, each device/ppu/*.cu is compiled to PTX and searched for the instructions
# T-Head's sm_80-level toolchain lacks (wgmma, TMA bulk copies and tensor maps, mbarrier
# transactions, thread-block clusters, setmaxnreg).  PTX, because this toolkit ships no
# cuobjdump to read the SASS with.
set -eu
nvcc=$1
shift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bad='wgmma|cp\.async\.bulk|cp\.reduce\.async\.bulk|tensormap|mbarrier\.expect_tx|%cluster|barrier\.cluster|setmaxnreg|elect\.sync'
for a in "$@"; do
    for f in device/ppu/*.cu; do
        out=$tmp/$(basename "$f" .cu)_$a.ptx
        "$nvcc" -std=c++17 -O2 -I. -DCINFER_HAVE_PPU -arch=compute_"$a" -ptx "$f" -o "$out"
        if grep -En "$bad" "$out" >"$tmp/hits"; then
            echo "ppu_isa: FAIL: $f for compute_$a uses instructions past sm_80:" >&2
            head -5 "$tmp/hits" >&2
            exit 1
        fi
    done
done
echo "ppu_isa: device/ppu/*.cu for compute_$(echo "$@" | tr ' ' '/'): no sm_90-only instruction in the PTX"

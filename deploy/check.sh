#!/bin/sh
# deploy/check.sh - the light deployment checks, part of make test:
#   - haproxy -c of deploy/haproxy.cfg; nginx -t of deploy/nginx.conf (its
#     upstream names, which nginx resolves at load, set to loopback);
#   - the Kubernetes manifests - base, and the cpu and ppu overlays rendered
#     (deploy/render.py) - and the example validated against the schemas of
#     Kubernetes $K8S_VERSION (kubernetes-validate --strict; the CRD kinds,
#     ServiceMonitor and InferencePool, have no schema there and are only
#     parsed);
#   - checkov over the Dockerfiles and those manifests: every finding fixed,
#     or skipped in the file with the reason beside it.
# The Python tools (deploy/requirements.txt, exact pins) go to build/deploy-venv.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
K8S_VERSION=${K8S_VERSION:-1.30.0}
OUT=build/deploy-check
VENV=build/deploy-venv
REQ=deploy/requirements.txt
rm -rf "$OUT"
mkdir -p "$OUT"

haproxy -c -q -f deploy/haproxy.cfg
echo "deploy-check: haproxy -c: deploy/haproxy.cfg is valid"
sed 's/cinfer[12]:8080/127.0.0.1:8080/' deploy/nginx.conf >"$OUT/nginx.conf"
nginx -q -t -c "$ROOT/$OUT/nginx.conf" -p "$ROOT/$OUT"
echo "deploy-check: nginx -t: deploy/nginx.conf is valid"

if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQ" "$VENV/.requirements"; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
    cp "$REQ" "$VENV/.requirements"
fi

"$VENV/bin/python" deploy/render.py "$OUT/k8s"
cp deploy/k8s/examples/*.yaml "$OUT/k8s/"
"$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$OUT"/k8s/*.yaml
echo "deploy-check: manifests valid against Kubernetes $K8S_VERSION"

mkdir -p "$OUT/docker"
cp deploy/Dockerfile deploy/Dockerfile.ppu "$OUT/docker/"
"$VENV/bin/checkov" --quiet --compact --skip-download --framework dockerfile kubernetes \
    -d "$OUT/docker" -d "$OUT/k8s" >"$OUT/checkov.txt" 2>&1 || {
    cat "$OUT/checkov.txt" >&2
    echo "deploy-check: checkov found the above" >&2
    exit 1
}
echo "deploy-check: checkov: no failed check ($(grep -h 'Passed checks' "$OUT/checkov.txt" | tr '\n' ';'))"

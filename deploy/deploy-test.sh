#!/bin/sh
# deploy/deploy-test.sh - make deploy-test: the deployment, tested on this
# machine with podman (no Docker engine needed) and loopback traffic only.
#   1. podman, runc, debootstrap, HAProxy and nginx from Debian's packages;
#      podman set to runc and no default ulimits when it has no config yet;
#   2. the debian:12 and debian:12-slim base images made from Debian's archive
#      (deploy/make-base-images.sh: no registry is needed);
#   3. the image built twice (deploy/Dockerfile, with and without the
#      model) and their sizes (podman image inspect);
#   4. the README's curl examples against a container of it;
#   5. deploy/deploy_test.py: two replicas behind HAProxy, then nginx, under
#      a streaming load: kill -9, SIGTERM, rolling restart, a 1-CPU replica.
# Needs root.  DEPLOY_TEST_ARGS go to deploy_test.py (--seconds 20, say).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
IMAGE=localhost/cinfer:deploy-test

if [ "$(id -u)" -ne 0 ]; then
    echo "deploy-test: needs root (podman, debootstrap)" >&2
    exit 1
fi
missing=""
for p in podman runc debootstrap haproxy nginx-light uidmap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "deploy-test: installing$missing"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi
# the build machines' cgroups: crun cannot set rlimits there, runc can
if [ ! -f /etc/containers/containers.conf ]; then
    mkdir -p /etc/containers
    printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' \
        >/etc/containers/containers.conf
fi
export PODMAN="podman --runtime runc"

sh deploy/make-base-images.sh

t0=$(date +%s)
$PODMAN build -q --format docker --network host --pull=never -f deploy/Dockerfile -t "$IMAGE" . >/dev/null
$PODMAN build -q --format docker --network host --pull=never -f deploy/Dockerfile \
    --build-arg WITH_MODEL=0 -t "$IMAGE-nomodel" . >/dev/null
echo "deploy-test: images built in $(($(date +%s) - t0)) s"
with=$($PODMAN image inspect --format '{{.Size}}' "$IMAGE")
without=$($PODMAN image inspect --format '{{.Size}}' "$IMAGE-nomodel")
echo "deploy-test: image size with the model $with bytes, without $without bytes"
if [ "$without" -gt 100000000 ]; then
    echo "deploy-test: FAIL: the image without the model is over 100 MB" >&2
    exit 1
fi

# the README's curl examples against a container (its own port, loopback)
name=cinfer-dt-smoke
$PODMAN rm -f -t 0 "$name" >/dev/null 2>&1 || true
$PODMAN run -d --name "$name" --network host -e CINFER_PORT=18099 -e CINFER_HOST=127.0.0.1 \
    "$IMAGE" >/dev/null
rc=0
SMOKE_PORT=18099 sh tests/smoke.sh || rc=$?
$PODMAN rm -f -t 0 "$name" >/dev/null 2>&1 || true
[ "$rc" = 0 ] || exit "$rc"

# shellcheck disable=SC2086
python3 deploy/deploy_test.py --image "$IMAGE" ${DEPLOY_TEST_ARGS:-}

#!/bin/sh
# scripts/deps.sh - installs the Debian packages cinfer needs (make deps).
# As root: apt-get installs whatever is missing.  Otherwise: prints the exact
# command to run and fails.  Does nothing when everything is there.
#   scripts/deps.sh        what make run needs
#   scripts/deps.sh test   and what make test adds (the headless browser)
set -eu

PKGS="build-essential pkg-config libpcre2-dev check libsubunit-dev libsentencepiece-dev
      sentencepiece libcjson-dev libmicrohttpd-dev libuv1-dev clang libclang-rt-14-dev
      curl python3-venv libsimde-dev haproxy nginx-light"
# chromium is the headless browser of the CORS test (tests/integration/test_cors.py)
if [ "${1:-}" = test ]; then
    PKGS="$PKGS chromium"
fi

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
# make model needs Python's pip; a python3 from elsewhere (pyenv, venv) is fine
if ! python3 -m pip --version >/dev/null 2>&1; then
    missing="$missing python3 python3-pip"
fi

if [ -z "$missing" ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "cinfer needs these Debian packages:$missing" >&2
    echo "install them with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y$missing" >&2
    exit 1
fi
echo "make deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# haproxy and nginx are here for their config checks (make test): their
# packages must not start the services, so policy-rc.d says no while they install
prc=/usr/sbin/policy-rc.d
own_prc=""
if [ ! -e "$prc" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$prc" && chmod +x "$prc" && own_prc=1
fi
rc=0
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing || rc=$?
[ -z "$own_prc" ] || rm -f "$prc"
exit "$rc"

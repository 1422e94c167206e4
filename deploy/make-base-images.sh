#!/bin/sh
# deploy/make-base-images.sh - makes the debian:12 and debian:12-slim base
# images in podman's local storage, for machines that reach Debian's archive
# but no container registry (make deploy-test).  debian:12 is
# `debootstrap --variant=minbase bookworm`; debian:12-slim the same without
# documentation, manual pages and locales, and with dpkg told to leave them
# out later, as the official slim images are.  Does nothing for an image
# that is already there.  Needs root (debootstrap).
set -eu

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PODMAN=${PODMAN:-podman}

have() { $PODMAN image exists "$1"; }

if have docker.io/library/debian:12 && have docker.io/library/debian:12-slim; then
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/rootfs
echo "make-base-images: debootstrap --variant=minbase bookworm from $MIRROR"
debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$tmp/debootstrap.log" 2>&1 || {
    tail -20 "$tmp/debootstrap.log" >&2
    exit 1
}
# the same archive the host uses (updates and security too, where it has them)
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    rm -f "$root/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
fi
# the host's own CA certificates (a proxy that re-signs TLS, say): apt and pip in
# the build then trust what the host trusts (update-ca-certificates adds them
# when ca-certificates is installed)
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/log/*.log
tar -C "$root" -c . | $PODMAN import --change 'CMD ["bash"]' - docker.io/library/debian:12
# slim: what the official images leave out
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/usr/share/lintian "$root"/var/cache/debconf/*-old
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CFG
tar -C "$root" -c . | $PODMAN import --change 'CMD ["bash"]' - docker.io/library/debian:12-slim
$PODMAN image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep debian

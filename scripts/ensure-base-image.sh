#!/usr/bin/env bash
# Makes the local base image the images are built on where no registry is
# reachable: Debian 12 minbase from the machine's own Debian mirror
# (debootstrap), imported into podman as localhost/reco-base:bookworm.
#
#     scripts/ensure-base-image.sh        prints the image name
#
# The published images keep their distroless base; this one stands in for it
# here (same glibc 2.36 and libstdc++, plus ca-certificates for https object
# storage). Idempotent: the root filesystem tarball is cached under
# ${RECO_CACHE:-~/.cache/reco}/images (about 2 minutes to make the first
# time), and the import is skipped while the image exists.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${RECO_CACHE:-$HOME/.cache/reco}/images"
image="localhost/reco-base:bookworm"
tarball="$cache/bookworm-minbase.tar"

log() { printf '[ensure-base-image] %s\n' "$*" >&2; }
eval "$("$here/ensure-podman.sh")"

if podman image exists "$image"; then echo "$image"; exit 0; fi

if [[ ! -s "$tarball" ]]; then
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
    fi
    # The mirror the machine's apt already uses (no other network here).
    mirror="$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    rootfs="$(mktemp -d)"
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap --variant=minbase bookworm from $mirror (about 2 minutes)"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" \
        | while read -r line; do case "$line" in I:\ Retrieving*|I:\ Validating*|I:\ Unpacking*|I:\ Configuring*) ;; *) log "$line" ;; esac; done
    # Nothing of apt's caches or logs in the image.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*
    mkdir -p "$cache"
    tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
fi
log "importing $tarball as $image"
podman import "$tarball" "$image" >/dev/null
echo "$image"

#!/usr/bin/env bash
# Installs Debian's podman (with runc and catatonit) and writes the
# containers.conf these machines need, then prints the `export` line that
# points podman at it:
#
#     eval "$(scripts/ensure-podman.sh)"
#
# Why a containers.conf: as root with no systemd and hybrid cgroups, podman
# 4.3 needs runc (crun 1.8 refuses the hybrid cgroups), the cgroupfs cgroup
# manager, a file events logger, and ulimits inside the machine's hard limits
# (podman's defaults exceed them and the runtime lacks CAP_SYS_RESOURCE).
# Where a working podman is already configured (CONTAINERS_CONF set, or
# `podman info` answers without it), the file is still written but harmless.
#
# Idempotent; the configuration lives under ${RECO_CACHE:-~/.cache/reco}/podman.
# Exits 1 with a reason on stderr when podman cannot be installed (no root,
# not Debian): callers that only test with containers skip then.
set -euo pipefail
cache="${RECO_CACHE:-$HOME/.cache/reco}/podman"
conf="$cache/containers.conf"

log() { printf '[ensure-podman] %s\n' "$*" >&2; }

if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "podman is missing and this is not a Debian-like system: install podman and runc"
        exit 1
    fi
    if [[ "$(id -u)" -eq 0 ]]; then sudo=(); else sudo=(sudo -n); fi
    log "installing podman, runc, catatonit (Debian packages, about 1 minute)"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq >&2
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        podman runc catatonit netavark aardvark-dns iptables uidmap >&2
fi

mkdir -p "$cache"
cat > "$conf.tmp" <<'CONF'
# Written by scripts/ensure-podman.sh (reco): podman 4.3 as root on a machine
# without systemd, with hybrid cgroups and low hard ulimits.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
mv "$conf.tmp" "$conf"
echo "export CONTAINERS_CONF='$conf'"

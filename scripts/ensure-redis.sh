#!/usr/bin/env bash
# Ensures a `redis-server` binary is installed, for the integration tests of
# reco-features that run the Redis feature-store backend against a real server.
#
# Idempotent: does nothing when REDIS_SERVER_BIN names an executable or
# /usr/bin/redis-server exists. Otherwise installs Debian's `redis-server`
# package without recommends. The package's system service is NOT started (the
# tests start their own process on a free loopback port). Prints the path.
set -euo pipefail

if [[ -n "${REDIS_SERVER_BIN:-}" && -x "${REDIS_SERVER_BIN}" ]]; then
    echo "${REDIS_SERVER_BIN}"
    exit 0
fi
if [[ -x /usr/bin/redis-server ]]; then
    echo /usr/bin/redis-server
    exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
else
    SUDO=(sudo)
fi

# Keep the package's maintainer scripts from starting the service.
export DEBIAN_FRONTEND=noninteractive
policy_rc_d=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e "${policy_rc_d}" ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "${policy_rc_d}" >/dev/null
    "${SUDO[@]}" chmod +x "${policy_rc_d}"
    created_policy=1
fi
cleanup() {
    if [[ "${created_policy}" -eq 1 ]]; then
        "${SUDO[@]}" rm -f "${policy_rc_d}"
    fi
}
trap cleanup EXIT

"${SUDO[@]}" apt-get update -qq >&2
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends redis-server >&2

# If an init system started it anyway, stop it: the tests own their process.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
    "${SUDO[@]}" systemctl stop redis-server >&2 || true
fi

if [[ ! -x /usr/bin/redis-server ]]; then
    echo "ensure-redis: redis-server was installed but /usr/bin/redis-server is missing" >&2
    exit 1
fi
echo /usr/bin/redis-server

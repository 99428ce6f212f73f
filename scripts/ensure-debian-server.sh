#!/usr/bin/env bash
# Ensures the server binary of a Debian package is installed, for the tests
# that run the real server (Prometheus for reco-metric-source and the demo,
# Redis for reco-features' Redis backend):
#
#     scripts/ensure-debian-server.sh PACKAGE BINARY [ENV_VAR]
#
# Idempotent: does nothing when ENV_VAR names an executable or BINARY is on
# PATH. Otherwise installs PACKAGE without recommends. The package's system
# service is NOT started (the tests start their own process on a free
# loopback port). Prints the binary's path.
set -euo pipefail
package="$1" binary="$2" env_var="${3:-}"

if [[ -n "${env_var}" && -n "${!env_var:-}" && -x "${!env_var}" ]]; then
    echo "${!env_var}"
    exit 0
fi
if path="$(PATH="${PATH}:/usr/sbin:/usr/bin" command -v "${binary}")"; then
    echo "${path}"
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
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${package}" >&2

# If an init system started it anyway, stop it: the tests own their process.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "${package}" 2>/dev/null; then
    "${SUDO[@]}" systemctl stop "${package}" >&2 || true
fi

if ! path="$(PATH="${PATH}:/usr/sbin:/usr/bin" command -v "${binary}")"; then
    echo "ensure-debian-server: ${package} was installed but ${binary} is not on PATH" >&2
    exit 1
fi
echo "${path}"

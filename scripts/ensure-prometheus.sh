#!/usr/bin/env bash
# Ensures a `prometheus` binary is installed, for the integration tests of
# reco-metric-source that run a real Prometheus against a fake gateway.
#
# Idempotent: does nothing when one is already on PATH (or PROMETHEUS_BIN
# names an executable). Otherwise installs Debian's `prometheus` package
# without recommends. The package's system service is NOT started (the
# tests start their own process on a free loopback port). Prints the path.
set -euo pipefail

if [[ -n "${PROMETHEUS_BIN:-}" && -x "${PROMETHEUS_BIN}" ]]; then
    echo "${PROMETHEUS_BIN}"
    exit 0
fi
if path="$(command -v prometheus)"; then
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
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends prometheus >&2

# If an init system started it anyway, stop it: the tests own their process.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    "${SUDO[@]}" systemctl stop prometheus >&2 || true
fi

command -v prometheus

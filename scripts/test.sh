#!/usr/bin/env bash
# `make test`: install the tools, then build and run every test of the
# workspace with cargo-nextest (cargo test where nextest is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/env.sh)"
# The container images the pod tests run (tests/node): built from the test
# profile's binaries on the local base image (about 2 minutes beyond the
# compile). Where podman cannot run here, those tests skip and say why.
if scripts/ensure-podman.sh >/dev/null; then
    scripts/build-images.sh --profile dev all
else
    echo "[test] podman cannot be installed here: the image and pod tests will skip" >&2
fi
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi

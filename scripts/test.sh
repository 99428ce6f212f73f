#!/usr/bin/env bash
# `make test`: install the tools, then build and run every test of the
# workspace with cargo-nextest (cargo test where nextest is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/env.sh)"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi

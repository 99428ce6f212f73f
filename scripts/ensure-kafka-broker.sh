#!/usr/bin/env bash
# Ensures a real Kafka-protocol broker for the Kafka tests: tansu (crates.io),
# built once with its SQLite storage (durable across broker restarts) and
# cached in ~/.cache/reco/tansu-VERSION. Cold, the build takes about 11
# minutes of 2 cores (15 measured while other builds shared them); cargo shows
# its progress. Prints the export line:
#
#     eval "$(scripts/ensure-kafka-broker.sh)"     # sets TANSU_BIN
set -euo pipefail
version=0.6.0
root="${RECO_CACHE:-$HOME/.cache/reco}/tansu-$version"
bin="$root/bin/tansu"
if [[ ! -x "$bin" ]]; then
    echo "[kafka] building the tansu $version broker (once; cached in $root)" >&2
    started=$SECONDS
    cargo install tansu --version "$version" --locked --no-default-features --features libsql \
        --root "$root" --target-dir "$root/build" >&2
    rm -rf "$root/build"
    echo "[kafka] tansu built in $((SECONDS - started)) s" >&2
fi
echo "export TANSU_BIN='$bin'"

#!/usr/bin/env bash
# `make test`: install the tools, then build and run every test of the
# workspace with cargo-nextest (cargo test where nextest is missing), then
# the operator's scenario suite against genuine Kubernetes API servers.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/env.sh)"

# Genuine API servers (kube-apiserver 1.20 and apiextensions-apiserver 1.36,
# from Debian sources): built once, cached in ~/.cache/reco/kube (about 20
# minutes cold), in the background at low priority while cargo compiles.
kube_log="$(mktemp -t reco-kube-build.XXXXXX)"
scripts/ensure-kube-apiserver.sh > "$kube_log.env" 2> "$kube_log" &
kube_build=$!
echo "[test] building the genuine API servers in the background (cached after the first run; progress in $kube_log)" >&2

# A real Kafka-protocol broker (tansu, crates.io) for the Kafka event-log
# tests: built once, cached in ~/.cache/reco (about 11 minutes cold), in the
# background while cargo compiles.
kafka_log="$(mktemp -t reco-kafka-build.XXXXXX)"
nice -n 10 scripts/ensure-kafka-broker.sh > "$kafka_log.env" 2> "$kafka_log" &
kafka_build=$!
echo "[test] building the Kafka broker in the background (cached after the first run; progress in $kafka_log)" >&2

# The container images the pod tests run (tests/node): built from the test
# profile's binaries on the local base image (about 2 minutes beyond the
# compile). Where podman cannot run here, those tests skip and say why.
if scripts/ensure-podman.sh >/dev/null; then
    scripts/build-images.sh --profile dev all
else
    echo "[test] podman cannot be installed here: the image and pod tests will skip" >&2
fi

status=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-run
else
    cargo test --workspace --no-run
fi
echo "[test] waiting for the Kafka broker build" >&2
if ! wait "$kafka_build"; then
    tail -40 "$kafka_log" >&2
    echo "[test] the Kafka broker did not build (log: $kafka_log)" >&2
    exit 1
fi
eval "$(cat "$kafka_log.env")"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast || status=$?
else
    cargo test --workspace --no-fail-fast || status=$?
fi

# On the genuine servers: the scenario suite's real-cluster twins, and the
# node agent running what the operator (its binary) renders.
echo "[test] waiting for the API server build" >&2
if ! wait "$kube_build"; then
    tail -40 "$kube_log" >&2
    echo "[test] the API servers did not build (log: $kube_log)" >&2
    exit 1
fi
eval "$(cat "$kube_log.env")"
state="$(mktemp -d -t reco-kube.XXXXXX)"
demo_state="$(mktemp -d -t reco-demo-cluster.XXXXXX)"
trap 'scripts/kube-down.sh --purge "$state" || true; RECO_DEMO_STATE="$demo_state" scripts/demo-cluster.sh --down || true' EXIT
kube_env="$(scripts/kube-up.sh "$state")"
eval "$kube_env"
# nextest with --workspace and a filter: the same feature set as the build above, so nothing recompiles.
ignored_tests() { # FILTER
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --workspace -E "$1" --run-ignored only --test-threads=1 --no-fail-fast
    else
        local names
        names="$(sed -E 's/binary\(([a-z_]+)\)/--test \1/g; s/ \| / /g' <<<"$1")"
        # shellcheck disable=SC2086 # the --test flags split on spaces
        cargo test --workspace $names -- --ignored --test-threads=1
    fi
}
RECO_REAL_CLUSTER=1 ignored_tests 'binary(real_cluster) | binary(agent)' || status=$?
scripts/kube-down.sh --purge "$state" >&2

# The demo through the operator, with faults (tests/node/tests/demo_cluster.rs),
# on the stack of `make demo-cluster` built from the test profile's binaries
# and images (about 5 minutes).
if command -v podman >/dev/null; then
    demo_env="$(RECO_DEMO_PROFILE=dev RECO_DEMO_PREBUILT=1 RECO_DEMO_STATE="$demo_state" \
        RECO_DEMO_OUT="$demo_state/out" scripts/demo-cluster.sh --up)"
    eval "$demo_env"
    ignored_tests 'binary(demo_cluster)' || status=$?
fi
exit "$status"

#!/usr/bin/env bash
# Installs (once, cached outside the checkout) every tool the build and the
# tests need, and prints the `export` lines that put them in reach:
#
#     eval "$(scripts/env.sh)"
#
# libtorch for the tch crates, helm and kubectl for the packaging tests,
# Prometheus for the metric-source tests, redis-server for the feature-store
# tests, moto (an S3-protocol server) for the artifact tests, podman for the
# image and pod tests. Progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

"$here/ensure-libtorch.sh"
"$here/ensure-k8s-tools.sh"
"$here/ensure-s3-server.sh"
prometheus="$("$here/ensure-debian-server.sh" prometheus prometheus PROMETHEUS_BIN)"
echo "export PROMETHEUS_BIN='$prometheus'"
redis="$("$here/ensure-debian-server.sh" redis-server redis-server REDIS_SERVER_BIN)"
echo "export REDIS_SERVER_BIN='$redis'"
# Containers: optional (the image and pod tests skip, saying why, where podman cannot be installed).
"$here/ensure-podman.sh" || true

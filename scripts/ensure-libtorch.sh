#!/usr/bin/env bash
# Assemble a CPU libtorch 2.13 (what tch 0.26 expects) from PyPI wheels into a
# cache outside the checkout, once, and print the environment that builds and
# runs against it:
#
#     eval "$(scripts/ensure-libtorch.sh)"
#
# stdout carries only `export` lines; progress goes to stderr. Idempotent: a
# finished cache (marked by .complete) is reused without touching the network.
# Wheels are checked against pinned sha256 digests before anything is unpacked.
#
# Layout produced under ${RECO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reco}/libtorch:
#   lib/       libtorch_cpu.so libtorch.so libc10.so libgomp.so.1 (no CUDA kernels)
#   include/   headers from the torch wheel
#   cuda/lib/  libcudart.so.13 and libcupti.so.13, which libtorch_cpu.so links against
set -euo pipefail

log() { printf '[ensure-libtorch] %s\n' "$*" >&2; }

cache_root="${RECO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reco}"
dest="$cache_root/libtorch"
wheels="$cache_root/wheels"
python="${PYTHON:-python3}"

# name|pip requirement|wheel file|sha256
pins=(
  "torch|torch==2.13.0|torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl|60fcdcb2f3876e21146cb4524ef06397d727ca9ad5f020818547e25075fe3cb7"
  "cudart|nvidia-cuda-runtime==13.0.96|nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl|7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
  "cupti|nvidia-cuda-cupti==13.0.85|nvidia_cuda_cupti-13.0.85-py3-none-manylinux_2_25_x86_64.whl|4eb01c08e859bf924d222250d2e8f8b8ff6d3db4721288cf35d14252a4d933c8"
)
# These two are what `cuda-toolkit[cudart,cupti]==13.0.3` resolves to; they are
# pinned directly so that `--no-deps` downloads stay exact and hash-checked.

print_env() {
  printf 'export LIBTORCH=%q\n' "$dest"
  printf 'export LIBTORCH_BYPASS_VERSION_CHECK=1\n'
  printf 'export LD_LIBRARY_PATH=%q\n' "$dest/lib:$dest/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

if [[ -f "$dest/.complete" ]]; then
  log "using cached libtorch at $dest"
  print_env
  exit 0
fi

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
  log "only Linux x86_64 is supported by these wheels (this is $(uname -s)-$(uname -m))"
  log "set LIBTORCH yourself to a libtorch 2.13 install instead"
  exit 1
fi

mkdir -p "$wheels"
for pin in "${pins[@]}"; do
  IFS='|' read -r name req file sha <<<"$pin"
  path="$wheels/$file"
  if [[ -f "$path" ]] && echo "$sha  $path" | sha256sum --check --status; then
    log "$name: cached wheel $file verified"
    continue
  fi
  rm -f "$path"
  log "$name: downloading $req (torch is ~530 MB)"
  "$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_25_x86_64 \
    --platform manylinux_2_17_x86_64 --python-version 3.11 --implementation cp \
    -d "$wheels" "$req" >&2
  if [[ ! -f "$path" ]]; then
    log "$name: pip did not produce $file; the pinned wheel may have changed"
    exit 1
  fi
  if ! echo "$sha  $path" | sha256sum --check --status; then
    log "$name: sha256 mismatch for $path (expected $sha); removing it"
    rm -f "$path"
    exit 1
  fi
  log "$name: verified $file"
done

tmp="$(mktemp -d "$cache_root/.libtorch.XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
unpack() { # wheel, members...
  "$python" - "$@" <<'PY' >&2
import sys, zipfile, fnmatch
wheel, pats = sys.argv[1], sys.argv[2:-1]
out = sys.argv[-1]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if any(fnmatch.fnmatch(n, p) for p in pats)]
    if not names:
        sys.exit(f"nothing matching {pats} in {wheel}")
    z.extractall(out, names)
PY
}
log "unpacking libtorch (CPU) libraries and headers"
torch_whl="$wheels/$(cut -d'|' -f3 <<<"${pins[0]}")"
cudart_whl="$wheels/$(cut -d'|' -f3 <<<"${pins[1]}")"
cupti_whl="$wheels/$(cut -d'|' -f3 <<<"${pins[2]}")"
unpack "$torch_whl" 'torch/lib/libtorch_cpu.so' 'torch/lib/libtorch.so' 'torch/lib/libc10.so' \
  'torch/lib/libgomp.so.1' 'torch/lib/libtorch_global_deps.so' 'torch/include/*' "$tmp/w"
unpack "$cudart_whl" 'nvidia/cu13/lib/libcudart.so*' "$tmp/w"
unpack "$cupti_whl" 'nvidia/cu13/lib/libcupti.so*' "$tmp/w"
mkdir -p "$tmp/out/cuda"
mv "$tmp/w/torch/lib" "$tmp/out/lib"
mv "$tmp/w/torch/include" "$tmp/out/include"
mv "$tmp/w/nvidia/cu13/lib" "$tmp/out/cuda/lib"
touch "$tmp/out/.complete"
rm -rf "$dest"
mv "$tmp/out" "$dest"
log "libtorch ready at $dest"
print_env

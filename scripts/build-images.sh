#!/usr/bin/env bash
# Builds the reco container images:
#
#     scripts/build-images.sh [--profile release|dev] [operator|services|all]
#
#   operator  ghcr.io/reco-seed/reco-operator:VERSION  from operator/Dockerfile
#   services  ghcr.io/reco-seed/reco:VERSION           from services/Dockerfile
#
# Two ways, one Dockerfile each (see their headers):
#   RECO_IMAGE_BUILD=prebuilt (default): cargo builds the binaries here (the
#     test build's, with --profile dev), they are staged with libtorch in a
#     small build context, and the image is assembled on BASE_IMAGE: the local
#     Debian 12 minbase (scripts/ensure-base-image.sh) unless RECO_BASE_IMAGE
#     names another (e.g. the distroless default where a registry answers).
#     Needs no registry: this is what `make images` and the tests use here.
#   RECO_IMAGE_BUILD=container: the Dockerfiles compile in a Rust builder
#     image (needs a registry; how published images are made).
#
# The engine is podman where it is installed (scripts/ensure-podman.sh
# configures it), docker otherwise; RECO_IMAGE_ENGINE picks one. VERSION is
# the workspace version; RECO_IMAGE_REGISTRY replaces ghcr.io/reco-seed;
# RECO_BUILD_ALSO adds cargo package flags to the build (prebuilt mode).
# Prints each image's name and size at the end.
set -euo pipefail

log() { printf '[build-images] %s\n' "$*" >&2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${RECO_CACHE:-$HOME/.cache/reco}"
registry="${RECO_IMAGE_REGISTRY:-ghcr.io/reco-seed}"
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$root/Cargo.toml")"
[[ -n "$version" ]] || { log "no [workspace.package] version in $root/Cargo.toml"; exit 1; }
revision="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"

profile=release
if [[ "${1:-}" == --profile ]]; then profile="${2:?--profile needs release or dev}"; shift 2; fi
case "$profile" in release|dev) ;; *) log "unknown profile '$profile': use release or dev"; exit 2 ;; esac
what="${1:-all}"
case "$what" in operator|services|all) ;; *) log "unknown image '$what': use operator, services or all"; exit 2 ;; esac
mode="${RECO_IMAGE_BUILD:-prebuilt}"

engine="${RECO_IMAGE_ENGINE:-}"
if [[ -z "$engine" ]]; then
  if command -v podman >/dev/null || "$root/scripts/ensure-podman.sh" >/dev/null 2>&1; then engine=podman; else engine=docker; fi
fi
if [[ "$engine" == podman ]]; then
  eval "$("$root/scripts/ensure-podman.sh")"
elif ! docker info >/dev/null 2>&1; then
  log "neither podman nor a Docker engine answers: nothing was built"
  exit 1
fi

images=()
build() { # dockerfile image context [extra build flags...]
  local dockerfile="$1" image="$2" context="$3"; shift 3
  log "$engine build $image from $dockerfile ($mode)"
  # shellcheck disable=SC2086 # DOCKER_BUILD_FLAGS is a list of flags
  DOCKER_BUILDKIT=1 "$engine" build ${DOCKER_BUILD_FLAGS:-} -f "$root/$dockerfile" -t "$image" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" "$@" "$context" >&2
  images+=("$image")
}

# Binaries without debug info (the profiles keep line tables for backtraces in logs, not needed in images).
stage_binary() { # source target
  strip --strip-debug -o "$2" "$1" 2>/dev/null || cp "$1" "$2"
  chmod 0755 "$2"
}

if [[ "$mode" == container ]]; then
  [[ "$what" == services ]] || build operator/Dockerfile "$registry/reco-operator:$version" "$root"
  [[ "$what" == operator ]] || build services/Dockerfile "$registry/reco:$version" "$root"
else
  base="${RECO_BASE_IMAGE:-}"
  if [[ -z "$base" ]]; then
    [[ "$engine" == podman ]] || { log "set RECO_BASE_IMAGE (the local base is made with podman)"; exit 1; }
    base="$("$root/scripts/ensure-base-image.sh")"
  fi
  eval "$("$root/scripts/env.sh")"
  target_dir="${CARGO_TARGET_DIR:-$root/target}/$([[ "$profile" == dev ]] && echo debug || echo release)"
  packages=()
  [[ "$what" == services ]] || packages+=(-p reco-operator --bin reco-operator)
  [[ "$what" == operator ]] || packages+=(-p reco-cli --bin reco)
  # More binaries for the caller in the same cargo run (RECO_BUILD_ALSO="-p reco-node --bin reco-node"):
  # one feature resolution, so no dependency compiles twice.
  # shellcheck disable=SC2206 # cargo flags, split on spaces
  packages+=(${RECO_BUILD_ALSO:-})
  log "cargo build --profile $profile ${packages[*]} (a cold release build takes tens of minutes)"
  (cd "$root" && cargo build --locked --profile "$profile" "${packages[@]}")
  context="$cache/image-context"
  if [[ "$what" != services ]]; then
    rm -rf "$context/operator" && mkdir -p "$context/operator"
    stage_binary "$target_dir/reco-operator" "$context/operator/reco-operator"
    build operator/Dockerfile "$registry/reco-operator:$version" "$context/operator" \
      --build-arg BINARY_FROM=prebuilt --build-arg "BASE_IMAGE=$base"
  fi
  if [[ "$what" != operator ]]; then
    rm -rf "$context/services" && mkdir -p "$context/services"
    stage_binary "$target_dir/reco" "$context/services/reco"
    # The shared libraries only; hard links where the cache and libtorch share a file system.
    for dir in lib cuda/lib; do
      mkdir -p "$(dirname "$context/services/libtorch/$dir")"
      cp -al "$LIBTORCH/$dir" "$context/services/libtorch/$dir" 2>/dev/null || cp -a "$LIBTORCH/$dir" "$context/services/libtorch/$dir"
    done
    build services/Dockerfile "$registry/reco:$version" "$context/services" \
      --build-arg BINARY_FROM=prebuilt --build-arg "BASE_IMAGE=$base"
  fi
fi

for image in "${images[@]}"; do
  size="$("$engine" image inspect --format '{{.Size}}' "$image")"
  printf '%s\t%s MB\n' "$image" "$((size / 1000000))"
done
log "done"

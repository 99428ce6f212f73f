#!/usr/bin/env bash
# Build the reco container images with `docker build`, where a Docker engine
# runs (BuildKit, for the Dockerfiles' cache mounts):
#
#     scripts/build-images.sh [operator|services|all]     (default: all)
#
#   operator  ghcr.io/reco-seed/reco-operator:VERSION  from operator/Dockerfile
#   services  ghcr.io/reco-seed/reco:VERSION           from services/Dockerfile
#
# VERSION is the workspace version in Cargo.toml; RECO_IMAGE_REGISTRY
# replaces ghcr.io/reco-seed. Extra `docker build` flags (--push, --platform)
# go in DOCKER_BUILD_FLAGS. Exits 1, building nothing, when no engine answers.
set -euo pipefail

log() { printf '[build-images] %s\n' "$*" >&2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
registry="${RECO_IMAGE_REGISTRY:-ghcr.io/reco-seed}"
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$root/Cargo.toml")"
[[ -n "$version" ]] || { log "no [workspace.package] version in $root/Cargo.toml"; exit 1; }

what="${1:-all}"
case "$what" in
  operator|services|all) ;;
  *) log "unknown image '$what': use operator, services or all"; exit 2 ;;
esac

if ! command -v docker >/dev/null; then
  log "no docker client on PATH: install Docker to build the images"
  exit 1
fi
if ! docker info >/dev/null 2>&1; then
  log "no Docker engine answers ('docker info' failed): nothing was built."
  log "Build the images on a machine or CI runner with a Docker engine."
  exit 1
fi

build() { # dockerfile image
  log "building $2 from $1"
  # shellcheck disable=SC2086 # DOCKER_BUILD_FLAGS is a list of flags
  DOCKER_BUILDKIT=1 docker build ${DOCKER_BUILD_FLAGS:-} -f "$root/$1" -t "$2" "$root"
}
if [[ "$what" == operator || "$what" == all ]]; then
  build operator/Dockerfile "$registry/reco-operator:$version"
fi
if [[ "$what" == services || "$what" == all ]]; then
  build services/Dockerfile "$registry/reco:$version"
fi
log "done"

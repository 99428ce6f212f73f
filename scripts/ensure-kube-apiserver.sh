#!/usr/bin/env bash
# Build (once, cached outside the checkout) genuine Kubernetes API servers from
# Debian sources, and print the environment that names them:
#
#     eval "$(scripts/ensure-kube-apiserver.sh)"
#
# exports KUBE_APISERVER_BIN, KUBE_CONTROLLER_MANAGER_BIN,
# APIEXTENSIONS_APISERVER_BIN, ETCD_BIN (and RECO_KUBE_CACHE). scripts/kube-up.sh
# starts them as one control plane; see docs/api-server.md.
#
# What is built, and from what:
#   - kube-apiserver, kube-controller-manager 1.20.2: bookworm's `kubernetes`
#     source package, built with bookworm's golang-1.19-go. Go >= 1.18 crashes
#     the vendored modern-go/reflect2 1.0.1 when custom resources are written,
#     so the vendored copy is replaced by Debian's reflect2 1.0.2 (same API).
#   - apiextensions-apiserver 1.36 (CRDs with CEL validation, SSA, /status):
#     Debian unstable's golang-k8s-apiextensions-apiserver-dev and the Go
#     source packages it imports, built in GOPATH mode with golang-1.26-go.
#   - etcd 3.5: trixie's etcd-server, unpacked (bookworm's 3.4 is too old for
#     the 1.36 server's watches).
# Every package is fetched with apt through a private apt configuration under
# a temporary work folder and unpacked with `dpkg -x`: nothing is installed
# system-wide and the machine's apt configuration is not touched. Versions are
# pinned (below); when the mirror no longer carries a pinned version (Debian
# unstable moves), the current one is taken with a warning, and the versions
# actually used are written to VERSIONS next to the binaries.
#
# How long: about 15-25 minutes cold on a busy 2-core machine (the 1.20 build
# is the long one); a finished cache (marked by .complete) is reused at once.
# Builds run under `nice -n 19` with GOMAXPROCS=${RECO_KUBE_BUILD_JOBS:-cores-1}
# so that other work on the machine keeps priority. Build logs and wall times
# go to $RECO_KUBE_CACHE/logs/ and $RECO_KUBE_CACHE/build-times.txt.
#
# stdout carries only `export` lines; progress goes to stderr.
#
# Environment:
#   RECO_CACHE            cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/reco)
#   RECO_DEBIAN_MIRROR    Debian mirror (default http://deb.debian.org/debian)
#   RECO_DEBIAN_SECURITY  security mirror (default http://deb.debian.org/debian-security)
#   RECO_KUBE_BUILD_JOBS  Go build parallelism (default: cores - 1, at least 1)
#   RECO_KUBE_KEEP_WORK=1 keep the temporary work folder (sources, toolchains)
#
# Layout under ${RECO_CACHE}/kube:
#   kubernetes-1.20.2/bin/{kube-apiserver,kube-controller-manager}
#   apiextensions-apiserver-1.36.4/bin/apiextensions-apiserver
#   etcd-3.5.16/bin/etcd
set -euo pipefail

log() { printf '[ensure-kube-apiserver] %s\n' "$*" >&2; }

cache_root="${RECO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reco}"
kube_root="$cache_root/kube"
mirror="${RECO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security_mirror="${RECO_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

# --- pins ---------------------------------------------------------------------
k8s_version=1.20.2
k8s_src_version=1.20.5+really1.20.2-1.1+deb12u1 # bookworm's `kubernetes`
go119_version=1.19.8-2                          # bookworm
reflect2_version=1.0.2-2                        # bookworm
ext_version=1.36.4
go126_version=1.26.10-1 # sid
etcd_version=3.5.16
etcd_deb_version=3.5.16-4 # trixie
# What `go list -deps k8s.io/apiextensions-apiserver` needs, by Debian package
# (sid, as built). Regenerate the list when the build breaks on a newer upload.
ext_packages=(
  golang-cel-cel-go-dev=0.32.0+ds-5 golang-cel-expr-dev=0.24.0-1
  golang-etcd-server-dev=3.5.30-2 golang-github-antlr4-go-antlr-dev=4.13.1-2
  golang-github-beorn7-perks-dev=1.0.1-3 golang-github-blang-semver-dev=4.0.0-2
  golang-github-cenkalti-backoff-v5-dev=5.0.3-4
  golang-github-cespare-xxhash-v2-dev=2.3.0-4
  golang-github-coreos-go-semver-dev=0.3.1-1
  golang-github-coreos-go-systemd-dev=22.6.0-1
  golang-github-davecgh-go-spew-dev=1.1.1-7
  golang-github-docker-spdystream-dev=0.5.0-1
  golang-github-emicklei-go-restful-dev=3.10.2-1
  golang-github-evanphx-json-patch-dev=5.7.0-2
  golang-github-felixge-httpsnoop-dev=1.0.3-3
  golang-github-fsnotify-fsnotify-dev=1.10.1-1
  golang-github-fxamacker-cbor-dev=2.9.6-2 golang-github-go-logr-logr-dev=1.4.4-1
  golang-github-go-logr-stdr-dev=1.2.2-4
  golang-github-go-openapi-jsonpointer-dev=1:0.23.1-1
  golang-github-go-openapi-jsonreference-dev=1:0.21.5-1
  golang-github-go-openapi-swag-dev=1:0.26.0-1
  golang-github-gogo-protobuf-dev=1.3.2-3
  golang-github-golang-protobuf-1-5-dev=1.5.4-2
  golang-github-google-gnostic-models-dev=0.7.1-1
  golang-github-google-uuid-dev=1.6.0-1
  golang-github-gorilla-websocket-dev=1.5.3-2
  golang-github-grpc-ecosystem-go-grpc-middleware-dev=2.1.0-2
  golang-github-grpc-ecosystem-grpc-gateway-dev=2.30.0-1
  golang-github-json-iterator-go-dev=1.1.12-3
  golang-github-kylelemons-godebug-dev=1.1.0-2
  golang-github-modern-go-concurrent-dev=1.0.3-1.1
  golang-github-modern-go-reflect2-dev=1.0.2-2
  golang-github-munnerz-goautoneg-dev=0.0~git20191010.a7dc8b6-2
  golang-github-mxk-go-flowrate-dev=0.0~git20140419.0.cca7078-2
  golang-github-nytimes-gziphandler-dev=1.1.1-1
  golang-github-pkg-errors-dev=0.9.1-3 golang-github-pmezard-go-difflib-dev=1.0.0-4
  golang-github-prometheus-client-golang-dev=1.23.2-5
  golang-github-prometheus-client-model-dev=0.6.2-2
  golang-github-prometheus-common-dev=0.69.0-1
  golang-github-prometheus-procfs-dev=0.21.1-1
  golang-github-spf13-cobra-dev=1.10.2-1 golang-github-spf13-pflag-dev=1.0.10-1
  golang-github-x448-float16-dev=0.8.4-3 golang-go.uber-multierr-dev=1.11.0-2
  golang-go.uber-zap-dev=1.27.0-2 golang-golang-x-crypto-dev=1:0.58.0-1
  golang-golang-x-exp-dev=0.0~git20261009.ca0d7ba-1
  golang-golang-x-net-dev=1:0.62.0-1 golang-golang-x-oauth2-dev=0.37.0-1
  golang-golang-x-sync-dev=0.24.0-1 golang-golang-x-sys-dev=0.49.0+dfsg-1
  golang-golang-x-term-dev=0.47.0-1 golang-golang-x-text-dev=0.43.0-1
  golang-golang-x-time-dev=0.16.0-1
  golang-google-genproto-dev=0.0~git20260414.afd174a-2
  golang-google-grpc-dev=1.81.1-1 golang-google-protobuf-dev=1.36.10-2
  golang-gopkg-inf.v0-dev=0.9.1-2 golang-gopkg-natefinch-lumberjack.v2-dev=2.1-2
  golang-gopkg-yaml.v2-dev=2.4.4-1 golang-gopkg-yaml.v3-dev=3.0.5-1
  golang-k8s-api-dev=0.36.4-1 golang-k8s-apiextensions-apiserver-dev=0.36.4-1
  golang-k8s-apimachinery-dev=0.36.4-3 golang-k8s-apiserver-dev=0.36.4-2
  golang-k8s-client-go-dev=0.36.4-1 golang-k8s-component-base-dev=0.36.4-2
  golang-k8s-klog-dev=2.140.0-5 golang-k8s-kms-dev=0.36.4-1
  golang-k8s-kube-openapi-dev=0.0~git20260721.d427ff9-1
  golang-k8s-sigs-apiserver-network-proxy-dev=0.36.0+ds1-2
  golang-k8s-sigs-json-dev=0.0~git20260909.11ed52e-1
  golang-k8s-sigs-randfill-dev=1.0.0-2
  golang-k8s-sigs-structured-merge-diff-v6-dev=6.4.2-1
  golang-k8s-sigs-yaml-dev=1.6.0-1 golang-k8s-streaming-dev=0.36.2-1
  golang-k8s-utils-dev=0.0~git20260707.cf1189d-1
  golang-opentelemetry-contrib-dev=1.46.0-1 golang-opentelemetry-otel-dev=1.46.0-3
  golang-opentelemetry-proto-dev=1.10.0-1
)

k8s_dest="$kube_root/kubernetes-$k8s_version"
ext_dest="$kube_root/apiextensions-apiserver-$ext_version"
etcd_dest="$kube_root/etcd-$etcd_version"

print_env() {
  printf 'export RECO_KUBE_CACHE=%q\n' "$kube_root"
  printf 'export KUBE_APISERVER_BIN=%q\n' "$k8s_dest/bin/kube-apiserver"
  printf 'export KUBE_CONTROLLER_MANAGER_BIN=%q\n' "$k8s_dest/bin/kube-controller-manager"
  printf 'export APIEXTENSIONS_APISERVER_BIN=%q\n' "$ext_dest/bin/apiextensions-apiserver"
  printf 'export ETCD_BIN=%q\n' "$etcd_dest/bin/etcd"
}

if [[ -f "$k8s_dest/.complete" && -f "$ext_dest/.complete" && -f "$etcd_dest/.complete" ]]; then
  log "using cached servers in $kube_root"
  print_env
  exit 0
fi

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
  log "this builds Debian amd64 packages (this is $(uname -s)-$(uname -m))"
  exit 1
fi
for tool in apt-get apt-cache dpkg-deb dpkg-source make; do
  command -v "$tool" >/dev/null || { log "$tool is required (Debian: apt, dpkg-dev, make)"; exit 1; }
done
[[ -r "$keyring" ]] || { log "$keyring is required (Debian package debian-archive-keyring)"; exit 1; }

cores="$(nproc)"
jobs="${RECO_KUBE_BUILD_JOBS:-$((cores > 1 ? cores - 1 : 1))}"

mkdir -p "$kube_root/logs"
work="$(mktemp -d "$kube_root/.work.XXXXXX")"
cleanup() {
  if [[ "${RECO_KUBE_KEEP_WORK:-0}" == 1 ]]; then
    log "work folder kept: $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

# --- private apt configurations -------------------------------------------------
# apt_setup NAME LINE...: a sources.list of its own, with lists and caches in
# $work/apt/NAME; apt_in NAME TOOL ARGS... runs TOOL (apt-get, apt-cache) against it.
apt_setup() {
  local name="$1"
  shift
  local d="$work/apt/$name"
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
  printf '%s\n' "$@" >"$d/sources.list"
  log "reading the $name package index"
  apt_in "$name" apt-get update -qq >&2
}
apt_in() {
  local d="$work/apt/$1" tool="$2"
  shift 2
  "$tool" -o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" \
    -o Debug::NoLocking=1 -o APT::Sandbox::User="$(id -un)" "$@"
}
# pin NAME PKG=VER...: prints PKG=VER where the index has that version, else
# PKG (the current version), with a warning.
pin() {
  local name="$1" spec pkg ver
  shift
  declare -A have=()
  while IFS='|' read -r pkg ver _; do
    pkg="${pkg// /}" ver="${ver// /}"
    have["$pkg=$ver"]=1
  done < <(apt_in "$name" apt-cache madison "${@%%=*}" 2>/dev/null)
  for spec in "$@"; do
    if [[ -n "${have[$spec]:-}" ]]; then
      echo "$spec"
    else
      log "WARNING: $spec is no longer on the mirror; taking the current ${spec%%=*}"
      echo "${spec%%=*}"
    fi
  done
}
# fetch NAME DIR SPEC...: downloads the .debs into DIR.
fetch() {
  local name="$1" dir="$2"
  shift 2
  mkdir -p "$dir"
  mapfile -t specs < <(pin "$name" "$@")
  (cd "$dir" && apt_in "$name" apt-get download -qq "${specs[@]}" >&2)
}
# unpack DEBDIR ROOT: dpkg -x every .deb of DEBDIR into ROOT; records versions.
unpack() {
  local deb
  mkdir -p "$2"
  for deb in "$1"/*.deb; do
    dpkg-deb -x "$deb" "$2"
    dpkg-deb -f "$deb" Package Version | paste -sd' ' | sed 's/Package: //; s/ Version: /=/' >>"$work/versions"
  done
}

# run_logged LABEL LOGFILE CMD...: runs CMD (niced) with output to LOGFILE,
# saying every minute that it is still going; on failure shows the log's tail.
run_logged() {
  local label="$1" logfile="$2" start pid rc=0 elapsed
  shift 2
  start=$SECONDS
  nice -n 19 "$@" >"$logfile" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
      elapsed=$((SECONDS - start))
      log "  still building $label: $((elapsed / 60)) min $((elapsed % 60)) s (log: $logfile; last: $(tail -n1 "$logfile" | cut -c1-80))"
    fi
  done
  wait "$pid" || rc=$?
  elapsed=$((SECONDS - start))
  if [[ $rc -ne 0 ]]; then
    log "building $label failed after ${elapsed} s (exit $rc); end of $logfile:"
    tail -n 40 "$logfile" >&2
    exit 1
  fi
  log "built $label in $((elapsed / 60)) min $((elapsed % 60)) s"
  printf '%s\t%s s\t%s\tjobs=%s cores=%s\n' "$label" "$elapsed" "$(date -u +%FT%TZ)" "$jobs" "$cores" \
    >>"$kube_root/build-times.txt"
}

# install_dest DEST FILE...: copies FILE... into DEST/bin, marks it complete.
install_dest() {
  local dest="$1"
  shift
  rm -rf "$dest"
  mkdir -p "$dest.tmp/bin"
  cp "$@" "$dest.tmp/bin/"
  sort -u "$work/versions" >"$dest.tmp/VERSIONS"
  : >"$work/versions"
  touch "$dest.tmp/.complete"
  mv "$dest.tmp" "$dest"
}
: >"$work/versions"

# --- etcd 3.5 (trixie) ----------------------------------------------------------
if [[ ! -f "$etcd_dest/.complete" ]]; then
  apt_setup trixie "deb [signed-by=$keyring] $mirror trixie main"
  log "fetching etcd-server $etcd_deb_version from trixie"
  fetch trixie "$work/debs/etcd" "etcd-server=$etcd_deb_version"
  unpack "$work/debs/etcd" "$work/etcd"
  "$work/etcd/usr/bin/etcd" --version >&2
  rm -rf "$etcd_dest.tmp"
  install_dest "$etcd_dest" "$work/etcd/usr/bin/etcd"
  log "etcd ready in $etcd_dest/bin"
fi

# --- kube-apiserver + kube-controller-manager 1.20.2 (bookworm) ------------------
if [[ ! -f "$k8s_dest/.complete" ]]; then
  apt_setup bookworm \
    "deb [signed-by=$keyring] $mirror bookworm main" \
    "deb-src [signed-by=$keyring] $mirror bookworm main" \
    "deb [signed-by=$keyring] $security_mirror bookworm-security main" \
    "deb-src [signed-by=$keyring] $security_mirror bookworm-security main"
  log "fetching the kubernetes $k8s_src_version source package (34 MB) and golang-1.19"
  mkdir -p "$work/k8s-src"
  (cd "$work/k8s-src" && apt_in bookworm apt-get source --download-only -qq "kubernetes=$k8s_src_version" >&2)
  fetch bookworm "$work/debs/go119" "golang-1.19-go=$go119_version" "golang-1.19-src=$go119_version"
  fetch bookworm "$work/debs/reflect2" "golang-github-modern-go-reflect2-dev=$reflect2_version"
  unpack "$work/debs/go119" "$work/go119"
  unpack "$work/debs/reflect2" "$work/reflect2"
  echo "kubernetes(source)=$k8s_src_version" >>"$work/versions"
  log "unpacking the source and applying Debian's patches"
  dpkg-source --no-check -x "$work"/k8s-src/kubernetes_*.dsc "$work/k8s" >&2
  # The one fix: reflect2 1.0.1 (vendored) crashes under Go >= 1.18.
  rm -rf "$work/k8s/vendor/github.com/modern-go/reflect2"
  cp -r "$work/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2" "$work/k8s/vendor/github.com/modern-go/"
  rm -f "$work/k8s/vendor/github.com/modern-go/reflect2/go.mod"
  # hack/lib/golang.sh copies the binaries with `rsync -pc SRC DEST`.
  mkdir -p "$work/shim"
  # shellcheck disable=SC2016 # the shim's own text
  printf '#!/bin/sh\n# stand-in for `rsync -pc SRC DEST`\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec cp -p "$@"\n' >"$work/shim/rsync"
  chmod +x "$work/shim/rsync"
  mkdir -p "$work/home" "$work/gocache119"
  log "building kube-apiserver and kube-controller-manager $k8s_version with $("$work/go119/usr/lib/go-1.19/bin/go" version | cut -d' ' -f3)"
  log "  (about 10-15 min; nice -n 19, GOMAXPROCS=$jobs; code generators first, then the two binaries)"
  # shellcheck disable=SC2030,SC2031 # each build sets its environment in a subshell
  (
    cd "$work/k8s"
    export PATH="$work/shim:$work/go119/usr/lib/go-1.19/bin:$PATH" HOME="$work/home" \
      GOCACHE="$work/gocache119" GOPATH="$work/gopath119" GOTOOLCHAIN=local GOFLAGS='' \
      GOMAXPROCS="$jobs" CGO_ENABLED=0
    unset GOROOT
    run_logged "kubernetes-$k8s_version" "$kube_root/logs/kubernetes-$k8s_version.log" \
      make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
  )
  "$work/k8s/_output/bin/kube-apiserver" --version >&2
  install_dest "$k8s_dest" "$work/k8s/_output/bin/kube-apiserver" "$work/k8s/_output/bin/kube-controller-manager"
  rm -rf "$work/k8s" "$work/gocache119" # free the space (several GB) before the next build
  log "kube-apiserver and kube-controller-manager ready in $k8s_dest/bin"
fi

# --- apiextensions-apiserver 1.36 (sid) -----------------------------------------
if [[ ! -f "$ext_dest/.complete" ]]; then
  apt_setup sid "deb [signed-by=$keyring] $mirror sid main"
  log "fetching golang-1.26 and ${#ext_packages[@]} Go source packages from sid (about 70 MB)"
  fetch sid "$work/debs/go126" "golang-1.26-go=$go126_version" "golang-1.26-src=$go126_version"
  fetch sid "$work/debs/ext" "${ext_packages[@]}"
  unpack "$work/debs/go126" "$work/go126"
  log "unpacking the Go sources into a GOPATH"
  unpack "$work/debs/ext" "$work/gopath126"
  mkdir -p "$work/gocache126"
  log "building apiextensions-apiserver $ext_version with $("$work/go126/usr/lib/go-1.26/bin/go" version | cut -d' ' -f3)"
  log "  (about 5-10 min; nice -n 19, GOMAXPROCS=$jobs)"
  # shellcheck disable=SC2030,SC2031
  (
    cd "$work/gopath126/usr/share/gocode/src/k8s.io/apiextensions-apiserver"
    export PATH="$work/go126/usr/lib/go-1.26/bin:$PATH" HOME="$work/home" \
      GOPATH="$work/gopath126/usr/share/gocode" GOCACHE="$work/gocache126" \
      GO111MODULE=off GOTOOLCHAIN=local GOFLAGS='' GOMAXPROCS="$jobs" CGO_ENABLED=0
    unset GOROOT
    minor="${ext_version#1.}"
    minor="${minor%%.*}"
    run_logged "apiextensions-apiserver-$ext_version" "$kube_root/logs/apiextensions-apiserver-$ext_version.log" \
      go build -v -trimpath -o "$work/apiextensions-apiserver" -ldflags "-s -w \
        -X k8s.io/component-base/version.gitVersion=v$ext_version \
        -X k8s.io/component-base/version.gitMajor=1 \
        -X k8s.io/component-base/version.gitMinor=$minor \
        -X k8s.io/component-base/version.gitTreeState=clean" .
  )
  "$work/apiextensions-apiserver" --help >/dev/null # it runs
  install_dest "$ext_dest" "$work/apiextensions-apiserver"
  log "apiextensions-apiserver ready in $ext_dest/bin"
fi

log "all servers ready in $kube_root (build times: $kube_root/build-times.txt)"
print_env

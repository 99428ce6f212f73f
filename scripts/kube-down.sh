#!/usr/bin/env bash
# Stop the control plane started by scripts/kube-up.sh, by the PIDs it wrote:
#
#     scripts/kube-down.sh [--purge] [STATE_DIR]
#
# STATE_DIR defaults to $RECO_KUBE_STATE (which `eval "$(scripts/kube-up.sh)"`
# exports). SIGTERM to kube-controller-manager and both API servers together,
# SIGKILL to those still running after $RECO_KUBE_STOP_GRACE seconds (default
# 5), then SIGTERM to etcd (SIGKILL after 30 s). The grace is short on purpose:
# each API server holds watches on the other (kube-apiserver proxies watches to
# the 1.36 server, whose informers watch kube-apiserver), and each would wait
# its full 60 s request timeout for them to end; in-flight writes have
# finished by then and all state is in etcd, which stops cleanly.
# Only a PID whose command line names STATE_DIR is signalled, so a recycled PID
# is never hit. Idempotent: nothing running, nothing to do. --purge also
# deletes STATE_DIR (data, certificates, logs); otherwise
# `scripts/kube-up.sh STATE_DIR` starts it again with its data.
# About 5 s.
set -euo pipefail

log() { printf '[kube-down] %s\n' "$*" >&2; }

purge=0
state=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --purge) purge=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
      exit 0
      ;;
    -*)
      log "unknown option $1 (see --help)"
      exit 1
      ;;
    *) state="$1" ;;
  esac
  shift
done
state="${state:-${RECO_KUBE_STATE:-}}"
if [[ -z "$state" ]]; then
  log "no state folder: pass the one kube-up.sh printed, or set RECO_KUBE_STATE"
  exit 1
fi
if [[ ! -d "$state" ]]; then
  log "$state does not exist: nothing to stop"
  exit 0
fi
state="$(cd "$state" && pwd)"
pids="$state/pids"
grace="${RECO_KUBE_STOP_GRACE:-5}"

ours() { grep -qF "$state" "/proc/$1/cmdline" 2>/dev/null; }
pid_of() { awk -v n="$1" '$1 == n { print $2 }' "$pids" 2>/dev/null; }

# stop TIMEOUT NAME...: SIGTERM to each of ours that runs, SIGKILL to those
# still running after TIMEOUT seconds.
stop() {
  local timeout="$1" name pid entry running=() deadline
  shift
  for name in "$@"; do
    pid="$(pid_of "$name")"
    if [[ -n "$pid" ]] && ours "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      running+=("$name:$pid")
    fi
  done
  [[ ${#running[@]} -gt 0 ]] || return 0
  log "stopping ${running[*]%%:*}"
  deadline=$((SECONDS + timeout))
  for entry in "${running[@]}"; do
    name="${entry%%:*}" pid="${entry#*:}"
    while ours "$pid"; do
      if ((SECONDS >= deadline)); then
        log "$name ($pid) still draining watches after ${timeout} s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
        break
      fi
      sleep 0.1
    done
  done
}

t0=$SECONDS
if [[ -f "$pids" ]]; then
  stop "$grace" kube-controller-manager apiextensions-apiserver kube-apiserver
  stop 30 etcd
  rm -f "$pids"
  log "stopped in $((SECONDS - t0)) s"
else
  log "nothing running in $state"
fi
if [[ $purge -eq 1 ]]; then
  rm -rf "$state"
  log "removed $state"
fi

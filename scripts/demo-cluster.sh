#!/usr/bin/env bash
# `make demo-cluster`: the demo through the operator, as a user runs reco on
# a cluster, on one machine:
#
#   1. tools (each cached under ~/.cache/reco): podman, the genuine API
#      servers (built from Debian sources the first time), helm and kubectl,
#      Prometheus, an S3-protocol server (moto), ml-100k;
#   2. the binaries and the two container images (scripts/build-images.sh);
#   3. a control plane of genuine API servers (scripts/kube-up.sh) and
#      reco-node, the node agent that runs its pods with podman (a stand-in
#      for a kubelet: see tests/node/src/agent.rs);
#   4. the CRDs and the operator, installed the way a user does:
#      `helm template charts/reco | kubectl apply` (two replicas, leader
#      election, each in its own container);
#   5. Prometheus (file service discovery written by reco-node) and an S3
#      bucket on the pod network;
#   6. `reco demo --cluster`: uploads v1, v2, a broken v3 and the users'
#      history, applies the pipeline and the versions with kubectl, replays
#      users against the gateway's node port; the operator rolls v2 out
#      (promoted) and v3 back on the CTR it reads from Prometheus;
#   7. `kubectl get rp,mv` and the events; everything is stopped at the end.
#
# Output: demo-cluster-out/ (report.json, ctr.png, manifests/, logs/).
#
#     scripts/demo-cluster.sh [RECO DEMO FLAGS...]   # steps 1-7, then stop everything
#     eval "$(scripts/demo-cluster.sh --up)"        # steps 1-5 only, left running; prints
#                                                   # the exports (KUBECONFIG, AWS_*, RECO_DEMO_*)
#     scripts/demo-cluster.sh --down                # stop what --up (or RECO_DEMO_KEEP=1) left
#
# Environment: RECO_DEMO_PROFILE (release, or dev for a quicker build),
# RECO_DEMO_PREBUILT=1 (use the binaries and images as they are: make test),
# RECO_DEMO_STATE (state folder, default /tmp/reco-demo-cluster),
# RECO_DEMO_OUT (output folder), RECO_DEMO_KEEP=1 (leave everything running
# after the demo). Extra arguments go to `reco demo`. Progress on stderr.
set -euo pipefail

log() { printf '[demo-cluster] %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
profile="${RECO_DEMO_PROFILE:-release}"
state="${RECO_DEMO_STATE:-/tmp/reco-demo-cluster}"
out="${RECO_DEMO_OUT:-$repo/demo-cluster-out}"
network=reco-demo
system_ns=reco-system
demo_ns=reco-demo
node_port=30080
case "$profile" in release) target_dir="$repo/target/release" ;; dev) target_dir="$repo/target/debug" ;; *) die "RECO_DEMO_PROFILE must be release or dev" ;; esac

# Stops what an earlier run left in $state: the agent (which stops its pods),
# Prometheus, the S3 server, the control plane.
down() {
  local name pid
  for name in stats reco-node prometheus s3; do
    pid="$(cat "$state/$name.pid" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$state/$name.pid"
  done
  # Pods the agent could not stop (killed agent).
  podman ps -aq --filter "network=$network" 2>/dev/null | xargs -r podman rm -f -t 2 >/dev/null 2>&1 || true
  [[ -d "$state/kube" ]] && "$here/kube-down.sh" --purge "$state/kube" >&2 || true
}

mode=demo
case "${1:-}" in
  --down) down; exit 0 ;;
  --up) mode=up; shift ;;
esac
# With --up, stdout carries only the export lines: everything else goes to stderr.
exec 3>&1
[[ $mode == up ]] && exec 1>&2

t0=$SECONDS
log "a cold run takes about 50 min here (API servers ~18, release build ~26, training ~5, the rollouts ~3);"
log "with the tools, the build and the models cached, about 3 min. Output: $out"

# --- 1. tools --------------------------------------------------------------------
"$here/ensure-ml100k.sh" >/dev/null
# Assignments first: a failing step stops the script (`eval "$(...)"` would not).
tools_env="$("$here/env.sh")"
eval "$tools_env"
servers_env="$("$here/ensure-kube-apiserver.sh")"
eval "$servers_env"
command -v podman >/dev/null || die "podman is required (scripts/ensure-podman.sh could not install it)"

# --- 2. binaries and images ------------------------------------------------------
if [[ "${RECO_DEMO_PREBUILT:-0}" == 1 ]]; then
  # make test: its build made the binaries and images already.
  for bin in reco reco-node; do
    [[ -x "$target_dir/$bin" ]] || die "RECO_DEMO_PREBUILT=1 but $target_dir/$bin is missing"
  done
else
  log "building the binaries and images ($profile; cargo shows its progress)"
  RECO_BUILD_ALSO="-p reco-node --bin reco-node" "$here/build-images.sh" --profile "$profile" all
fi
log "binaries and images ready after $((SECONDS - t0)) s"

# --- 3. control plane and node ---------------------------------------------------
down
rm -rf "$state" "$out"
mkdir -p "$state/node" "$state/prometheus" "$out/logs"
cleanup() {
  local rc=$?
  if [[ $mode == up && $rc -eq 0 ]]; then
    return
  fi
  if [[ "${RECO_DEMO_KEEP:-0}" == 1 ]]; then
    log "left running (RECO_DEMO_KEEP=1): export KUBECONFIG=$state/kube/kubeconfig; stop with scripts/demo-cluster.sh --down"
  else
    log "stopping the pods, Prometheus, the S3 server and the control plane"
    down
  fi
  exit "$rc"
}
trap cleanup EXIT
# Background processes get no fd 3: with --up, it is the caller's `$(...)`, which
# would wait for them.
kube_env="$("$here/kube-up.sh" --no-crds "$state/kube" 3>&-)"
eval "$kube_env"

podman network exists "$network" || podman network create "$network" >/dev/null
gateway_ip="$(podman network inspect "$network" --format '{{(index .Subnets 0).Gateway}}')"
setsid "$target_dir/reco-node" --state-dir "$state/node" --network "$network" \
  --namespace "$system_ns" --namespace "$demo_ns" \
  --prometheus-targets "$state/prometheus/targets.json" </dev/null >"$out/logs/reco-node.log" 2>&1 3>&- &
echo $! >"$state/reco-node.pid"
log "reco-node (pid $!) runs the pods on podman network $network (host address $gateway_ip)"

# --- 4. the operator, as a user installs it --------------------------------------
log "installing the CRDs and the operator: helm template charts/reco | kubectl apply"
kubectl create namespace "$system_ns" >/dev/null
# kube-apiserver 1.20 fronts the 1.36 CRD server: kubectl's client-side check
# would use 1.20's schema (no x-kubernetes-validations), so the server
# validates (--validate=false); 1.20 has no policy/v1 PodDisruptionBudget.
helm template reco "$repo/charts/reco" --namespace "$system_ns" --include-crds \
  --set replicaCount=2 --set podDisruptionBudget.enabled=false \
  --set-json 'podAnnotations={"prometheus.io/scrape":"true","prometheus.io/port":"8080"}' \
  >"$out/install.yaml"
kubectl apply --server-side --validate=false -f "$out/install.yaml" 2> >(grep -v 'memcache.go' >&2)
kubectl wait --for condition=Established crd --all --timeout 60s >/dev/null
"$here/kube-up.sh" --no-crds "$state/kube" >/dev/null 3>&- # registers the new API group behind kube-apiserver
kubectl -n "$system_ns" rollout status deployment/reco --timeout 300s

# Every pod's CPU time and memory every 5 s (the operator's figures in BENCHMARKS.md).
(while sleep 5; do
  # shellcheck disable=SC2046 # one argument per container
  podman stats --no-stream --format "$(date +%s) {{.Name}} {{.ContainerStats.CPUNano}} {{.ContainerStats.MemUsage}}" \
    $(podman ps -q --filter "network=$network") 2>/dev/null
done) </dev/null >"$out/logs/container-stats.log" 2>/dev/null 3>&- &
echo $! >"$state/stats.pid"

# --- 5. Prometheus and the object store, on the pod network ----------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
s3_port="$(free_port)"
setsid "$MOTO_SERVER_BIN" -H "$gateway_ip" -p "$s3_port" </dev/null >"$out/logs/s3.log" 2>&1 3>&- &
echo $! >"$state/s3.pid"
prom_port="$(free_port)"
cat >"$state/prometheus/prometheus.yml" <<EOF
global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: reco-node
    file_sd_configs: [{files: ['$state/prometheus/targets.json'], refresh_interval: 1s}]
EOF
setsid "$PROMETHEUS_BIN" --config.file="$state/prometheus/prometheus.yml" \
  --storage.tsdb.path="$state/prometheus/data" --web.listen-address="$gateway_ip:$prom_port" \
  </dev/null >"$out/logs/prometheus.log" 2>&1 3>&- &
echo $! >"$state/prometheus.pid"
export AWS_ENDPOINT="http://$gateway_ip:$s3_port" AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=reco-demo \
  AWS_SECRET_ACCESS_KEY=reco-demo AWS_REGION=us-east-1
for _ in $(seq 1 100); do curl -fsS "http://$gateway_ip:$prom_port/-/ready" >/dev/null 2>&1 && curl -fsS "$AWS_ENDPOINT" >/dev/null 2>&1 && break; sleep 0.3; done
curl -fsS -X PUT "$AWS_ENDPOINT/reco-demo" >/dev/null || die "cannot create the bucket (logs: $out/logs/s3.log)"
log "Prometheus at http://$gateway_ip:$prom_port, S3 at $AWS_ENDPOINT"

kubectl create namespace "$demo_ns" >/dev/null
kubectl -n "$demo_ns" create secret generic model-store \
  --from-literal=AWS_ENDPOINT="$AWS_ENDPOINT" --from-literal=AWS_ALLOW_HTTP=true \
  --from-literal=AWS_ACCESS_KEY_ID=reco-demo --from-literal=AWS_SECRET_ACCESS_KEY=reco-demo \
  --from-literal=AWS_REGION=us-east-1 >/dev/null

# --- 6. the demo -----------------------------------------------------------------
log "control plane, node, operator, Prometheus and S3 ready after $((SECONDS - t0)) s"
{
  printf 'export KUBECONFIG=%q\n' "$KUBECONFIG"
  for var in AWS_ENDPOINT AWS_ALLOW_HTTP AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION; do
    printf 'export %s=%q\n' "$var" "${!var}"
  done
  printf 'export RECO_DEMO_PROMETHEUS_URL=%q\n' "http://$gateway_ip:$prom_port"
  printf 'export RECO_DEMO_PROMETHEUS_PID=%q\n' "$(cat "$state/prometheus.pid")"
  printf 'export RECO_DEMO_NAMESPACE=%q RECO_DEMO_OPERATOR_NAMESPACE=%q\n' "$demo_ns" "$system_ns"
  printf 'export RECO_DEMO_NODE_PORT=%q RECO_DEMO_STORE=s3://reco-demo RECO_DEMO_CREDENTIALS=model-store\n' "$node_port"
} >"$state/env"
if [[ $mode == up ]]; then
  log "left running; stop with: scripts/demo-cluster.sh --down"
  cat "$state/env" >&3
  exit 0
fi
set +e
"$target_dir/reco" demo --cluster --out "$out" --namespace "$demo_ns" --store s3://reco-demo \
  --credentials-secret model-store --prometheus-url "http://$gateway_ip:$prom_port" \
  --gateway-node-port "$node_port" "$@"
rc=$?
set -e

# --- 7. what the cluster says ----------------------------------------------------
echo
kubectl -n "$demo_ns" get recommenderpipelines,modelversions -o wide
echo
kubectl -n "$demo_ns" get events --sort-by=.lastTimestamp | tail -n 25
kubectl -n "$demo_ns" get events --sort-by=.lastTimestamp >"$out/events.txt"
# Per container: CPU seconds (the sum over its restarts) and peak memory.
awk '{ if ($3 < last[$2]) used[$2] += last[$2]; last[$2] = $3; if ($4 > peak[$2]) peak[$2] = $4 }
     END { for (c in last) printf "%-45s cpu %7.1f s  peak memory %6.1f MiB\n", c, (used[c] + last[c]) / 1e9, peak[c] / 1048576 }' \
  "$out/logs/container-stats.log" | sort >"$out/containers.txt"
echo
echo "CPU time and peak memory of the pods (sampled every 5 s; $out/containers.txt):"
cat "$out/containers.txt"
log "agent log: $out/logs/reco-node.log"
log "done in $((SECONDS - t0)) s (exit $rc)"
exit "$rc"

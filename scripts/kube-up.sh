#!/usr/bin/env bash
# Start a local Kubernetes control plane of genuine API servers (built from
# Debian sources by scripts/ensure-kube-apiserver.sh) on 127.0.0.1, and print
# the environment that points kubectl and the operator at it:
#
#     eval "$(scripts/kube-up.sh [--no-crds] [STATE_DIR])"
#     ...                                  # kubectl, cargo test, the operator
#     scripts/kube-down.sh [--purge] [STATE_DIR]
#
# What runs (each a background process whose PID is in STATE_DIR/pids):
#   1. etcd 3.5;
#   2. kube-apiserver 1.20.2: token auth, RBAC, a front-proxy CA for
#      aggregation, service-account keys; core types (ConfigMaps, Secrets,
#      Services, Deployments, StatefulSets, ...);
#   3. apiextensions-apiserver 1.36 (CEL validation, defaulting, SSA,
#      /status), registered behind kube-apiserver: kube-apiserver's
#      APIService v1.apiextensions.k8s.io is pointed at it, so CRDs created
#      through the kubeconfig live on the 1.36 server, and each served
#      group/version of the CRDs gets an APIService to it too. One endpoint
#      then serves core types and custom resources. crds/*.yaml are applied;
##   4. kube-controller-manager 1.20.2 with only the controllers that make sense
#      without nodes ($RECO_KUBE_CONTROLLERS, default: garbage collector,
#      namespace deletion, service accounts and their tokens, ClusterRole
#      aggregation). No scheduler, no kubelet, no kube-proxy; the Deployment,
#      ReplicaSet and StatefulSet controllers are off on purpose, so that the
#      workload status is left to whoever runs the pods (a node agent).
# Certificates, tokens and kubeconfigs are throw-away, made with openssl in
# STATE_DIR (default: a new /tmp/reco-kube-XXXXXX; or $RECO_KUBE_STATE). Run
# again on a running STATE_DIR: applies the CRDs again and registers the
# group/version of every CRD (also ones created since), then prints the same
# lines (1-2 s). Run on a stopped one: starts it again with its data.
#
# stdout carries only `export` lines (KUBECONFIG, RECO_KUBE_STATE,
# RECO_KUBE_PIDS); progress goes to stderr. Logs are in
# STATE_DIR/logs. About 10-20 s to ready once the servers are built (the first
# run builds them: see scripts/ensure-kube-apiserver.sh, 15-25 min).
#
# Options / environment:
#   --no-crds               do not create crds/*.yaml (APIServices for
#                           $RECO_KUBE_API_VERSIONS are still created, and
#                           become Available once the CRDs exist)
#   RECO_KUBE_CRDS          folder of CRD manifests (default: <repo>/crds)
#   RECO_KUBE_API_VERSIONS  group/versions to register when no CRDs are
#                           created (default: reco.seed.dev/v1alpha1)
#   RECO_KUBE_CONTROLLERS   kube-controller-manager --controllers
#   RECO_KUBE_TIMEOUT       seconds to wait for each step (default 120)
set -euo pipefail

log() { printf '[kube-up] %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"

install_crds=1
state=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-crds) install_crds=0 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
      exit 0
      ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) state="$1" ;;
  esac
  shift
done
state="${state:-${RECO_KUBE_STATE:-}}"
crd_dir="${RECO_KUBE_CRDS:-$repo/crds}"
api_versions="${RECO_KUBE_API_VERSIONS:-reco.seed.dev/v1alpha1}"
controllers="${RECO_KUBE_CONTROLLERS:-garbagecollector,namespace,serviceaccount,serviceaccount-token,clusterrole-aggregation}"
timeout="${RECO_KUBE_TIMEOUT:-120}"

t0=$SECONDS
eval "$("$here/ensure-kube-apiserver.sh")"
eval "$("$here/ensure-k8s-tools.sh")"
command -v openssl >/dev/null || die "openssl is required"
command -v curl >/dev/null || die "curl is required"

if [[ -z "$state" ]]; then
  state="$(mktemp -d /tmp/reco-kube-XXXXXX)"
fi
mkdir -p "$state"
state="$(cd "$state" && pwd)"
mkdir -p "$state/pki" "$state/logs" "$state/etcd" "$state/run"
chmod 700 "$state"
kubeconfig="$state/kubeconfig"
pids="$state/pids"

print_env() {
  printf 'export KUBECONFIG=%q\n' "$kubeconfig"
  printf 'export RECO_KUBE_STATE=%q\n' "$state"
  printf 'export RECO_KUBE_PIDS=%q\n' "$pids"
}

# alive NAME: the process recorded for NAME runs, and is ours (its command
# line names this state folder).
alive() {
  local pid
  pid="$(awk -v n="$1" '$1 == n { print $2 }' "$pids" 2>/dev/null)"
  [[ -n "$pid" ]] && grep -qF "$state" "/proc/$pid/cmdline" 2>/dev/null
}

# On failure, stop whatever was started and show where the logs are.
started=0
on_exit() {
  local rc=$?
  if [[ $rc -ne 0 && $started -eq 1 ]]; then
    log "start failed; logs in $state/logs; stopping what was started"
    "$here/kube-down.sh" "$state" >&2 || true
  fi
}
trap on_exit EXIT

running=0
if [[ -f "$pids" && -f "$state/ports.env" ]] && alive etcd && alive kube-apiserver &&
  alive apiextensions-apiserver && alive kube-controller-manager; then
  running=1
fi

# --- ports ------------------------------------------------------------------------
# Reuse the ports of an earlier start when they are free, else take new ones.
port_free() { ! (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports_ok=0
if [[ -f "$state/ports.env" ]]; then
  # shellcheck disable=SC1091
  source "$state/ports.env"
  ports_ok=1
  for p in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$APIEXT_PORT" "$KCM_PORT"; do
    [[ $running -eq 1 ]] || port_free "$p" || ports_ok=0
  done
fi
if [[ $ports_ok -eq 0 ]]; then
  read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT APIEXT_PORT KCM_PORT < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
  )
  printf 'ETCD_PORT=%s\nETCD_PEER_PORT=%s\nAPISERVER_PORT=%s\nAPIEXT_PORT=%s\nKCM_PORT=%s\n' \
    "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$APIEXT_PORT" "$KCM_PORT" >"$state/ports.env"
fi

# --- certificates, keys, tokens (once per state folder) ---------------------------
pki="$state/pki"
apiext_svc_ns=kube-system
apiext_svc=reco-apiextensions-apiserver
if [[ ! -f "$pki/.complete" ]]; then
  log "making throw-away certificates in $pki"
  (
    cd "$pki"
    exec 2>>"$state/logs/openssl.log"
    newca() { # NAME CN
      openssl req -x509 -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.crt" -days 3650 \
        -subj "/CN=$2" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" >/dev/null
    }
    newcert() { # NAME CA CN O EXT
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$3${4:+/O=$4}" >/dev/null
      printf '%s\n' "$5" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -days 3650 \
        -extfile "$1.ext" -out "$1.crt" >/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    newca ca reco-kube-ca
    newca front-proxy-ca reco-front-proxy-ca
    newcert kube-apiserver ca kube-apiserver "" \
      "$(printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")"
    newcert apiextensions-apiserver ca apiextensions-apiserver "" \
      "$(printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:$apiext_svc.$apiext_svc_ns.svc,DNS:$apiext_svc.$apiext_svc_ns.svc.cluster.local")"
    newcert front-proxy-client front-proxy-ca front-proxy-client "" \
      "$(printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=clientAuth")"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    # tokens: admin (system:masters), the controller manager (its RBAC
    # bootstrap user), the apiextensions-apiserver (system:masters: it needs
    # token/access reviews, namespaces, webhook configurations, leases).
    tok() { openssl rand -hex 24; }
    {
      echo "$(tok),admin,admin-uid,\"system:masters\""
      echo "$(tok),system:kube-controller-manager,kcm-uid,"
      echo "$(tok),system:apiextensions-apiserver,apiext-uid,\"system:masters\""
    } >tokens.csv
    chmod 600 ./*.key tokens.csv
    touch .complete
  )
fi
token_of() { awk -F, -v u="$1" '$2 == u { print $1 }' "$pki/tokens.csv"; }

# kubeconfig FILE: one cluster per server, contexts `reco` (kube-apiserver,
# the default) and `apiextensions` (apiextensions-apiserver, for CRDs), for USER.
write_kubeconfig() {
  local file="$1" user="$2" ca
  ca="$(base64 -w0 "$pki/ca.crt")"
  cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: reco
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $ca
- name: apiextensions
  cluster:
    server: https://127.0.0.1:$APIEXT_PORT
    certificate-authority-data: $ca
users:
- name: $user
  user:
    token: $(token_of "$user")
contexts:
- name: reco
  context: {cluster: reco, user: $user}
- name: apiextensions
  context: {cluster: apiextensions, user: $user}
current-context: reco
EOF
  chmod 600 "$file.tmp"
  mv "$file.tmp" "$file"
}
write_kubeconfig "$kubeconfig" admin
write_kubeconfig "$state/run/kube-controller-manager.kubeconfig" system:kube-controller-manager
write_kubeconfig "$state/run/apiextensions-apiserver.kubeconfig" system:apiextensions-apiserver

# --- start ------------------------------------------------------------------------
# start NAME CMD...: in its own session, output to logs/NAME.log, detached
# from the caller's stdout (so `eval "$(kube-up.sh)"` returns).
start() {
  local name="$1"
  shift
  setsid "$@" </dev/null >>"$state/logs/$name.log" 2>&1 &
  echo "$name $!" >>"$pids"
  started=1
}
# wait_for WHAT CMD...: retries CMD every 0.2 s for $timeout s.
wait_for() {
  local what="$1" deadline=$((SECONDS + timeout)) name
  shift
  until "$@" >/dev/null 2>&1; do
    while read -r name _; do
      alive "$name" || die "$name exited while waiting for $what; end of $state/logs/$name.log:
$(tail -n 30 "$state/logs/$name.log")"
    done <"$pids"
    ((SECONDS < deadline)) || die "gave up waiting for $what after ${timeout} s (logs: $state/logs)"
    sleep 0.2
  done
  log "$what: ready ($((SECONDS - t1)) s)"
}
k() { kubectl --kubeconfig "$kubeconfig" "$@"; }
kx() { kubectl --kubeconfig "$kubeconfig" --context apiextensions "$@"; }

# --- CRDs on the 1.36 server, registered behind kube-apiserver --------------------
ca_bundle="$(base64 -w0 "$pki/ca.crt")"
svc_ref="{\"namespace\":\"$apiext_svc_ns\",\"name\":\"$apiext_svc\",\"port\":$APIEXT_PORT}"

# Route apiextensions.k8s.io/v1 through kube-apiserver to the 1.36 server: the
# built-in APIService becomes a proxy to it (without its automanaged label, so
# that kube-apiserver leaves it so across restarts). CRDs created through the
# kubeconfig then live on the 1.36 server, with CEL. The Service is an
# ExternalName for localhost: nothing routes ClusterIPs here.
route_apiextensions() {
  cat >"$state/run/apiextensions-service.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: $apiext_svc, namespace: $apiext_svc_ns}
spec: {type: ExternalName, externalName: localhost}
EOF
  k apply -f "$state/run/apiextensions-service.yaml" >&2
  log "routing apiextensions.k8s.io/v1 (CRDs) to apiextensions-apiserver"
  # The annotation makes the availability check run now, not at its next retry.
  k patch apiservice v1.apiextensions.k8s.io --type merge -p \
    "{\"metadata\":{\"annotations\":{\"reco.seed.dev/kube-up\":\"$(date -u +%FT%T.%NZ)\"},\"labels\":{\"kube-aggregator.kubernetes.io/automanaged\":null}},\"spec\":{\"service\":$svc_ref,\"caBundle\":\"$ca_bundle\",\"insecureSkipTLSVerify\":false}}" >&2
  # Reason Passed (not Local): the proxy to the 1.36 server answered.
  wait_for "APIService v1.apiextensions.k8s.io Available" \
    k wait --for 'jsonpath={.status.conditions[?(@.type=="Available")].reason}=Passed' \
    apiservice/v1.apiextensions.k8s.io --timeout 5s
}

# Apply crds/ (unless --no-crds), then give every served group/version of the
# CRDs on the 1.36 server an APIService to it. kube-apiserver 1.20 also sees
# these CRDs (its own CRD informers go through the same route) and registers a
# *local* APIService for any group that has none, which it would then serve
# itself without CEL: the automanaged label is removed so it keeps ours.
sync_crds() {
  local gv group version priority=100 versions crd_groups
  if [[ $install_crds -eq 1 ]]; then
    log "applying the CRDs of $crd_dir (to apiextensions-apiserver)"
    # --validate=false: kubectl's client-side check would use kube-apiserver
    # 1.20's schema, which lacks x-kubernetes-validations; the 1.36 server
    # validates. Server-side apply: no size-limited last-applied annotation.
    k apply --server-side --force-conflicts --field-manager reco-kube-up --validate=false -f "$crd_dir" >&2
    wait_for "CRDs Established" k wait --for condition=Established crd --all --timeout 5s
  fi
  # shellcheck disable=SC2016,SC2086 # a Go template; the list splits on spaces
  versions="$( (k get crd -o go-template='{{range .items}}{{$g := .spec.group}}{{range .spec.versions}}{{if .served}}{{$g}}/{{.name}}{{"\n"}}{{end}}{{end}}{{end}}'
    [[ $install_crds -eq 1 ]] || printf '%s\n' $api_versions) | sort -u)"
  log "registering ${versions//$'\n'/ } behind kube-apiserver"
  for gv in $versions; do
    group="${gv%/*}" version="${gv#*/}"
    k label apiservice "$version.$group" kube-aggregator.kubernetes.io/automanaged- >/dev/null 2>&1 || true
    cat <<EOF
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: $version.$group
  annotations: {reco.seed.dev/kube-up: "$(date -u +%FT%T.%NZ)"}
spec:
  group: $group
  version: $version
  groupPriorityMinimum: 1000
  versionPriority: $priority
  service: $svc_ref
  caBundle: $ca_bundle
EOF
    priority=$((priority - 1))
  done >"$state/run/apiservices.yaml"
  # Client-side apply: kube-apiserver 1.20 panics on server-side apply of APIServices.
  k apply -f "$state/run/apiservices.yaml" >&2
  crd_groups=" $(k get crd -o jsonpath='{.items[*].spec.group}') "
  for gv in $versions; do
    if [[ "$crd_groups" == *" ${gv%/*} "* ]]; then
      wait_for "APIService ${gv#*/}.${gv%/*} Available" \
        k wait --for 'jsonpath={.status.conditions[?(@.type=="Available")].reason}=Passed' \
        "apiservice/${gv#*/}.${gv%/*}" --timeout 5s
    else
      log "APIService ${gv#*/}.${gv%/*} becomes Available (within ~30 s) once its CRD exists"
    fi
  done
}

t1=$SECONDS
if [[ $running -eq 1 ]] && k get --raw /readyz >/dev/null 2>&1; then
  log "already running in $state"
  sync_crds
  print_env
  exit 0
fi
if [[ -f "$pids" ]]; then
  log "stopping what is left of an earlier start in $state"
  "$here/kube-down.sh" "$state" >&2
fi

: >"$pids"
log "starting etcd on 127.0.0.1:$ETCD_PORT"
start etcd "$ETCD_BIN" --name reco --data-dir "$state/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "reco=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level warn
wait_for etcd curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

log "starting kube-apiserver 1.20 on https://127.0.0.1:$APISERVER_PORT"
start kube-apiserver "$KUBE_APISERVER_BIN" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" --insecure-port 0 \
  --cert-dir "$state/run" \
  --tls-cert-file "$pki/kube-apiserver.crt" --tls-private-key-file "$pki/kube-apiserver.key" \
  --client-ca-file "$pki/ca.crt" --token-auth-file "$pki/tokens.csv" \
  --authorization-mode RBAC --anonymous-auth=false \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range 10.0.0.0/24 --endpoint-reconciler-type none --allow-privileged=true \
  --requestheader-client-ca-file "$pki/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
  --profiling=false --v 1
# Serving is enough here: once the CRD API is routed to the 1.36 server (a
# restart), kube-apiserver is only ready when that server answers.
wait_for "kube-apiserver serving" k get --raw /version

log "starting apiextensions-apiserver 1.36 on https://127.0.0.1:$APIEXT_PORT"
start apiextensions-apiserver "$APIEXTENSIONS_APISERVER_BIN" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" --etcd-prefix /reco-apiextensions \
  --bind-address 127.0.0.1 --secure-port "$APIEXT_PORT" --cert-dir "$state/run" \
  --tls-cert-file "$pki/apiextensions-apiserver.crt" --tls-private-key-file "$pki/apiextensions-apiserver.key" \
  --kubeconfig "$state/run/apiextensions-apiserver.kubeconfig" \
  --authentication-kubeconfig "$state/run/apiextensions-apiserver.kubeconfig" \
  --authorization-kubeconfig "$state/run/apiextensions-apiserver.kubeconfig" \
  --disable-admission-plugins ValidatingAdmissionPolicy,MutatingAdmissionPolicy \
  --enable-priority-and-fairness=false --profiling=false --v 1
wait_for "apiextensions-apiserver /readyz" kx get --raw /readyz
wait_for "kube-apiserver /readyz" k get --raw /readyz

route_apiextensions
sync_crds

# After the CRDs, so that the garbage collector knows their kinds at once.
log "starting kube-controller-manager 1.20 ($controllers)"
start kube-controller-manager "$KUBE_CONTROLLER_MANAGER_BIN" \
  --kubeconfig "$state/run/kube-controller-manager.kubeconfig" \
  --authentication-kubeconfig "$state/run/kube-controller-manager.kubeconfig" \
  --authorization-kubeconfig "$state/run/kube-controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --port 0 --cert-dir "$state/run" \
  --controllers "$controllers" --use-service-account-credentials \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --leader-elect=false --profiling=false --v 1
wait_for "kube-controller-manager /healthz" curl -fsSk "https://127.0.0.1:$KCM_PORT/healthz"

log "control plane ready in $((SECONDS - t1)) s ($((SECONDS - t0)) s with the checks of the binaries; state: $state)"
log "  kubectl get --raw /apis/reco.seed.dev/v1alpha1   # custom resources through kube-apiserver"
log "  kubectl get crd                                   # served by apiextensions-apiserver 1.36"
log "  scripts/kube-down.sh $state"
print_env

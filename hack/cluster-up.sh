#!/usr/bin/env bash
# Start a real, local Kubernetes control plane without containers, in the spirit
# of controller-runtime's envtest, plus what envtest lacks: controllers (real
# Deployments, ReplicaSets, garbage collection), a scheduler, and kwok fake
# nodes so that pods get scheduled and reach Running.
#
#   etcd -> kube-apiserver -> kube-controller-manager, kube-scheduler -> kwok
#
# Everything listens on 127.0.0.1 on free ports, so several clusters (a
# developer's `make cluster-up` and a test run) can coexist.
#
# Usage: hack/cluster-up.sh                      start (no-op if already running)
#        hack/cluster-up.sh --restart-apiserver  stop and start kube-apiserver only
# Env:   KUBECAST_CLUSTER_DIR  state dir (default <repo>/.cluster)
#        KUBECAST_BIN_DIR      use these binaries instead of hack/build-binaries.sh's
#        KUBECAST_KWOK_NODES   number of fake nodes (default 2)
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/cluster-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/cluster-common.sh"

MODE="up"
case "${1:-}" in
  "") ;;
  --restart-apiserver) MODE="restart-apiserver" ;;
  *) echo "usage: $0 [--restart-apiserver]" >&2; exit 2 ;;
esac

SERVICE_CIDR="10.0.0.0/24"          # ClusterIPs; 10.0.0.1 is the `kubernetes` Service
# kwok hands out pod IPs from here. A loopback range on purpose: hack/pod_runner.py
# runs the pods' processes bound to these addresses, and the operator polls them,
# so every byte stays on this host (nothing may reach private ranges here).
POD_CIDR="127.244.0.1/16"
KWOK_NODES="${KUBECAST_KWOK_NODES:-2}"
PKI="$CLUSTER_DIR/pki"
LOGS="$CLUSTER_DIR/logs"
KCFG="$CLUSTER_DIR/kubeconfigs"
KUBECONFIG_ADMIN="$CLUSTER_DIR/kubeconfig"

# ------------------------------------------------------------------ helpers

# fail COMPONENT MESSAGE: stop whatever we started, show why, exit non-zero.
# The cluster dir (with logs) is kept for inspection; cluster-down removes it.
fail() {
  local name="$1"; shift
  echo >&2
  say "FAILED: $*"
  if [ -f "$LOGS/$name.log" ]; then
    echo "----- last 40 lines of $LOGS/$name.log -----" >&2
    tail -n 40 "$LOGS/$name.log" >&2
    echo "----- end of $name.log -----" >&2
  fi
  local i
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do stop_component "${COMPONENTS[$i]}" 5; done
  exit 1
}

# free_port: a random unused loopback TCP port. Not reserved, so a race with
# another process is possible; a component that then fails to bind makes
# cluster-up fail loudly rather than silently share a port.
# (Sets the variable named $1 rather than printing: a $(...) subshell could
# not remember which ports it already handed out.)
declare -A TAKEN=()
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    [ -z "${TAKEN[$p]:-}" ] || continue
    # A successful connect means something is listening there.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      TAKEN[$p]=1; printf -v "$1" '%s' "$p"; return
    fi
  done
}

# start NAME ARGS...: run detached (own session, so a Ctrl-C in the terminal
# that ran `make cluster-up` does not kill the cluster), log to logs/NAME.log,
# remember pid and command line.
start() {
  local name="$1"; shift
  local bin="$BIN_DIR/$name"
  [ -x "$bin" ] || fail "$name" "binary $bin missing (run hack/build-binaries.sh)"
  printf '%q ' "$bin" "$@" > "$CLUSTER_DIR/$name.cmd"
  echo "=== $(date -u +%FT%TZ) starting $name" >> "$LOGS/$name.log"
  setsid "$bin" "$@" >> "$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$CLUSTER_DIR/$name.pid"
}

# wait_for NAME TIMEOUT_S DESCRIPTION CMD...: poll CMD until it succeeds; fail
# early (with NAME's log) if NAME's process dies meanwhile.
wait_for() {
  local name="$1" timeout="$2" what="$3"; shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" > /dev/null 2>&1; do
    alive "$name" || fail "$name" "$name exited while waiting for $what"
    [ "$SECONDS" -lt "$deadline" ] || fail "$name" "timed out after ${timeout}s waiting for $what"
    sleep 0.2
  done
}

kubectl() { "$BIN_DIR/kubectl" --kubeconfig="$KUBECONFIG_ADMIN" "$@"; }

b64() { base64 -w0 < "$1"; }

# write_kubeconfig FILE USER_CERT_BASENAME
write_kubeconfig() {
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kubecast-local
  cluster:
    server: https://127.0.0.1:${APISERVER_PORT}
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$PKI/$2.crt")
    client-key-data: $(b64 "$PKI/$2.key")
contexts:
- name: kubecast-local
  context:
    cluster: kubecast-local
    user: $2
current-context: kubecast-local
EOF
  chmod 600 "$1"
}

# ------------------------------------------------------------------ pki
# client_cert NAME CN [O]: a client certificate signed by the throwaway CA. The
# API server takes the user from CN and the groups from O.
client_cert() {
  local name="$1" cn="$2" org="${3:-}" subj="/CN=$2"
  [ -n "$org" ] && subj="/O=$org/CN=$cn"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 365 -out "$PKI/$name.crt" \
    -extfile <(printf 'keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n') 2>/dev/null
}

make_pki() {
  mkdir -p "$PKI"
  # EC keys: generating them is instant, unlike RSA, and every component accepts them.
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 3650 -subj "/CN=kubecast-local-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  # Serving cert: valid for how clients reach the API server locally and for the
  # in-cluster names/ClusterIP of the `kubernetes` Service.
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI/apiserver.key" -subj "/CN=kube-apiserver" -out "$PKI/apiserver.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 365 -out "$PKI/apiserver.crt" -extfile <(cat <<EOF
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
) 2>/dev/null
  # system:masters bypasses RBAC: for the developer, the tests and kwok.
  client_cert admin kubecast-admin system:masters
  # The built-in RBAC policy grants these two users exactly what they need, so
  # they run like on a real cluster and RBAC mistakes are not hidden by admin.
  client_cert kube-controller-manager system:kube-controller-manager
  client_cert kube-scheduler system:kube-scheduler
  # Service-account tokens: apiserver signs with the private key and verifies
  # with the public one; controller-manager signs the legacy token Secrets.
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  rm -f "$PKI"/*.csr "$PKI"/*.srl
  chmod 600 "$PKI"/*.key
}

# ------------------------------------------------------------------ components
start_etcd() {
  # --unsafe-no-fsync: this data is disposable; fsync per write is what makes
  # etcd slow on CI disks. Peer URL on a free port too: the default 2380 would
  # collide between two local clusters.
  start etcd \
    --name=kubecast \
    --data-dir="$CLUSTER_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="kubecast=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync \
    --log-level=warn
  wait_for etcd 30 "etcd /health" \
    bash -c "exec 3<>/dev/tcp/127.0.0.1/$ETCD_PORT && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 && grep -q '\"health\":\"true\"' <&3"
}

start_apiserver() {
  # --endpoint-reconciler-type=none: the `kubernetes` Service would get the
  #   advertise address as endpoint, and a loopback one is invalid; the reconciler
  #   then logs errors forever.
  #   Nothing runs in-cluster that needs that Service's endpoints.
  # --shutdown-watch-termination-grace-period: on SIGTERM, end open watches
  #   within 3 s. By default shutdown waits for them (up to 60 s), so
  #   --restart-apiserver would take that long with the controllers connected.
  start kube-apiserver \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$APISERVER_PORT" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --cert-dir="$PKI" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --allow-privileged=true \
    --endpoint-reconciler-type=none \
    --shutdown-watch-termination-grace-period=3s \
    --profiling=false
  # /readyz covers etcd, RBAC bootstrap roles and the post-start hooks.
  wait_for kube-apiserver 90 "kube-apiserver /readyz" kubectl get --raw /readyz
}

start_controller_manager() {
  local kc="$KCFG/kube-controller-manager.kubeconfig"
  # --controllers=*: all default controllers (deployment, replicaset, garbage
  #   collector, namespace, serviceaccount + token, endpoints...).
  # --use-service-account-credentials: each controller acts as its own service
  #   account with the built-in RBAC roles, as on kubeadm clusters.
  # --service-account-private-key-file / --root-ca-file: sign the token Secrets
  #   and publish the kube-root-ca.crt ConfigMap in every namespace.
  # --leader-elect=false: a single instance; a restart need not wait for a lease.
  # --secure-port on a free port: the default 10257 would collide between clusters.
  start kube-controller-manager \
    --kubeconfig="$kc" \
    --authentication-kubeconfig="$kc" \
    --authorization-kubeconfig="$kc" \
    --bind-address=127.0.0.1 \
    --secure-port="$KCM_PORT" \
    --controllers='*' \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" \
    --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --allocate-node-cidrs=false \
    --leader-elect=false
}

start_scheduler() {
  local kc="$KCFG/kube-scheduler.kubeconfig"
  start kube-scheduler \
    --kubeconfig="$kc" \
    --authentication-kubeconfig="$kc" \
    --authorization-kubeconfig="$kc" \
    --bind-address=127.0.0.1 \
    --secure-port="$SCHEDULER_PORT" \
    --leader-elect=false
}

start_kwok() {
  # kwok plays kubelet for the Nodes annotated kwok.x-k8s.io/node=fake only
  # (never for a real node): heartbeats, and pod phase -> Running with a fake
  # pod IP from POD_CIDR. --config: the Stages that define that behaviour (also
  # keeps a developer's ~/.kwok/kwok.yaml out of it). --server-address: its
  # health/metrics on a free port.
  start kwok \
    --kubeconfig="$KUBECONFIG_ADMIN" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --manage-nodes-with-label-selector= \
    --config="$BIN_DIR/kwok-stages.yaml" \
    --cidr="$POD_CIDR" \
    --node-ip=127.0.0.1 \
    --node-lease-duration-seconds=40 \
    --server-address="127.0.0.1:$KWOK_PORT"
}

create_fake_nodes() {
  local i
  for ((i = 0; i < KWOK_NODES; i++)); do
    # No taint (unlike kwok's docs): these are the only nodes, so every pod
    # (operator-made workers included) schedules here without tolerations.
    kubectl apply -f - > /dev/null <<EOF || fail kube-apiserver "could not create Node kwok-node-$i"
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    type: kwok
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110", ephemeral-storage: 1Ti}
  capacity: {cpu: "32", memory: 256Gi, pods: "110", ephemeral-storage: 1Ti}
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: fake
    kubeProxyVersion: fake
EOF
  done
}

write_env() {
  cat > "$CLUSTER_DIR/cluster.env" <<EOF
# Written by hack/cluster-up.sh; describes the running local cluster.
KUBECONFIG=$KUBECONFIG_ADMIN
KUBECAST_BIN_DIR=$BIN_DIR
APISERVER_URL=https://127.0.0.1:$APISERVER_PORT
APISERVER_PORT=$APISERVER_PORT
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
KCM_PORT=$KCM_PORT
SCHEDULER_PORT=$SCHEDULER_PORT
KWOK_PORT=$KWOK_PORT
EOF
}

# ------------------------------------------------------------------ main
if [ "$MODE" = "restart-apiserver" ]; then
  [ -f "$CLUSTER_DIR/cluster.env" ] || { say "no cluster in $CLUSTER_DIR"; exit 1; }
  # shellcheck disable=SC1091
  source "$CLUSTER_DIR/cluster.env"
  BIN_DIR="$KUBECAST_BIN_DIR"
  stop_component kube-apiserver
  start_apiserver
  say "kube-apiserver restarted (pid $(cat "$CLUSTER_DIR/kube-apiserver.pid"))"
  exit 0
fi

BIN_DIR="${KUBECAST_BIN_DIR:-$("$REPO_ROOT/hack/build-binaries.sh")}"

# Idempotent: a healthy running cluster is left alone; leftovers of a crashed or
# half-started one are cleaned up first.
all_alive=1
for c in "${COMPONENTS[@]}"; do alive "$c" || all_alive=0; done
if [ "$all_alive" = 1 ] && "$BIN_DIR/kubectl" --kubeconfig="$KUBECONFIG_ADMIN" \
     --request-timeout=5s get --raw /readyz > /dev/null 2>&1; then
  say "already running; KUBECONFIG=$KUBECONFIG_ADMIN"
  echo "$KUBECONFIG_ADMIN"
  exit 0
fi
if [ -e "$CLUSTER_DIR" ]; then
  say "cleaning up leftovers in $CLUSTER_DIR"
  "$REPO_ROOT/hack/cluster-down.sh"
fi

mkdir -p "$CLUSTER_DIR" "$LOGS" "$KCFG"
touch "$MARKER"
for v in ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT KWOK_PORT; do
  free_port "$v"
done
write_env

t0=$SECONDS
make_pki
write_kubeconfig "$KUBECONFIG_ADMIN" admin
write_kubeconfig "$KCFG/kube-controller-manager.kubeconfig" kube-controller-manager
write_kubeconfig "$KCFG/kube-scheduler.kubeconfig" kube-scheduler

say "starting etcd on 127.0.0.1:$ETCD_PORT"
start_etcd
say "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT"
start_apiserver
say "starting kube-controller-manager, kube-scheduler, kwok"
start_controller_manager
start_scheduler
start_kwok
create_fake_nodes

# Ready means: usable the way a test or the operator will use it.
wait_for kube-controller-manager 60 "ServiceAccount default/default" \
  kubectl -n default get serviceaccount default
for ((i = 0; i < KWOK_NODES; i++)); do
  wait_for kwok 60 "Node kwok-node-$i Ready" \
    bash -c "'$BIN_DIR/kubectl' --kubeconfig='$KUBECONFIG_ADMIN' get node kwok-node-$i \
      -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
done
alive kube-scheduler || fail kube-scheduler "kube-scheduler exited"

say "up in $((SECONDS - t0))s; export KUBECONFIG=$KUBECONFIG_ADMIN"
echo "$KUBECONFIG_ADMIN"

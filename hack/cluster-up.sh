#!/usr/bin/env bash
# Start a real, local Kubernetes cluster from binaries built here, in one
# network namespace of its own:
#
#   etcd -> kube-apiserver -> kube-controller-manager, kube-scheduler
#        -> kwok fake nodes (for scale runs; tainted, so real work avoids them)
#        -> one real node: containerd + runc, the CNI bridge, kubelet,
#           kube-proxy (iptables), CoreDNS, and kube-router's network policy
#           controller (the CNI bridge does not enforce NetworkPolicy)
#
# Every private-range address of the cluster (the node's, the pods', the
# bridge's, the ClusterIPs) exists only inside that namespace, and so do its
# iptables rules; they vanish with it. The host reaches in through loopback
# only: hack/tunnel.py forwards 127.0.0.1:<port> to the API server, and gives
# every LoadBalancer Service a loopback address (127.77.x.y) of its own.
#
# Usage: hack/cluster-up.sh                      start (no-op if already running)
#        hack/cluster-up.sh --restart-apiserver  stop and start kube-apiserver only
#        hack/cluster-up.sh --load-images        (re)import the images `make images` built
# Env:   KUBECAST_CLUSTER_DIR  state dir (default <repo>/.cluster)
#        KUBECAST_BIN_DIR      use these binaries instead of hack/build-binaries.sh's
#        KUBECAST_KWOK_NODES   number of fake nodes (default 2)
#        KUBECAST_REAL_NODE    1 (default): run the real node; 0: control plane and kwok only
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/cluster-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/cluster-common.sh"

MODE="up"
case "${1:-}" in
  "") ;;
  --restart-apiserver) MODE="restart-apiserver" ;;
  --load-images) MODE="load-images" ;;
  *) echo "usage: $0 [--restart-apiserver|--load-images]" >&2; exit 2 ;;
esac

KWOK_NODES="${KUBECAST_KWOK_NODES:-2}"
REAL_NODE="${KUBECAST_REAL_NODE:-1}"
NODE_NAME="kubecast-node"
PKI="$CLUSTER_DIR/pki"
LOGS="$CLUSTER_DIR/logs"
KCFG="$CLUSTER_DIR/kubeconfigs"
NODE_DIR="$CLUSTER_DIR/node"
KUBECONFIG_ADMIN="$CLUSTER_DIR/kubeconfig"
KUBECONFIG_NETNS="$CLUSTER_DIR/kubeconfig.netns"
CONTAINERD_SOCK="$NODE_DIR/containerd/containerd.sock"
PYTHON="${KUBECAST_PYTHON:-$REPO_ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"

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

# start NAME ARGS...: run $BIN_DIR/NAME detached inside the cluster's network
# namespace (own session, so a Ctrl-C in the terminal that ran `make
# cluster-up` does not kill the cluster), log to logs/NAME.log, remember pid
# and command line. START_BIN overrides the binary (a system one, a script).
start() {
  local name="$1"; shift
  local bin="${START_BIN:-$BIN_DIR/$name}"
  [ -x "$bin" ] || fail "$name" "binary $bin missing (run hack/build-binaries.sh)"
  printf '%q ' nsenter --net="$NETNS_PATH" -- "$bin" "$@" > "$CLUSTER_DIR/$name.cmd"
  echo "=== $(date -u +%FT%TZ) starting $name" >> "$LOGS/$name.log"
  setsid nsenter --net="$NETNS_PATH" -- "$bin" "$@" >> "$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$CLUSTER_DIR/$name.pid"
}

# start_host NAME ARGS...: run hack/NAME.py detached in the host's own
# namespace. For the two helpers that must live there: the tunnel listens on
# the host's loopback (and dials out from threads that entered the cluster's
# namespace), and local_volumes makes directories on the node's filesystem.
start_host() {
  local name="$1"; shift
  printf '%q ' "$PYTHON" "$REPO_ROOT/hack/$name.py" "$@" > "$CLUSTER_DIR/$name.cmd"
  echo "=== $(date -u +%FT%TZ) starting $name" >> "$LOGS/$name.log"
  setsid "$PYTHON" "$REPO_ROOT/hack/$name.py" "$@" >> "$LOGS/$name.log" 2>&1 < /dev/null &
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

# kubectl from the host, through the loopback tunnel (once it runs);
# kubectl_in from inside the namespace, straight to the API server.
kubectl() { "$BIN_DIR/kubectl" --kubeconfig="$KUBECONFIG_ADMIN" "$@"; }
kubectl_in() { in_netns "$BIN_DIR/kubectl" --kubeconfig="$KUBECONFIG_NETNS" "$@"; }

b64() { base64 -w0 < "$1"; }

# write_kubeconfig FILE USER_CERT_BASENAME [SERVER]
write_kubeconfig() {
  cat > "$1" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: kubecast-local
  cluster:
    server: ${3:-https://127.0.0.1:$APISERVER_NETNS_PORT}
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
KCFG
  chmod 600 "$1"
}

# ------------------------------------------------------------------ pki
# cert NAME CN O EXT: a certificate signed by the throwaway CA. The API server
# takes the user from CN and the groups from O.
cert() {
  local name="$1" cn="$2" org="$3" ext="$4" subj="/CN=$2"
  [ -n "$org" ] && subj="/O=$org/CN=$cn"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 365 -out "$PKI/$name.crt" -extfile <(printf '%b' "$ext") 2>/dev/null
}
client_cert() {
  cert "$1" "$2" "${3:-}" 'keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n'
}

make_pki() {
  mkdir -p "$PKI"
  # EC keys: generating them is instant, unlike RSA, and every component accepts them.
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 3650 -subj "/CN=kubecast-local-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  # Serving cert: how the host reaches the API server (the loopback tunnel),
  # how the node does (its own address), and the `kubernetes` Service's names.
  local sans="IP:127.0.0.1,IP:$NODE_IP,IP:$KUBERNETES_SVC_IP,DNS:localhost,DNS:kubernetes"
  sans+=",DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver kube-apiserver "" \
    "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=$sans\n"
  cert kubelet-serving "system:node:$NODE_NAME" system:nodes \
    "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:$NODE_IP,DNS:$NODE_NAME\n"
  # system:masters bypasses RBAC: for the developer, the tests, kwok, CoreDNS
  # and the API server's own calls to the kubelet (logs, exec, port-forward).
  client_cert admin kubecast-admin system:masters
  client_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  # The built-in RBAC policy grants these exactly what they need, so they run
  # like on a real cluster and RBAC mistakes are not hidden by admin. The
  # kubelet is a node to the Node authorizer.
  client_cert kube-controller-manager system:kube-controller-manager
  client_cert kube-scheduler system:kube-scheduler
  client_cert kubelet "system:node:$NODE_NAME" system:nodes
  client_cert kube-proxy system:kube-proxy
  # No built-in role for this one: start_network_policy binds it to its own.
  client_cert kube-router kubecast:kube-router
  # Service-account tokens: apiserver signs with the private key and verifies
  # with the public one; controller-manager signs the legacy token Secrets.
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  rm -f "$PKI"/*.csr "$PKI"/*.srl
  chmod 600 "$PKI"/*.key
}

# ------------------------------------------------------------------ network
# The namespace: loopback, and a port-less bridge that carries the node's
# address (this kernel has no dummy links). Nothing connects it to the host.
# Routes: the pods' bridge appears when the first pod starts; ClusterIPs go
# to the node's bridge so that local clients get a route and kube-proxy's DNAT takes them from there; kwok's fake pod IPs
# and everything else are unreachable, so a stray connection fails at once
# instead of leaving.
make_netns() {
  if [ ! -e "$NETNS_PATH" ]; then ip netns add "$NETNS"; fi
  ip -n "$NETNS" link set lo up
  ip -n "$NETNS" link show kc-node > /dev/null 2>&1 || ip -n "$NETNS" link add kc-node type bridge
  ip -n "$NETNS" addr replace "$NODE_IP/32" dev kc-node
  ip -n "$NETNS" link set kc-node up
  ip -n "$NETNS" route replace "$SERVICE_CIDR" dev kc-node
  ip -n "$NETNS" route replace unreachable "$KWOK_POD_CIDR"
  ip -n "$NETNS" route replace unreachable default
  # Per-namespace sysctls: route between the bridge and the node, and let
  # bridged pod-to-pod traffic through iptables (kube-proxy's Service NAT).
  in_netns sysctl -qw net.ipv4.ip_forward=1
  in_netns sysctl -qw net.bridge.bridge-nf-call-iptables=1 2> /dev/null || true
}

# ------------------------------------------------------------------ components
start_etcd() {
  # --unsafe-no-fsync: this data is disposable; fsync per write is what makes
  # etcd slow on CI disks.
  start etcd \
    --name=kubecast \
    --data-dir="$CLUSTER_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:2379" \
    --advertise-client-urls="http://127.0.0.1:2379" \
    --listen-peer-urls="http://127.0.0.1:2380" \
    --initial-advertise-peer-urls="http://127.0.0.1:2380" \
    --initial-cluster="kubecast=http://127.0.0.1:2380" \
    --unsafe-no-fsync \
    --log-level=warn
  wait_for etcd 30 "etcd /health" \
    in_netns bash -c "exec 3<>/dev/tcp/127.0.0.1/2379 && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 && grep -q '\"health\":\"true\"' <&3"
}

start_apiserver() {
  # --kubelet-preferred-address-types=InternalIP: reach the kubelet (logs,
  #   exec, port-forward) at the node's address, never by looking its name up.
  # Listens on every address of the namespace: 127.0.0.1 for the host's tunnel
  # and the node's daemons, the node's address for pods (the `kubernetes`
  # Service's endpoint, kept by the default lease endpoint reconciler).
  # --shutdown-watch-termination-grace-period: on SIGTERM, end open watches
  #   within 3 s. By default shutdown waits for them (up to 60 s), so
  #   --restart-apiserver would take that long with the controllers connected.
  # Audit log, metadata only (who, verb, resource, user agent; never a body, so
  #   no Secret's data): bench/operator.py counts the operator's requests from
  #   it, and tests prove with it what a process did NOT do (a frozen operator
  #   made no write after its standby took the Lease over). Batched, so that
  #   writing it never holds up a request.
  cat > "$CLUSTER_DIR/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
POLICY
  start kube-apiserver \
    --audit-policy-file="$CLUSTER_DIR/audit-policy.yaml" \
    --audit-log-path="$LOGS/audit.log" \
    --audit-log-mode=batch \
    --audit-log-maxsize=1024 \
    --audit-log-maxbackup=1 \
    --bind-address=0.0.0.0 \
    --advertise-address="$NODE_IP" \
    --secure-port="$APISERVER_NETNS_PORT" \
    --etcd-servers="http://127.0.0.1:2379" \
    --cert-dir="$PKI" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --allow-privileged=true \
    --shutdown-watch-termination-grace-period=3s \
    --profiling=false
  # /readyz covers etcd, RBAC bootstrap roles and the post-start hooks.
  wait_for kube-apiserver 90 "kube-apiserver /readyz" kubectl_in get --raw /readyz
}

start_controller_manager() {
  local kc="$KCFG/kube-controller-manager.kubeconfig"
  # --controllers=*: all default controllers (deployment, replicaset, garbage
  #   collector, namespace, serviceaccount + token, endpoints...).
  # --use-service-account-credentials: each controller acts as its own service
  #   account with the built-in RBAC roles, as on kubeadm clusters.
  # --leader-elect=false: a single instance; a restart need not wait for a lease.
  start kube-controller-manager \
    --kubeconfig="$kc" \
    --authentication-kubeconfig="$kc" \
    --authorization-kubeconfig="$kc" \
    --bind-address=127.0.0.1 \
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
    --leader-elect=false
}

start_kwok() {
  # kwok plays kubelet for the Nodes annotated kwok.x-k8s.io/node=fake only
  # (never for the real node): heartbeats, and pod phase -> Running with a fake
  # pod IP from KWOK_POD_CIDR, which is unreachable on purpose.
  start kwok \
    --kubeconfig="$KUBECONFIG_NETNS" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --manage-nodes-with-label-selector= \
    --config="$BIN_DIR/kwok-stages.yaml" \
    --cidr="$KWOK_POD_CIDR" \
    --node-ip="$NODE_IP" \
    --node-lease-duration-seconds=40 \
    --server-address="127.0.0.1:10247"
}

create_fake_nodes() {
  local i
  for ((i = 0; i < KWOK_NODES; i++)); do
    # Tainted like kwok's docs say: real workloads go to the real node; a test
    # of scale tolerates the taint and selects type=kwok. Without a real node
    # the taint is left off, so that pods still get scheduled somewhere.
    local taints="[]"
    [ "$REAL_NODE" = 1 ] && taints='[{key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}]'
    kubectl_in apply -f - > /dev/null <<NODE || fail kube-apiserver "could not create Node kwok-node-$i"
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
spec:
  taints: $taints
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110", ephemeral-storage: 1Ti}
  capacity: {cpu: "32", memory: 256Gi, pods: "110", ephemeral-storage: 1Ti}
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: fake
    kubeProxyVersion: fake
NODE
  done
}

# ------------------------------------------------------------------ the real node
take_node_lock() {
  if [ -f "$NODE_LOCK" ]; then
    local owner; owner="$(cat "$NODE_LOCK")"
    if [ "$owner" != "$CLUSTER_DIR" ] && [ -f "$owner/kubelet.pid" ] \
       && kill -0 "$(cat "$owner/kubelet.pid")" 2> /dev/null; then
      fail kubelet "a real node already runs on this machine for $owner (kubelet's sysctls and cgroups are the machine's, so one at a time); run KUBECAST_CLUSTER_DIR=$owner hack/cluster-down.sh, or KUBECAST_REAL_NODE=0 for a cluster without one"
    fi
  fi
  echo "$CLUSTER_DIR" > "$NODE_LOCK"
  # kubelet sets these machine-wide; cluster-down puts them back.
  [ -f "$NODE_DIR/sysctls.saved" ] || for k in vm.overcommit_memory kernel.panic kernel.panic_on_oops; do
    echo "$k=$(sysctl -n "$k")"
  done > "$NODE_DIR/sysctls.saved"
}

write_node_config() {
  mkdir -p "$NODE_DIR"/{containerd,cni/net.d,cni/ipam,kubelet,runc}
  cat > "$NODE_DIR/containerd.toml" <<TOML
# Written by hack/cluster-up.sh: containerd for the local cluster's one real node.
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp",
]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  # No registry is reachable: the sandbox image is built here and imported.
  sandbox_image = "localhost/kubecast/pause:1"
  # Root cannot lower oom_score_adj on these machines.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$NODE_DIR/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$NODE_DIR/cni/net.d"
TOML
  # The pod network: one bridge, host-local addresses, portmap for hostPort.
  # hairpinMode lets a pod reach itself through its own Service; no ipMasq,
  # since there is nowhere outside to masquerade to.
  cat > "$NODE_DIR/cni/net.d/10-kubecast.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "kubecast",
  "plugins": [
    {"type": "bridge", "bridge": "kc-br0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$NODE_DIR/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  # No upstream resolvers: pods resolve cluster names only.
  : > "$NODE_DIR/resolv.conf"
  cat > "$NODE_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 on these machines: kubelet refuses it unless told, and cgroupfs
# is the driver (no systemd). Everything goes under one cgroup root, which
# cluster-down removes.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /kubecast
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: 0.0.0.0
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
resolvConf: $NODE_DIR/resolv.conf
failSwapOn: false
# A shared CI disk: evict only when it is really full.
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
serializeImagePulls: false
# Secrets and ConfigMaps reach mounted volumes within seconds (key rotation).
syncFrequency: 10s
YAML
  cat > "$NODE_DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $KCFG/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
# No IPVS in this kernel; iptables it is.
mode: iptables
clusterCIDR: 10.244.0.0/16
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# 0: leave the machine-wide conntrack sysctls alone (they are not per namespace).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
  cat > "$NODE_DIR/Corefile" <<COREFILE
# Cluster names only (<svc>.<ns>.svc.cluster.local and pod/reverse records);
# there is no upstream to forward anything else to.
.:53 {
    bind $DNS_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $KUBECONFIG_NETNS
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
COREFILE
}

# The pause image: the static binary from build-binaries.sh in an image of
# its own, built once and cached by the binary's digest.
pause_archive() {
  local sum dir="${KUBECAST_CACHE:-$HOME/.cache/kubecast}/images"
  sum="$(sha256sum "$BIN_DIR/pause" | cut -c1-16)"
  local archive="$dir/pause-$sum.tar"
  if [ ! -s "$archive" ]; then
    mkdir -p "$dir"
    local ctr
    ctr="$(buildah from scratch)"
    buildah copy "$ctr" "$BIN_DIR/pause" /pause > /dev/null
    buildah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
    buildah commit --quiet --format docker "$ctr" localhost/kubecast/pause:1 > /dev/null
    buildah rm "$ctr" > /dev/null
    buildah push --quiet localhost/kubecast/pause:1 "docker-archive:$archive.tmp:localhost/kubecast/pause:1"
    mv "$archive.tmp" "$archive"
  fi
  echo "$archive"
}

ctr_import() { in_netns ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$@" > /dev/null; }

# The images `make images` built, if it has been run (the tests and the demo
# run it before they need pods).
load_images() {
  local line archives
  [ -x "$REPO_ROOT/hack/images.sh" ] || return 0
  archives="$("$REPO_ROOT/hack/images.sh" --print-archives 2> /dev/null || true)"
  while IFS= read -r line; do
    [[ "$line" == *=* ]] || continue
    local path="${line#*=}"
    if [ -s "$path" ]; then
      ctr_import "$path" || fail containerd "could not import $path"
      say "imported ${line%%=*} image from $path"
    fi
  done <<< "$archives"
}

# kubelet's cgroupRoot must exist in every hierarchy (cgroup v1). A new
# cpuset group starts with no CPUs and no memory nodes: copy its parent's.
make_cgroup_root() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -e "${h}cgroup.procs" ] || continue
    mkdir -p "${h}kubecast"
  done
  if [ -d /sys/fs/cgroup/cpuset/kubecast ]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus > /sys/fs/cgroup/cpuset/kubecast/cpuset.cpus
    cat /sys/fs/cgroup/cpuset/cpuset.mems > /sys/fs/cgroup/cpuset/kubecast/cpuset.mems
  fi
}

start_node() {
  take_node_lock
  make_cgroup_root
  write_node_config
  START_BIN="$(command -v containerd)" start containerd --config "$NODE_DIR/containerd.toml"
  wait_for containerd 30 "containerd's socket" in_netns ctr --address "$CONTAINERD_SOCK" version
  ctr_import "$(pause_archive)"
  load_images
  # NB: --node-ip, --hostname-override and --root-dir are flags only.
  start kubelet \
    --config="$NODE_DIR/kubelet.yaml" \
    --kubeconfig="$KCFG/kubelet.kubeconfig" \
    --root-dir="$NODE_DIR/kubelet" \
    --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" \
    --node-labels="type=real"
  start kube-proxy --config="$NODE_DIR/kube-proxy.yaml"
  start coredns -conf "$NODE_DIR/Corefile"
  # Real storage on the node for PersistentVolumeClaims (recordings): the
  # default StorageClass, served by hack/local_volumes.py.
  kubectl apply -f - > /dev/null <<SC || fail kube-apiserver "could not create the StorageClass"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: kubecast-local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubecast.dev/local-volumes
reclaimPolicy: Delete
volumeBindingMode: Immediate
SC
  start_host local_volumes --kubeconfig "$KUBECONFIG_ADMIN" --root "$NODE_DIR/volumes"
}

# NetworkPolicy: the bridge CNI wires pods but enforces no policy. kube-router's
# network policy controller does, with iptables and ipset, beside kube-proxy:
# its firewall alone, no routing (one node, one bridge) and no service proxy
# (kube-proxy has that). It runs in the cluster's namespace like kube-proxy, so
# its chains and address sets live and die there. It looks its Node up once at
# start, hence after the node is Ready. Ready means its chains are in place.
start_network_policy() {
  kubectl apply -f - > /dev/null <<'RBAC' || fail kube-apiserver "could not create kube-router's RBAC"
# What kube-router's informers list and watch (its firewall daemonset's role,
# without the lease and services/status writes that only its other parts make).
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "kubecast:kube-router"}
rules:
- apiGroups: [""]
  resources: [namespaces, pods, services, nodes, endpoints]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubecast:kube-router"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "kubecast:kube-router"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "kubecast:kube-router"}
RBAC
  # --health-port=0 and no --metrics-port: it opens no port at all.
  start kube-router \
    --kubeconfig="$KCFG/kube-router.kubeconfig" \
    --hostname-override="$NODE_NAME" \
    --run-firewall=true --run-router=false --run-service-proxy=false \
    --enable-cni=false \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --health-port=0
  wait_for kube-router 60 "kube-router's KUBE-ROUTER-FORWARD chain" \
    in_netns iptables -w -n -L KUBE-ROUTER-FORWARD
}

write_env() {
  cat > "$CLUSTER_DIR/cluster.env" <<ENV
# Written by hack/cluster-up.sh; describes the running local cluster.
KUBECONFIG=$KUBECONFIG_ADMIN
KUBECONFIG_NETNS=$KUBECONFIG_NETNS
KUBECAST_BIN_DIR=$BIN_DIR
KUBECAST_NETNS=$NETNS
KUBECAST_NETNS_PATH=$NETNS_PATH
KUBECAST_REAL_NODE=$REAL_NODE
KUBECAST_NODE_NAME=$NODE_NAME
KUBECAST_NODE_IP=$NODE_IP
CONTAINERD_ADDRESS=$CONTAINERD_SOCK
APISERVER_URL=https://127.0.0.1:$APISERVER_PORT
APISERVER_PORT=$APISERVER_PORT
ENV
}

# ------------------------------------------------------------------ main
[ "$(id -u)" = 0 ] || { say "needs root (network namespace, containerd, kubelet)"; exit 1; }
CNI_BIN_DIR="${KUBECAST_CNI_BIN_DIR:-/usr/lib/cni}"

if [ "$MODE" != "up" ]; then
  [ -f "$CLUSTER_DIR/cluster.env" ] || { say "no cluster in $CLUSTER_DIR"; exit 1; }
  # shellcheck disable=SC1091
  source "$CLUSTER_DIR/cluster.env"
  BIN_DIR="$KUBECAST_BIN_DIR"
  if [ "$MODE" = "restart-apiserver" ]; then
    stop_component kube-apiserver
    start_apiserver
    say "kube-apiserver restarted (pid $(cat "$CLUSTER_DIR/kube-apiserver.pid"))"
  else
    load_images
  fi
  exit 0
fi

BIN_DIR="${KUBECAST_BIN_DIR:-$("$REPO_ROOT/hack/build-binaries.sh")}"

# Idempotent: a healthy running cluster is left alone; leftovers of a crashed or
# half-started one are cleaned up first.
all_alive=1
for c in "${COMPONENTS[@]}"; do
  case "$c" in containerd | kubelet | kube-proxy | coredns | local_volumes | kube-router) [ "$REAL_NODE" = 1 ] || continue ;; esac
  alive "$c" || all_alive=0
done
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

mkdir -p "$CLUSTER_DIR" "$LOGS" "$KCFG" "$NODE_DIR"
touch "$MARKER"
free_port APISERVER_PORT
write_env

t0=$SECONDS
make_pki
write_kubeconfig "$KUBECONFIG_ADMIN" admin "https://127.0.0.1:$APISERVER_PORT"
write_kubeconfig "$KUBECONFIG_NETNS" admin
for c in kube-controller-manager kube-scheduler kubelet kube-proxy kube-router; do
  write_kubeconfig "$KCFG/$c.kubeconfig" "$c"
done

say "network namespace $NETNS (node address $NODE_IP)"
make_netns
say "starting etcd and kube-apiserver inside it"
start_etcd
start_apiserver
say "starting the loopback tunnel: API server on https://127.0.0.1:$APISERVER_PORT"
start_host tunnel --netns "$NETNS_PATH" \
  --forward "127.0.0.1:$APISERVER_PORT=127.0.0.1:$APISERVER_NETNS_PORT" \
  --load-balancers --kubeconfig "$KUBECONFIG_NETNS"
wait_for tunnel 30 "the API server through the tunnel" kubectl get --raw /readyz

say "starting kube-controller-manager, kube-scheduler, kwok"
start_controller_manager
start_scheduler
start_kwok
create_fake_nodes
if [ "$REAL_NODE" = 1 ]; then
  say "starting the real node $NODE_NAME: containerd, kubelet, kube-proxy, CoreDNS, kube-router"
  start_node
fi

# Ready means: usable the way a test or the operator will use it.
wait_for kube-controller-manager 60 "ServiceAccount default/default" \
  kubectl -n default get serviceaccount default
for ((i = 0; i < KWOK_NODES; i++)); do
  wait_for kwok 60 "Node kwok-node-$i Ready" \
    bash -c "'$BIN_DIR/kubectl' --kubeconfig='$KUBECONFIG_ADMIN' get node kwok-node-$i \
      -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
done
if [ "$REAL_NODE" = 1 ]; then
  wait_for kubelet 90 "Node $NODE_NAME Ready" \
    bash -c "'$BIN_DIR/kubectl' --kubeconfig='$KUBECONFIG_ADMIN' get node $NODE_NAME \
      -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  alive kube-proxy || fail kube-proxy "kube-proxy exited"
  start_network_policy
  alive coredns || fail coredns "coredns exited"
  alive local_volumes || fail local_volumes "local_volumes exited"
fi
alive kube-scheduler || fail kube-scheduler "kube-scheduler exited"

say "up in $((SECONDS - t0))s; export KUBECONFIG=$KUBECONFIG_ADMIN"
echo "$KUBECONFIG_ADMIN"

# shellcheck shell=bash disable=SC2034  # variables are used by the sourcing scripts
# Shared by hack/cluster-up.sh and hack/cluster-down.sh (sourced, not executed).
#
# Layout of the cluster dir (default <repo>/.cluster, override KUBECAST_CLUSTER_DIR):
#   kubeconfig            admin kubeconfig for the host (through the loopback tunnel)
#   kubeconfig.netns      admin kubeconfig valid inside the cluster's network namespace
#   cluster.env           ports, bin dir, netns, URLs of the running cluster (sourceable)
#   pki/                  throwaway CA, serving/client certs, service-account key
#   etcd/                 etcd data
#   kubeconfigs/          per-component kubeconfigs (inside the namespace)
#   node/                 the real node: containerd, kubelet, CNI, kube-proxy, CoreDNS state
#                         (kube-router keeps none: its state is the namespace's iptables and ipsets)
#   logs/<component>.log  one log per process
#   <component>.pid       one pid per process
#   <component>.cmd       the exact command line, so a component can be restarted
#   .kubecast-cluster     marker: cluster-down only deletes a dir that has it
#
# The whole cluster lives in one network namespace, /run/netns/$NETNS: its
# private-range addresses (node, pods, bridge, ClusterIPs) and its iptables
# rules exist only there, and vanish with it. The host reaches in through
# loopback only, by hack/tunnel.py.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER_DIR="${KUBECAST_CLUSTER_DIR:-$REPO_ROOT/.cluster}"
MARKER="$CLUSTER_DIR/.kubecast-cluster"
# One name per cluster dir, so a developer's cluster and a test run's differ.
NETNS="kubecast-$(printf '%s' "$CLUSTER_DIR" | sha256sum | cut -c1-8)"
NETNS_PATH="/run/netns/$NETNS"
# The real node's lock: kubelet's sysctls and cgroup tree are the machine's,
# so only one real node runs on a machine at a time.
NODE_LOCK="/run/kubecast-node.owner"

# Addresses inside the namespace (none of them exists on the host).
NODE_IP="10.200.0.1"                # the node's InternalIP, on a port-less bridge
POD_CIDR="10.244.0.0/24"            # the real node's pods, on the CNI bridge
KWOK_POD_CIDR="10.245.0.0/16"       # fake pods on kwok nodes (nothing answers there)
SERVICE_CIDR="10.96.0.0/16"         # ClusterIPs: room for thousands of streams
KUBERNETES_SVC_IP="10.96.0.1"
DNS_IP="$NODE_IP"                   # CoreDNS runs on the node, as a process
APISERVER_NETNS_PORT=6443

# Start order; cluster-down stops them in reverse.
COMPONENTS=(etcd kube-apiserver tunnel kube-controller-manager kube-scheduler kwok containerd kubelet kube-proxy coredns local_volumes kube-router)

say() { echo "cluster: $*" >&2; }

# pid_of NAME -> prints the pid if NAME's pid file points at a live process that
# really is NAME (guards against pid reuse after a reboot or a crash).
pid_of() {
  local name="$1" pidfile="$CLUSTER_DIR/$1.pid" pid state
  [ -f "$pidfile" ] || return 1
  pid="$(cat "$pidfile" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  # A zombie still answers kill -0 but is dead; it lingers when our parent
  # (e.g. a container's pid 1) does not reap reparented children.
  state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)"
  [ "$state" != "Z" ] || return 1
  # argv0 is the binary (nsenter execs it); for a script, argv1 is.
  # A process in the middle of exec (setsid -> nsenter -> the binary) shows an
  # empty cmdline for a moment: look again rather than call it dead.
  local argv i
  for ((i = 0; i < 20; i++)); do
    argv="$(head -z -n2 "/proc/$pid/cmdline" 2>/dev/null | tr '\0' ' ')"
    [ -z "$argv" ] && [ -e "/proc/$pid" ] || break
    sleep 0.05
  done
  [[ " $argv" == *"/$name "* || " $argv" == *"/$name.py "* ]] || return 1
  echo "$pid"
}

alive() { pid_of "$1" > /dev/null; }

# stop NAME: TERM, wait up to ${2:-15}s, then KILL. Idempotent.
stop_component() {
  local name="$1" grace="${2:-15}" pid i
  if pid="$(pid_of "$name")"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      alive "$name" || break
      sleep 0.1
    done
    if alive "$name"; then
      say "$name (pid $pid) ignored SIGTERM for ${grace}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do alive "$name" || break; sleep 0.1; done
    fi
  fi
  rm -f "$CLUSTER_DIR/$name.pid"
}

# in_netns CMD...: run CMD inside the cluster's network namespace. nsenter, not
# `ip netns exec`: the latter also makes a private mount namespace with a fresh
# /sys, where kubelet finds no cgroup mounts and its volume mounts would be
# invisible to containerd.
in_netns() { nsenter --net="$NETNS_PATH" -- "$@"; }

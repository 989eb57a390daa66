# shellcheck shell=bash disable=SC2034  # variables are used by the sourcing scripts
# Shared by hack/cluster-up.sh and hack/cluster-down.sh (sourced, not executed).
#
# Layout of the cluster dir (default <repo>/.cluster, override KUBECAST_CLUSTER_DIR):
#   kubeconfig            admin kubeconfig (system:masters)
#   cluster.env           ports, bin dir, URLs of the running cluster (sourceable)
#   pki/                  throwaway CA, serving/client certs, service-account key
#   etcd/                 etcd data
#   kubeconfigs/          per-component kubeconfigs
#   logs/<component>.log  one log per process
#   <component>.pid       one pid per process
#   <component>.cmd       the exact command line, so a component can be restarted
#   .kubecast-cluster     marker: cluster-down only deletes a dir that has it

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER_DIR="${KUBECAST_CLUSTER_DIR:-$REPO_ROOT/.cluster}"
MARKER="$CLUSTER_DIR/.kubecast-cluster"

# Start order; cluster-down stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

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
  local argv0
  argv0="$(head -z -n1 "/proc/$pid/cmdline" 2>/dev/null | tr -d '\0')"
  [[ "$argv0" == */"$name" ]] || return 1
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

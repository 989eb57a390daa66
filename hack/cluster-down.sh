#!/usr/bin/env bash
# Stop the local cluster started by hack/cluster-up.sh and remove everything it
# made: processes, containers, mounts, cgroups, the network namespace (and with
# it every address, bridge and iptables rule of the cluster), the sysctls the
# kubelet changed, and the state dir (data, certificates, kubeconfig, logs).
# Idempotent: safe to run when nothing is running or the cluster dir is gone.
#
# Env: KUBECAST_CLUSTER_DIR  state dir (default <repo>/.cluster)
#      KUBECAST_KEEP_LOGS=1  keep <cluster dir>/logs (e.g. for CI artifacts)
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/cluster-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/cluster-common.sh"

NODE_DIR="$CLUSTER_DIR/node"
CGROUP_ROOT=kubecast

# The node first, so nothing restarts what is being stopped: kubelet, then
# every container process (found by the cgroup tree kubelet put them in).
for c in kube-router coredns kube-proxy kubelet; do stop_component "$c" 10; done
# kube-router's NetworkPolicy state: its chains in the filter table (and the
# jumps to them from INPUT, FORWARD and OUTPUT), then its ipsets, which cannot
# be destroyed while a rule refers to them. Deleting the namespace below would
# drop them too; removing them first also covers a namespace that something
# still holds open. (kube-router v2.1's own --cleanup-config is no help: it
# panics in its service proxy's cleanup and leaves the firewall's chains.)
netpol_cleanup() {
  local own='KUBE-ROUTER-|KUBE-NWPLCY-|KUBE-POD-FW-' rules
  rules="$(in_netns iptables-save -t filter 2> /dev/null)" || return 0
  if grep -qE "^:($own)" <<< "$rules"; then
    grep -vE "^:($own)|^-A ($own)|-j ($own)" <<< "$rules" | in_netns iptables-restore -T filter || true
  fi
  local set
  for set in $(in_netns ipset list -n 2> /dev/null || true); do
    [[ "$set" =~ ^(inet6:)?KUBE- ]] && { in_netns ipset destroy "$set" || true; }
  done
  return 0
}
[ ! -e "$NETNS_PATH" ] || netpol_cleanup
kill_pods() {
  local procs
  procs="$(cat /sys/fs/cgroup/*/"$CGROUP_ROOT"/**/cgroup.procs 2> /dev/null | sort -u || true)"
  [ -z "$procs" ] || kill -KILL $procs 2> /dev/null || true
}
if [ -d "/sys/fs/cgroup/pids/$CGROUP_ROOT" ] && [ -f "$NODE_LOCK" ] \
   && [ "$(cat "$NODE_LOCK")" = "$CLUSTER_DIR" ]; then
  shopt -s globstar nullglob
  kill_pods; sleep 0.5; kill_pods
  shopt -u globstar nullglob
fi

# Reverse start order: clients first, etcd last, so nothing logs a storm of
# connection errors on the way down and etcd is stopped cleanly.
for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
  stop_component "${COMPONENTS[$i]}"
done

# Whatever is left in the namespace (containerd's shims, a test's process).
if [ -e "$NETNS_PATH" ]; then
  pids="$(ip netns pids "$NETNS" 2> /dev/null || true)"
  [ -z "$pids" ] || kill -KILL $pids 2> /dev/null || true
  sleep 0.2
fi

# Mounts under the cluster dir (kubelet's volumes, containerd's rootfs and
# shm), deepest first.
if [ -d "$CLUSTER_DIR" ]; then
  awk -v d="$CLUSTER_DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r \
    | while read -r m; do umount "$m" 2> /dev/null || umount -l "$m" 2> /dev/null || true; done
fi

if [ -f "$NODE_LOCK" ] && [ "$(cat "$NODE_LOCK")" = "$CLUSTER_DIR" ]; then
  # kubelet's cgroups, deepest first, in every hierarchy.
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h$CGROUP_ROOT" ] && find "$h$CGROUP_ROOT" -depth -type d -exec rmdir {} + 2> /dev/null || true
  done
  if [ -f "$NODE_DIR/sysctls.saved" ]; then
    while IFS= read -r kv; do sysctl -qw "$kv" || true; done < "$NODE_DIR/sysctls.saved"
  fi
  rm -f "$NODE_LOCK"
  owned_node=1
fi

if [ -e "$NETNS_PATH" ]; then ip netns delete "$NETNS" || true; fi
# The pods' own namespaces, which containerd made as /run/netns/cni-*: once
# their processes are gone, nothing else holds them.
if [ "${owned_node:-0}" = 1 ]; then
  for ns in /run/netns/cni-*; do
    [ -e "$ns" ] || continue
    [ -z "$(ip netns pids "${ns##*/}" 2> /dev/null)" ] && ip netns delete "${ns##*/}" 2> /dev/null || true
  done
fi
# `ip netns add` turned /run/netns into a mount point; leave none behind
# once no namespace is left in it.
if mountpoint -q /run/netns && [ -z "$(ls -A /run/netns 2> /dev/null)" ]; then
  umount /run/netns 2> /dev/null || true
fi

[ -d "$CLUSTER_DIR" ] || exit 0
# Only delete a directory cluster-up.sh created: KUBECAST_CLUSTER_DIR could
# point anywhere by mistake.
if [ -f "$MARKER" ]; then
  if [ "${KUBECAST_KEEP_LOGS:-0}" = 1 ]; then
    find "$CLUSTER_DIR" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
  else
    rm -rf "$CLUSTER_DIR"
  fi
else
  say "$CLUSTER_DIR has no $(basename "$MARKER") marker; stopped processes but left the directory"
fi
say "down"

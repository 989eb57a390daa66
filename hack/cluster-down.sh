#!/usr/bin/env bash
# Stop the local control plane started by hack/cluster-up.sh and delete its
# state (data, certificates, kubeconfig, logs). Idempotent: safe to run when
# nothing is running or the cluster dir does not exist.
#
# Env: KUBECAST_CLUSTER_DIR  state dir (default <repo>/.cluster)
#      KUBECAST_KEEP_LOGS=1  keep <cluster dir>/logs (e.g. for CI artifacts)
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/cluster-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/cluster-common.sh"

[ -d "$CLUSTER_DIR" ] || exit 0

# Reverse start order: clients first, etcd last, so nothing logs a storm of
# connection errors on the way down and etcd is stopped cleanly.
for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
  stop_component "${COMPONENTS[$i]}"
done

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

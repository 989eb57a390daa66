#!/usr/bin/env bash
# `make demo`: kubecast the way a user runs it, on this one machine.
#
#   a local cluster with a real node (hack/cluster-up.sh)
#   -> the operator and worker images, built here (hack/images.sh)
#   -> `helm install` of charts/kubecast -> a TranscodeProfile and a LiveStream
#   -> its worker pod runs on the node -> ffmpeg publishes a synthetic test
#      stream to the ingest URL from the stream's status
#   -> prints `kubectl get livestreams`, the playback URL and the player page.
#
# The stream's Services are of type LoadBalancer; the local cluster gives each
# a loopback address (127.77.x.y), so the URLs in status open in a browser or
# ffplay on this machine. Ctrl-C stops everything it started. DEMO_SECONDS=N
# stops by itself after N seconds of Live (to check the demo non-interactively).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

VENV="${VENV:-$REPO/.venv}"
export KUBECAST_CLUSTER_DIR="${KUBECAST_CLUSTER_DIR:-$REPO/.cluster}"
export KUBECONFIG="$KUBECAST_CLUSTER_DIR/kubeconfig"
DEMO_LOGS="${TMPDIR:-/tmp}/kubecast-demo"
NS=demo
STREAM=demo

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

hack/system-packages.sh
say "building (or reusing) the Kubernetes binaries"
BIN_DIR="$(hack/build-binaries.sh | tail -n1)"
export PATH="$BIN_DIR:$VENV/bin:$PATH"

publisher=""
cleanup() {
  trap - INT TERM EXIT
  say "stopping the demo"
  # the publisher's whole session: its retry loop and the ffmpeg it runs
  [[ -z "$publisher" ]] || kill -- "-$publisher" 2> /dev/null || true
  hack/cluster-down.sh
}
trap cleanup INT TERM EXIT

wait_for() {  # wait_for SECONDS WHAT CMD...
  local deadline=$((SECONDS + $1)) what="$2"; shift 2
  until "$@" > /dev/null 2>&1; do
    if ((SECONDS > deadline)); then echo "timed out waiting for $what" >&2; return 1; fi
    sleep 1
  done
}

say "building the operator and worker images (buildah; cached after the first time)"
hack/images.sh | sed 's/^/    /'
say "starting the local cluster (control plane, one real node, kwok nodes)"
hack/cluster-up.sh > /dev/null

say "helm install kubecast charts/kubecast"
helm install kubecast charts/kubecast -n kubecast-system --create-namespace --wait \
  --timeout 180s --set operator.pollSeconds=2 > /dev/null
kubectl -n kubecast-system get pods -o wide

say "creating TranscodeProfile demo and LiveStream $STREAM in namespace $NS"
kubectl create namespace "$NS" > /dev/null
# A lighter ladder than the sample's (no 1080p): the demo shares two cores with
# the publisher and the cluster.
kubectl -n "$NS" apply -f - > /dev/null <<'YAML'
apiVersion: kubecast.dev/v1alpha1
kind: TranscodeProfile
metadata: {name: demo}
spec:
  gopSeconds: 2
  segmentSeconds: 2
  renditions:
    - {name: 720p, width: 1280, height: 720, videoBitrate: 2500, fps: 30, preset: veryfast}
    - {name: 360p, width: 640, height: 360, videoBitrate: 800, audioBitrate: 64, fps: 30,
       preset: veryfast, profile: main}
YAML
kubectl -n "$NS" apply -f - > /dev/null <<YAML
apiVersion: kubecast.dev/v1alpha1
kind: LiveStream
metadata: {name: $STREAM}
spec:
  ingest: {push: {app: live}}
  profileRef: {name: demo}
  ingestService: {type: LoadBalancer}
  playbackService: {type: LoadBalancer}
YAML

jsonpath() { kubectl -n "$NS" get livestream "$STREAM" -o "jsonpath=$1" 2> /dev/null; }
reachable() { [[ "$(jsonpath '{.status.ingestUrl}')" == rtmp://127.* ]]; }
is_idle() { [[ "$(jsonpath '{.status.phase}')" =~ ^(Idle|Live)$ ]]; }
wait_for 120 "the ingest URL in status" reachable
wait_for 120 "the worker to accept publishers (phase Idle)" is_idle
INGEST="$(jsonpath '{.status.ingestUrl}')"
SECRET="$(jsonpath '{.status.streamKeySecret}')"
KEY="$(kubectl -n "$NS" get secret "$SECRET" -o jsonpath='{.data.streamKey}' | base64 -d)"

# Idle is what the operator saw at the pod's own address; the Service routes once
# its endpoint is ready and kube-proxy has synced (a second or so more).
endpoint_ready() {
  kubectl -n "$NS" get endpointslices -l "kubernetes.io/service-name=$STREAM-ingest" \
    -o jsonpath='{.items[*].endpoints[*].conditions.ready}' | grep -q true
}
wait_for 60 "the ingest Service's endpoint" endpoint_ready

mkdir -p "$DEMO_LOGS"
say "publishing a synthetic 720p30 test stream to $INGEST/<key from Secret $SECRET>"
# Like an encoder (OBS reconnects by itself), the publisher tries again when a
# connection fails; its log has the key masked (ffmpeg prints the URL it failed on).
KEY="$KEY" INGEST="$INGEST" setsid bash -c '
  while :; do
    ffmpeg -hide_banner -loglevel error -re \
      -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000" \
      -c:v libx264 -preset veryfast -tune zerolatency -g 60 -b:v 2500k \
      -c:a aac -b:a 128k -f flv "$INGEST/$KEY" < /dev/null 2>&1 | sed -u "s|$KEY|***|g"
    sleep 1
  done' > "$DEMO_LOGS/publisher.log" 2>&1 < /dev/null &
publisher=$!

is_live() { [[ "$(jsonpath '{.status.phase}')" == Live ]]; }
wait_for 60 "phase Live" is_live
PLAYBACK="$(jsonpath '{.status.playbackUrl}')"
has_playlist() { curl -fsS "$PLAYBACK" | grep -q EXT-X-STREAM-INF; }
wait_for 60 "a playable master playlist" has_playlist

echo
kubectl -n "$NS" get livestreams -o wide
echo
say "playback (HLS):  $PLAYBACK"
say "player page:     ${PLAYBACK%/master.m3u8}/player"
say "try:             ffplay $PLAYBACK   or   ffprobe $PLAYBACK"
say "kubectl:         export KUBECONFIG=$KUBECONFIG; kubectl get kubecast -A"
if [[ -n "${DEMO_SECONDS:-}" ]]; then
  sleep "$DEMO_SECONDS"
  kubectl -n "$NS" get livestreams
  exit 0
fi
say "press Ctrl-C to stop"
while true; do sleep 3600; done

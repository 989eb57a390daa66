#!/usr/bin/env bash
# `make demo`: the whole product on one machine, no containers.
#
#   local control plane -> CRDs + default profile -> operator -> a LiveStream
#   -> its worker pod runs (hack/pod_runner.py plays kubelet) -> ffmpeg publishes a
#   synthetic test stream to the ingest URL from the stream's status
#   -> prints the playback URL and `kubectl get livestreams`.
#
# Ctrl-C stops everything it started. DEMO_SECONDS=N stops by itself after N
# seconds of Live (used to check the demo non-interactively).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

VENV="${VENV:-$REPO/.venv}"
export KUBECAST_CLUSTER_DIR="${KUBECAST_CLUSTER_DIR:-$REPO/.cluster}"
export KUBECONFIG="$KUBECAST_CLUSTER_DIR/kubeconfig"
DEMO_DIR="$KUBECAST_CLUSTER_DIR/demo"
NS=default
STREAM=demo

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# What the demo runs besides Python: ffmpeg (publisher), openssl (certificates),
# curl. Install them from Debian when we can; otherwise say what is missing.
missing=()
for tool in ffmpeg openssl curl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "please install: ${missing[*]} (e.g. sudo apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
fi

say "building (or reusing) the control-plane binaries"
BIN_DIR="$(hack/build-binaries.sh | tail -n1)"
export PATH="$BIN_DIR:$VENV/bin:$PATH"

pids=()
cleanup() {
  trap - INT TERM EXIT
  say "stopping the demo"
  for pid in "${pids[@]}"; do kill -TERM "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  hack/cluster-down.sh
}
trap cleanup INT TERM EXIT

background() {  # background LOG CMD...: run in its own process group, remember it
  local log="$1"; shift
  setsid "$@" >"$log" 2>&1 < /dev/null &
  pids+=("$!")
}

wait_for() {  # wait_for SECONDS WHAT CMD...
  local deadline=$((SECONDS + $1)) what="$2"; shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then echo "timed out waiting for $what" >&2; return 1; fi
    sleep 1
  done
}

say "starting the local control plane"
hack/cluster-up.sh
mkdir -p "$DEMO_DIR"

say "installing the CRDs and the default TranscodeProfile"
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s -f crds/ >/dev/null
# A lighter ladder than the sample's (no 1080p): the demo shares two cores with
# the publisher and the control plane.
kubectl apply -f - >/dev/null <<'EOF'
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
EOF

say "starting the operator and the pod runner"
KUBECAST_POLL_SECONDS=2 KUBECAST_PUBLIC_HOST=127.0.0.1 \
  background "$DEMO_DIR/operator.log" kubecast-operator --metrics-port 0 --liveness-port 0 \
  --lease-namespace "$NS"
background "$DEMO_DIR/pod-runner.log" "$VENV/bin/python" hack/pod_runner.py \
  --workdir "$DEMO_DIR/pods"

say "creating LiveStream $STREAM"
kubectl apply -f - >/dev/null <<EOF
apiVersion: kubecast.dev/v1alpha1
kind: LiveStream
metadata: {name: $STREAM, namespace: $NS}
spec:
  ingest: {push: {app: live}}
  profileRef: {name: demo}
  ingestService: {type: LoadBalancer}
  playbackService: {type: LoadBalancer}
EOF

jsonpath() { kubectl -n "$NS" get livestream "$STREAM" -o "jsonpath=$1" 2>/dev/null; }
has_ingest() { [[ "$(jsonpath '{.status.ingestUrl}')" == rtmp://127.* ]]; }
is_idle() { [[ "$(jsonpath '{.status.phase}')" =~ ^(Idle|Live)$ ]]; }
wait_for 90 "the ingest URL in status" has_ingest
wait_for 90 "the worker to accept publishers (phase Idle)" is_idle
INGEST="$(jsonpath '{.status.ingestUrl}')"
SECRET="$(jsonpath '{.status.streamKeySecret}')"
KEY="$(kubectl -n "$NS" get secret "$SECRET" -o jsonpath='{.data.streamKey}' | base64 -d)"

say "publishing a synthetic 720p30 test stream to $INGEST/<key from Secret $SECRET>"
background "$DEMO_DIR/publisher.log" ffmpeg -hide_banner -loglevel error -re \
  -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000" \
  -c:v libx264 -preset veryfast -tune zerolatency -g 60 -b:v 2500k \
  -c:a aac -b:a 128k -f flv "$INGEST/$KEY"

is_live() { [[ "$(jsonpath '{.status.phase}')" == Live ]]; }
wait_for 60 "phase Live" is_live
PLAYBACK="$(jsonpath '{.status.playbackUrl}')"
has_playlist() { curl -fsS "$PLAYBACK" | grep -q EXT-X-STREAM-INF; }
wait_for 60 "a playable master playlist" has_playlist

echo
kubectl get livestreams -o wide
echo
say "playback (HLS):  $PLAYBACK"
say "player page:     ${PLAYBACK%/master.m3u8}/player"
say "try:             ffplay $PLAYBACK   or   ffprobe $PLAYBACK"
say "logs:            $DEMO_DIR/"
if [[ -n "${DEMO_SECONDS:-}" ]]; then
  sleep "$DEMO_SECONDS"
  kubectl get livestreams
  exit 0
fi
say "press Ctrl-C to stop"
while true; do sleep 3600; done

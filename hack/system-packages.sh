#!/usr/bin/env bash
# Install the Debian packages kubecast's local cluster, demo and tests need,
# when they are missing (a no-op on a machine that has them all).
#
#   hack/system-packages.sh          the demo's: media tools and the real node
#   hack/system-packages.sh --tests  also what the tests need (a browser, npm, and
#                                    GStreamer and SRT tools for more real publishers,
#                                    wrk and nginx for the viewer load test, nft for
#                                    packet loss in a test's own namespace)
#
# The real node: containerd and runc run the pods, the CNI plugins wire them,
# iptables carries kube-proxy's rules, ipset holds kube-router's NetworkPolicy
# address sets, buildah and debootstrap build the images
# (no Docker daemon, no registry). ffmpeg publishes, openssl makes the cluster's
# certificates.
set -euo pipefail

need=()
want() { # want COMMAND-OR-PATH PACKAGE
  if [[ "$1" == /* ]]; then [[ -e "$1" ]] || need+=("$2"); else command -v "$1" > /dev/null || need+=("$2"); fi
}
want ffmpeg ffmpeg
want openssl openssl
want curl curl
want column bsdextrautils
want nsenter util-linux
want ip iproute2
want iptables iptables
want ipset ipset
want containerd containerd
want runc runc
want /usr/lib/cni/bridge containernetworking-plugins
want buildah buildah
want debootstrap debootstrap
if [[ "${1:-}" == --tests ]]; then
  want npm npm
  want /usr/bin/chromium chromium
  # SRT ingest: the worker's listener (srt-live-transmit, also in the worker image)
  want srt-live-transmit srt-tools
  # GStreamer, a second real publisher: videotestsrc/audiotestsrc (base), flvmux
  # (good), rtmp2sink and srtsink (bad), x264enc (ugly), avenc_aac (libav).
  gst=/usr/lib/$(uname -m)-linux-gnu/gstreamer-1.0
  want gst-launch-1.0 gstreamer1.0-tools
  want "$gst/libgstvideotestsrc.so" gstreamer1.0-plugins-base
  want "$gst/libgstflv.so" gstreamer1.0-plugins-good
  want "$gst/libgstrtmp2.so" gstreamer1.0-plugins-bad
  want "$gst/libgstsrt.so" gstreamer1.0-plugins-bad
  want "$gst/libgstx264.so" gstreamer1.0-plugins-ugly
  want "$gst/libgstlibav.so" gstreamer1.0-libav
  # tests/faults/test_viewer_load.py: wrk is the load, nginx the yardstick (it runs
  # from a config of its own on a loopback port; the package's service is not used).
  want wrk wrk
  want /usr/sbin/nginx nginx
  # tests/e2e/test_whep_send.py drops a share of UDP inside its namespace (nft)
  want nft nftables
fi
((${#need[@]})) || exit 0
if [[ $EUID -ne 0 ]] || ! command -v apt-get > /dev/null; then
  echo "please install: ${need[*]} (e.g. sudo apt-get install -y ${need[*]})" >&2
  exit 1
fi
echo "installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" > /dev/null

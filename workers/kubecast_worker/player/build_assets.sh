#!/usr/bin/env bash
# Build the player's third-party asset: hls.js, installed from the npm registry
# at the version package-lock.json pins, and copied into static/ where the
# origin serves it (never from a CDN). The output is git-ignored. npm ci also
# installs dash.js, which tests/e2e/test_worker_dash.py plays the DASH manifest with
# from node_modules (the preview page itself plays HLS only).
#
#   workers/kubecast_worker/player/build_assets.sh     (or: make player)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

if ! command -v npm >/dev/null; then
  echo "build_assets.sh: npm is missing; install Node.js (apt-get install -y nodejs npm)" >&2
  exit 1
fi

# NB: --ignore-scripts: hls.js needs no install scripts, and none should run.
npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
install -m 0644 node_modules/hls.js/dist/hls.min.js static/hls.min.js
version="$(node -p 'require("./node_modules/hls.js/package.json").version')"
echo "player: static/hls.min.js is hls.js ${version}"

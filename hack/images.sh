#!/usr/bin/env bash
# Build the operator and worker images (the Dockerfile's `operator` and
# `worker` targets) with buildah: no Docker daemon and no image registry needed.
#
# Why: the local cluster and the tests need the images, but this machine can
# reach neither Docker Hub nor any other registry, only Debian's apt mirror and
# PyPI. So, unless PYTHON_IMAGE names a base you can pull:
#
#   1. the base image is bootstrapped once with debootstrap (Debian minbase plus
#      Python 3, venv and pip), slimmed, cached as a rootfs tarball under
#      ${KUBECAST_CACHE:-~/.cache/kubecast}/images/base/ (keyed by suite, mirror
#      and package list, so a change rebuilds it) and imported as the local
#      image localhost/kubecast/python-base:<suite>;
#   2. both targets are built with `buildah bud --layers` (a second run with no
#      change is all cache hits) and tagged with the names the Helm chart runs
#      by default, docker.io/kubecast/{operator,worker}:<chart appVersion>;
#   3. each image is written as a docker-archive that
#      `ctr -n k8s.io images import` accepts, re-exported only when the image id
#      changed, and the last two lines printed are `operator=<archive>` and
#      `worker=<archive>`.
#
# The host's CA bundle is bind-mounted read-only into the RUN steps (pip needs
# it to reach PyPI here) over the base's own; it is not copied into the images.
#
# Usage: hack/images.sh [--print-archives]
#   --print-archives  print the archive paths only (no build); fails when one is missing
# Environment:
#   PYTHON_IMAGE     base image to build on instead of the bootstrapped one (no bootstrap)
#   IMAGE_TAG        tag instead of the chart's appVersion
#   KUBECAST_CACHE   cache root (default ~/.cache/kubecast)
#   DEBIAN_SUITE     suite of the bootstrapped base (default bookworm)
#   DEBIAN_MIRROR    apt mirror for debootstrap (default: the one this host's apt uses)
set -euo pipefail
shopt -s inherit_errexit  # ensure_base runs in $(...): fail there too

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${KUBECAST_CACHE:-$HOME/.cache/kubecast}/images
SUITE=${DEBIAN_SUITE:-bookworm}
BASE_PACKAGES=(python3 python3-venv python-is-python3 python3-pip ca-certificates)
# Bump when bootstrap_base's slimming or image config changes: it is part of the key.
BASE_RECIPE=1
BASE_IMAGE=localhost/kubecast/python-base:$SUITE
BASE_KEY_LABEL=dev.kubecast.base.key

# The repositories of charts/kubecast/values.yaml (image.repository and
# worker.image.repository), as containerd normalises them; the tag defaults to
# the chart's appVersion, as in the chart (tests/images checks both).
APP_VERSION=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}[[:space:]]*$/\1/p' \
  "$REPO/charts/kubecast/Chart.yaml")
TAG=${IMAGE_TAG:-$APP_VERSION}
[[ -n $TAG ]] || { echo "images: no appVersion in charts/kubecast/Chart.yaml" >&2; exit 1; }
declare -A IMAGES=([operator]=docker.io/kubecast/operator:$TAG [worker]=docker.io/kubecast/worker:$TAG)
TARGETS=(operator worker)
ARCHIVES=$CACHE/archives

log() { printf 'images: %s\n' "$*" >&2; }

archive_of() { echo "$ARCHIVES/kubecast-$1-$TAG.tar"; }

print_archives() {
  local target missing=0
  for target in "${TARGETS[@]}"; do
    echo "$target=$(archive_of "$target")"
    [[ -s $(archive_of "$target") ]] || missing=1
  done
  if ((missing)); then
    echo "images: an archive is missing, run \`make images\`" >&2
    return 1
  fi
}

case "${1:-}" in
  --print-archives) print_archives; exit ;;
  "") ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
  *) echo "usage: $0 [--print-archives]" >&2; exit 2 ;;
esac

command -v buildah >/dev/null || { echo "images: needs buildah (apt-get install buildah)" >&2; exit 1; }

image_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null; }

# The Debian mirror this host's apt uses for $SUITE (deb822 .sources or
# one-line .list), so that debootstrap goes where apt already can.
debian_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    uri=$(awk -v suite="$SUITE" 'BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; uris = ""; suites = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^[ \t]*#/) continue
          if ($i ~ /^Types:/) types = " " substr($i, 7) " "
          if ($i ~ /^URIs:/) uris = substr($i, 6)
          if ($i ~ /^Suites:/) suites = " " substr($i, 8) " "
        }
        gsub(/\t/, " ", suites)
        if (types ~ / deb / && suites ~ (" " suite " ")) { split(uris, u, " "); print u[1]; exit }
      }' "$f")
    [[ -n $uri ]] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    uri=$(awk -v suite="$SUITE" '$1 == "deb" {
        i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit }
      }' "$f")
    [[ -n $uri ]] && { echo "$uri"; return; }
  done
  echo http://deb.debian.org/debian
}

# Unmount whatever debootstrap left mounted under $1 (an interrupted run), then remove it.
remove_tree() {
  local dir=$1 mnt
  [[ -e $dir ]] || return 0
  while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done < <(
    awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
  rm -rf --one-file-system "$dir"
}

# Debian minbase + Python, slimmed like Debian's own slim images (docs but the
# copyright files, man pages, locales, apt lists and caches, logs removed),
# pip allowed to install outside a venv (no EXTERNALLY-MANAGED, as in
# python:*-slim), written as a rootfs tarball.
bootstrap_base() {
  local tarball=$1 mirror=$2 work rootfs
  command -v debootstrap >/dev/null || { echo "images: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  [[ $(id -u) == 0 ]] || { echo "images: debootstrap needs root" >&2; exit 1; }
  work="$tarball.work"
  remove_tree "$work"
  rootfs=$work/rootfs
  mkdir -p "$rootfs"
  # shellcheck disable=SC2064  # expand now
  trap "remove_tree '$work'" EXIT
  log "bootstrapping Debian $SUITE (minbase + ${BASE_PACKAGES[*]}) from $mirror"
  if ! debootstrap --variant=minbase --include="$(IFS=,; echo "${BASE_PACKAGES[*]}")" \
      "$SUITE" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    [[ -f $rootfs/debootstrap/debootstrap.log ]] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
    remove_tree "$work"
    echo "images: debootstrap failed" >&2
    exit 1
  fi
  (
    cd "$rootfs"
    find usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
    find usr/share/doc -mindepth 1 -type d -empty -delete
    rm -rf usr/share/man/* usr/share/info/* usr/share/locale/* usr/share/lintian \
      var/lib/apt/lists/* var/cache/apt/* var/cache/debconf/*-old var/lib/dpkg/*-old \
      tmp/* var/tmp/* root/.cache
    find var/log -type f -delete
    rm -f usr/lib/python3*/EXTERNALLY-MANAGED
    # The runtime mounts its own; the build host's must not stay in the image.
    : >etc/resolv.conf
    : >etc/hostname
    # Later `apt-get install`s in derived images stay slim too.
    mkdir -p etc/dpkg/dpkg.cfg.d
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
      'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
      'path-exclude /usr/share/locale/*' 'path-exclude /usr/share/lintian/*' \
      >etc/dpkg/dpkg.cfg.d/kubecast-slim
  )
  tar -C "$rootfs" --numeric-owner --xattrs -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  remove_tree "$work"
  trap - EXIT
  # Bases of an older key are of no more use.
  find "$(dirname "$tarball")" -maxdepth 1 -name "debian-$SUITE-*.tar" ! -path "$tarball" -delete
}

# Echo the base image to build on: PYTHON_IMAGE when set, else the local
# bootstrapped one (made, or imported from the cached tarball, when missing or stale).
ensure_base() {
  if [[ -n ${PYTHON_IMAGE:-} ]]; then
    log "base: $PYTHON_IMAGE (PYTHON_IMAGE, no bootstrap)"
    echo "$PYTHON_IMAGE"
    return
  fi
  local mirror key tarball have ctr mnt
  mirror=${DEBIAN_MIRROR:-$(debian_mirror)}
  key=$(printf '%s\n' "recipe=$BASE_RECIPE" "suite=$SUITE" "variant=minbase" "mirror=$mirror" \
    "packages=${BASE_PACKAGES[*]}" "arch=$(uname -m)" | sha256sum | cut -c1-16)
  have=$(buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$BASE_KEY_LABEL\"}}" \
    "$BASE_IMAGE" 2>/dev/null || true)
  if [[ $have == "$key" ]]; then
    log "base: $BASE_IMAGE (cached, key $key)"
    echo "$BASE_IMAGE"
    return
  fi
  mkdir -p "$CACHE/base"
  tarball=$CACHE/base/debian-$SUITE-$key.tar
  [[ -s $tarball ]] || bootstrap_base "$tarball" "$mirror"
  log "importing $tarball as $BASE_IMAGE"
  ctr=$(buildah from --quiet scratch)
  # shellcheck disable=SC2064  # expand now: the trap must remove this container
  trap "buildah rm '$ctr' >/dev/null 2>&1 || true" EXIT
  mnt=$(buildah mount "$ctr")
  tar -C "$mnt" --numeric-owner --xattrs -xf "$tarball"
  buildah umount "$ctr" >/dev/null
  buildah config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd python3 \
    --label "$BASE_KEY_LABEL=$key" \
    --label "dev.kubecast.base.source=debootstrap --variant=minbase $SUITE $mirror" \
    --label "dev.kubecast.base.packages=${BASE_PACKAGES[*]}" \
    --created-by "hack/images.sh: debootstrap --variant=minbase $SUITE, slimmed" \
    "$ctr"
  buildah commit --quiet --format docker --rm "$ctr" "$BASE_IMAGE" >/dev/null
  trap - EXIT
  echo "$BASE_IMAGE"
}

# What pip needs to reach PyPI from here, bind-mounted read-only into the RUN
# steps only. The host's CA bundle goes over the base's own (an existing file,
# so nothing is added to a layer): Debian's pip, system and venv, reads
# /etc/ssl/certs/ca-certificates.crt. /etc/pip.conf (its `cert =` points pip at
# that bundle) is only needed for another base, whose pip may use its bundled
# certifi; buildah 1.28 then leaves an empty /etc/pip.conf mount point behind.
build_volumes() {
  local ca=/etc/ssl/certs/ca-certificates.crt
  [[ -r $ca ]] && printf -- '--volume=%s:%s:ro\n' "$ca" "$ca"
  if [[ -n ${PYTHON_IMAGE:-} && -r /etc/pip.conf ]]; then
    log "note: mounting /etc/pip.conf for $PYTHON_IMAGE leaves an empty /etc/pip.conf in the images"
    printf -- '--volume=%s:%s:ro\n' /etc/pip.conf /etc/pip.conf
  fi
  return 0
}

export_archive() {
  local target=$1 image=${IMAGES[$1]} archive id
  archive=$(archive_of "$target")
  id=$(image_id "$image")
  if [[ -s $archive && -f $archive.id && $(<"$archive.id") == "$id" ]]; then
    log "$target: $archive is up to date (${id:0:12})"
    return
  fi
  mkdir -p "$ARCHIVES"
  rm -f "$archive.tmp"
  log "$target: writing $archive"
  buildah push --quiet "$image" "docker-archive:$archive.tmp:$image" >&2
  mv -f "$archive.tmp" "$archive"
  echo "$id" >"$archive.id"
}

main() {
  local start base target volumes
  start=$SECONDS
  # One build at a time per cache (the cluster scripts may call this too).
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock -n 9 || { log "waiting for another hack/images.sh ($CACHE/.lock)"; flock 9; }
  base=$(ensure_base)
  log "base ready after $((SECONDS - start)) s"
  mapfile -t volumes < <(build_volumes)
  for target in "${TARGETS[@]}"; do
    log "building $target as ${IMAGES[$target]} on $base"
    # --format docker: the OCI format has no HEALTHCHECK, buildah would drop it.
    # --layers: a step whose inputs did not change is reused, and so is the
    # final image (same id), when nothing changed at all.
    buildah bud --layers --format docker --target "$target" \
      --build-arg "PYTHON_IMAGE=$base" "${volumes[@]}" \
      --tag "${IMAGES[$target]}" --file "$REPO/Dockerfile" "$REPO" >&2
    log "$target built after $((SECONDS - start)) s"
  done
  for target in "${TARGETS[@]}"; do export_archive "$target"; done
  log "done in $((SECONDS - start)) s"
  print_archives
}

main

#!/usr/bin/env bash
# Make sure a base image for caliban exists and print its name on stdout.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/base-image.sh [--force-local] [--rebuild] [--help]

Prints the name of a usable caliban base image on stdout (one line);
progress goes to stderr.
  1. python:3.11-slim, if present locally or pullable within 20 s
     (skipped with --force-local, which CI and tests use to be deterministic);
  2. else caliban-local/base:bookworm, built once from Debian packages with
     debootstrap (Python 3, pip, numpy, scikit-learn, Jupyter notebook, tini)
     and `docker import`ed. Rebuilt only when its org.caliban.recipe label
     differs from this script's recipe (--rebuild: from scratch). The rootfs
     tarball is cached in ${CALIBAN_CACHE:-$HOME/.cache/caliban}/base, so a
     rebuild after `docker rmi` only re-imports it.

Environment: CALIBAN_CACHE, CALIBAN_DEBIAN_MIRROR (default: from apt
sources, else http://deb.debian.org/debian), DOCKER (client binary).
Building needs root on Debian/Ubuntu (debootstrap is installed if missing).
EOF
}

FORCE_LOCAL=0 REBUILD=0
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --force-local) FORCE_LOCAL=1 ;;
    --rebuild) REBUILD=1 ;;
    *) usage >&2; exit 2 ;;
  esac
done

log() { echo "base-image: [${SECONDS}s] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${DOCKER:-}" ]]; then
  if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi
export DOCKER
PUBLIC_IMAGE=python:3.11-slim
LOCAL_IMAGE=caliban-local/base:bookworm
SUITE=bookworm
CACHE="${CALIBAN_CACHE:-${HOME:-/root}/.cache/caliban}/base"

# What goes into the local image (apt, no recommends). python3-notebook alone
# has no `jupyter` command: jupyter-core gives /usr/bin/jupyter,
# jupyter-notebook gives /usr/bin/jupyter-notebook. passwd gives
# useradd/groupadd for the generated Dockerfiles; python-is-python3 gives
# `python`. (python3-sklearn drags in gcc, python3-dev and boost headers via
# python3-scipy -> python3-pythran, hence ~1.1 GB; pip can build C code, too.)
PACKAGES=(
  python3 python3-pip python3-venv python-is-python3
  python3-numpy python3-sklearn
  python3-notebook jupyter-notebook jupyter-core
  ca-certificates procps bash passwd tini
)
# CA certificates added on this host (e.g. for a TLS-intercepting proxy) are
# copied into the image, so pip/apt in containers trust what the host trusts.
# Disable with CALIBAN_HOST_CAS=0.
HOST_CAS=()
if [[ "${CALIBAN_HOST_CAS:-1}" != 0 ]]; then
  shopt -s nullglob; HOST_CAS=(/usr/local/share/ca-certificates/*.crt); shopt -u nullglob
fi
# Bump RECIPE_REV when the post-processing below changes; package and CA
# changes alter the hash by themselves. All invalidate image and tarball.
RECIPE_REV=1
RECIPE="$SUITE-r$RECIPE_REV-$({ printf '%s\n' "${PACKAGES[@]}"; cat ${HOST_CAS[@]+"${HOST_CAS[@]}"}; } | md5sum | cut -c1-8)"

"$HERE/ensure-docker.sh"

# --- 1. the public image ---------------------------------------------------
if [[ "$FORCE_LOCAL" == 0 ]]; then
  if "$DOCKER" image inspect "$PUBLIC_IMAGE" >/dev/null 2>&1; then
    echo "$PUBLIC_IMAGE"; exit 0
  fi
  log "trying to pull $PUBLIC_IMAGE (20 s)"
  if timeout 20 "$DOCKER" pull -q "$PUBLIC_IMAGE" >/dev/null 2>&1; then
    echo "$PUBLIC_IMAGE"; exit 0
  fi
  log "$PUBLIC_IMAGE unavailable; using $LOCAL_IMAGE"
fi

# --- 2. the local image ----------------------------------------------------
current_recipe() {
  "$DOCKER" image inspect -f '{{index .Config.Labels "org.caliban.recipe"}}' "$LOCAL_IMAGE" 2>/dev/null || true
}
if [[ "$REBUILD" == 0 && "$(current_recipe)" == "$RECIPE" ]]; then
  echo "$LOCAL_IMAGE"; exit 0
fi

mkdir -p "$CACHE"
# Serialize concurrent builds (parallel tests); re-check once we hold the lock.
exec 9>"$CACHE/.lock"
flock 9
if [[ "$REBUILD" == 0 && "$(current_recipe)" == "$RECIPE" ]]; then
  echo "$LOCAL_IMAGE"; exit 0
fi

TARBALL="$CACHE/rootfs-$RECIPE.tar"

# First "deb"/"URIs" entry of the main Debian archive in apt's sources.
detect_mirror() {
  local m
  m="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -oE '^(deb|URIs:)[[:space:]]+(\[[^]]*\][[:space:]]+)?https?://[^[:space:]]+' |
    awk '{print $NF}' | grep -E '/debian/?$' | head -n1 || true)"
  echo "${m:-http://deb.debian.org/debian}"
}

rootfs=""
cleanup_rootfs() {
  [[ -n "$rootfs" ]] || return 0
  # debootstrap mounts /proc etc. inside the target; never leave them behind.
  local m
  for m in proc sys dev/pts dev; do umount -l "$rootfs/$m" 2>/dev/null || true; done
  if grep -qF " $rootfs/" /proc/mounts; then   # a bind-mounted host /dev must survive
    log "warning: mounts remain under $rootfs; not deleting it"
  else
    rm -rf "$rootfs"
  fi
  rm -f "$TARBALL.partial"
}

build_tarball() {
  [[ "$(id -u)" == 0 ]] || die "building $LOCAL_IMAGE needs root (debootstrap)"
  if ! command -v debootstrap >/dev/null 2>&1; then
    [[ -r /etc/debian_version ]] || die "debootstrap missing and this is not Debian/Ubuntu"
    log "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q debootstrap >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; }
  fi
  local mirror blog="$CACHE/build.log"
  mirror="${CALIBAN_DEBIAN_MIRROR:-$(detect_mirror)}"
  rootfs="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  trap cleanup_rootfs EXIT
  : >"$blog"
  # debootstrap only a bare system: its own resolver ignores virtual packages
  # (python3-zmq -> python3-cffi-backend-api-*) and fails on the notebook
  # stack, so the real package set goes in with apt inside the chroot.
  log "debootstrap --variant=minbase $SUITE from $mirror (log: $blog)"
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >>"$blog" 2>&1 ||
    { cat "$rootfs/debootstrap/debootstrap.log" >>"$blog" 2>/dev/null; tail -n 20 "$blog" >&2; die "debootstrap failed"; }
  log "apt-get install ${#PACKAGES[@]} packages in the chroot"
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"   # start no services
  chmod +x "$rootfs/usr/sbin/policy-rc.d"
  mkdir -p "$rootfs/usr/local/share/ca-certificates"
  [[ ${#HOST_CAS[@]} == 0 ]] || cp "${HOST_CAS[@]}" "$rootfs/usr/local/share/ca-certificates/"
  mount -t proc proc "$rootfs/proc"
  chroot "$rootfs" /usr/bin/env DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin /bin/sh -ec "
    apt-get update -q
    apt-get install -y -q --no-install-recommends ${PACKAGES[*]}
    update-ca-certificates
    apt-get clean" >>"$blog" 2>&1 ||
    { tail -n 20 "$blog" >&2; die "apt-get in the chroot failed"; }
  umount "$rootfs/proc"
  rm -f "$rootfs/usr/sbin/policy-rc.d"
  log "cleaning rootfs"
  # The container's system Python is ours to manage: let plain `pip install` work.
  rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
  # Dockerfiles run `apt-get update` first; no need to ship caches or lists.
  rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/* "$rootfs"/var/tmp/*
  # Docker provides these at run time; don't ship the build host's copies.
  rm -f "$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname
  # /dev is a tmpfs in containers; skip the device nodes debootstrap made.
  tar --numeric-owner -C "$rootfs" --exclude='./dev/*' -cf "$TARBALL.partial" .
  mv "$TARBALL.partial" "$TARBALL"
}

if [[ "$REBUILD" == 1 || ! -s "$TARBALL" ]]; then
  rm -f "$CACHE"/rootfs-*.tar   # tarballs of older recipes are dead weight
  build_tarball
fi

log "importing $TARBALL as $LOCAL_IMAGE"
old_id="$("$DOCKER" image inspect -f '{{.Id}}' "$LOCAL_IMAGE" 2>/dev/null || true)"
"$DOCKER" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL org.caliban.recipe=$RECIPE caliban.managed=true" \
  "$TARBALL" "$LOCAL_IMAGE" >/dev/null
# Smoke test, incl. --init (tini as docker-init) which caliban's runs use.
"$DOCKER" run --rm --init --network none "$LOCAL_IMAGE" \
  python3 -c 'import numpy, sklearn, notebook' >/dev/null ||
  die "$LOCAL_IMAGE failed its smoke test"
# Drop the image of an older recipe that the new tag replaced (if unused).
new_id="$("$DOCKER" image inspect -f '{{.Id}}' "$LOCAL_IMAGE")"
if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then "$DOCKER" rmi "$old_id" >/dev/null 2>&1 || true; fi
echo "$LOCAL_IMAGE"

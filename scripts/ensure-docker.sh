#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine; start one if we can.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/ensure-docker.sh [--help]

Makes sure a Docker engine answers `docker info`.
  * engine already up          -> one status line on stderr, exit 0
  * Debian/Ubuntu and root     -> install docker.io with apt if dockerd is
                                  missing, start dockerd in the background
                                  (log: $CALIBAN_DOCKERD_LOG, default
                                  /var/log/caliban-dockerd.log), wait <= 60 s
  * otherwise                  -> fail with a hint on how to start Docker
Also makes sure `docker-init` (tini, used by `docker run --init`) exists.

Environment: DOCKER (client binary; default /usr/bin/docker if present,
because a newer /usr/local/bin/docker may not match the daemon).
EOF
}
case "${1:-}" in -h|--help) usage; exit 0 ;; "") ;; *) usage >&2; exit 2 ;; esac

log() { echo "ensure-docker: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Debian's client matches Debian's daemon; prefer it over whatever is first on PATH.
if [[ -z "${DOCKER:-}" ]]; then
  if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi
DOCKERD_LOG="${CALIBAN_DOCKERD_LOG:-/var/log/caliban-dockerd.log}"
WAIT_SECS="${CALIBAN_DOCKERD_WAIT:-60}"

engine_up() { "$DOCKER" info >/dev/null 2>&1; }
is_debian() { [[ -r /etc/debian_version ]]; }   # true on Debian and Ubuntu
is_root() { [[ "$(id -u)" == 0 ]]; }

# apt-get install, running `apt-get update` only when the package is unknown
# (fresh machines often have empty package lists).
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1; then
    log "apt-get update"
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "$@" >/dev/null
  fi
}

# `docker run --init` needs docker-init on dockerd's PATH or in a libexec dir.
# Debian's docker.io ships /usr/bin/docker-init -> tini-static (package tini).
ensure_docker_init() {
  local d
  command -v docker-init >/dev/null 2>&1 && return 0
  for d in /usr/local/libexec/docker /usr/libexec/docker /usr/local/lib/docker /usr/lib/docker; do
    [[ -x "$d/docker-init" ]] && return 0
  done
  if ! { is_root && is_debian; }; then
    log "warning: docker-init not found; 'docker run --init' will fail"; return 0
  fi
  log "installing tini for docker-init"
  apt_install tini
  if ! command -v docker-init >/dev/null 2>&1; then
    local t; t="$(command -v tini-static || command -v tini)" || die "tini installed but not found"
    ln -sf "$t" /usr/local/bin/docker-init
  fi
}

if engine_up; then
  ensure_docker_init
  log "engine up ($("$DOCKER" version --format 'server {{.Server.Version}}, API {{.Server.APIVersion}}' 2>/dev/null || echo '?'))"
  exit 0
fi

case "${DOCKER_HOST:-}" in
  ""|unix:///var/run/docker.sock|unix:///run/docker.sock) ;;
  *) die "no Docker engine answers at DOCKER_HOST=$DOCKER_HOST (not starting a local one)" ;;
esac
if ! is_root || ! is_debian; then
  die "no Docker engine answers; start it (e.g. 'sudo systemctl start docker' or 'sudo dockerd &') or set DOCKER_HOST"
fi

if ! command -v dockerd >/dev/null 2>&1 && [[ ! -x /usr/sbin/dockerd ]]; then
  log "installing docker.io with apt"
  apt_install docker.io
  [[ -x "$DOCKER" ]] || DOCKER=/usr/bin/docker
  # The package's init script may already have started the daemon.
  sleep 1
fi
ensure_docker_init

if ! engine_up; then
  if [[ -d /run/systemd/system ]]; then
    # systemd is PID 1: let it own the daemon.
    log "starting docker via systemctl"
    systemctl start docker || true
  elif pgrep -x dockerd >/dev/null 2>&1; then
    log "dockerd is already running; waiting for it"
  else
    log "starting dockerd (log: $DOCKERD_LOG)"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # setsid+nohup: the daemon must outlive this script and its terminal.
    PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH" \
      setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
  fi
  for ((i = 0; i < WAIT_SECS * 2; i++)); do
    engine_up && break
    sleep 0.5
  done
  if ! engine_up; then
    log "dockerd did not answer within ${WAIT_SECS}s; last log lines:"
    tail -n 30 "$DOCKERD_LOG" >&2 2>/dev/null || true
    exit 1
  fi
fi
log "engine up ($("$DOCKER" version --format 'server {{.Server.Version}}, API {{.Server.APIVersion}}' 2>/dev/null || echo '?'))"

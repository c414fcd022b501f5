#!/usr/bin/env bash
# Run a throw-away local image registry (Debian's docker-registry) for tests.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/registry.sh start [PORT] | stop | url | --help

  start [PORT]  start docker-registry on 127.0.0.1:PORT (default: a free port,
                or $CALIBAN_REGISTRY_PORT) with filesystem storage in a fresh
                temp dir, no auth, deletes enabled; wait until GET /v2/ is 200;
                print 127.0.0.1:PORT on stdout. If one is already running,
                just print its address.
  stop          stop it and delete its storage (no-op when not running)
  url           print 127.0.0.1:PORT of the running registry, or exit 1

dockerd treats 127.0.0.0/8 as an insecure registry, so plain-HTTP
`docker push 127.0.0.1:PORT/...` works without daemon configuration.
State (pid, config, log) lives in $CALIBAN_REGISTRY_DIR, default
${CALIBAN_CACHE:-$HOME/.cache/caliban}/registry; give each concurrent
instance its own CALIBAN_REGISTRY_DIR. Installs the docker-registry package
with apt if missing (root on Debian/Ubuntu).
EOF
}

log() { echo "registry: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

STATE="${CALIBAN_REGISTRY_DIR:-${CALIBAN_CACHE:-${HOME:-/root}/.cache/caliban}/registry}"
PIDFILE="$STATE/registry.pid" ADDRFILE="$STATE/addr" STOREFILE="$STATE/storage"
CONFIG="$STATE/config.yml" LOGFILE="$STATE/registry.log"

# GET /v2/ with bash's /dev/tcp (no curl needed); true on HTTP 200.
probe() {
  local addr="$1" line
  (
    exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}" || exit 1
    printf 'GET /v2/ HTTP/1.0\r\nHost: %s\r\n\r\n' "$addr" >&3
    IFS= read -r -t 3 line <&3 || exit 1
    [[ "$line" == HTTP/*" 200 "* ]]
  ) 2>/dev/null
}

# True if the pid file names a live docker-registry process (not a reused pid).
running() {
  local pid
  [[ -s "$PIDFILE" ]] || return 1
  pid="$(cat "$PIDFILE")"
  kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q docker-registry
}

# True if nobody listens on 127.0.0.1:PORT (connecting is refused).
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local p i
  for ((i = 0; i < 50; i++)); do
    p=$((20000 + RANDOM % 40000))
    port_free "$p" && { echo "$p"; return 0; }
  done
  die "no free port found"
}

registry_bin() {
  local b
  b="$(command -v docker-registry || true)"
  [[ -z "$b" && -x /usr/bin/docker-registry ]] && b=/usr/bin/docker-registry
  if [[ -z "$b" ]]; then
    [[ "$(id -u)" == 0 && -r /etc/debian_version ]] ||
      die "docker-registry not found; install Debian's docker-registry package"
    log "installing docker-registry with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends docker-registry >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends docker-registry >/dev/null; }
    b=/usr/bin/docker-registry
  fi
  echo "$b"
}

cleanup_state() {
  [[ -s "$STOREFILE" ]] && rm -rf "$(cat "$STOREFILE")"
  rm -f "$PIDFILE" "$ADDRFILE" "$STOREFILE" "$CONFIG"
}

cmd_stop() {
  if running; then
    local pid i
    pid="$(cat "$PIDFILE")"
    kill "$pid"
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $(cat "$ADDRFILE" 2>/dev/null)"
  fi
  cleanup_state
}

cmd_url() {
  if ! { running && probe "$(cat "$ADDRFILE")"; }; then die "not running (state: $STATE)"; fi
  cat "$ADDRFILE"
}

cmd_start() {
  local port="${1:-${CALIBAN_REGISTRY_PORT:-}}" bin storage addr pid i
  if running && probe "$(cat "$ADDRFILE")"; then
    addr="$(cat "$ADDRFILE")"
    [[ -z "$port" || "$addr" == "127.0.0.1:$port" ]] || die "already running at $addr; stop it first"
    log "already running at $addr"
    echo "$addr"; return 0
  fi
  cmd_stop   # clear a dead instance's leftovers
  bin="$(registry_bin)"
  [[ -n "$port" ]] || port="$(free_port)"
  # Otherwise the readiness probe below could be answered by someone else.
  port_free "$port" || die "port $port is already in use"
  addr="127.0.0.1:$port"
  mkdir -p "$STATE"
  storage="$(mktemp -d "${TMPDIR:-/tmp}/caliban-registry.XXXXXX")"
  echo "$storage" >"$STOREFILE"
  cat >"$CONFIG" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $storage
  delete:
    enabled: true
http:
  addr: $addr
EOF
  log "starting $bin on $addr (log: $LOGFILE)"
  # setsid+nohup: outlive this script and the caller's process group.
  setsid nohup "$bin" serve "$CONFIG" >"$LOGFILE" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PIDFILE"
  echo "$addr" >"$ADDRFILE"
  for ((i = 0; i < 150; i++)); do
    probe "$addr" && { echo "$addr"; return 0; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 20 "$LOGFILE" >&2 || true
  cmd_stop
  die "registry did not answer on $addr"
}

case "${1:-}" in
  -h|--help) usage ;;
  start) shift; [[ $# -le 1 ]] || { usage >&2; exit 2; }; cmd_start "$@" ;;
  stop) cmd_stop ;;
  url) cmd_url ;;
  *) usage >&2; exit 2 ;;
esac

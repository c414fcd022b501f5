#!/usr/bin/env bash
# A login node over ssh on this machine, for the tests of `caliban slurm --host`.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/ssh-login.sh start | stop | status | --help

  start   install Debian's openssh-server if sshd is missing (apt, no
          recommends), write a host key, a client key for root and an
          sshd_config under the state dir, start sshd on 127.0.0.1:$PORT in the
          background and wait until it answers. Does nothing to an sshd it
          already started that still answers.
  stop    stop the sshd this script started (no-op when none is running)
  status  exit 0 when the login node answers, 1 otherwise

Root only. Nothing outside the state dir is changed (the system's sshd_config,
host keys and ~/.ssh are left alone): state lives in $CALIBAN_SSHD_DIR, default
/tmp/caliban-sshd, port $CALIBAN_SSHD_PORT, default 2222. The state dir has an
ssh client configuration, ssh_config, in which `Host localhost` reaches this
sshd with the client key and its own known_hosts; `ssh -F DIR/ssh_config
root@localhost` logs in. Tests use it as the user's ssh configuration.
EOF
}

log() { echo "ssh-login: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

STATE="${CALIBAN_SSHD_DIR:-/tmp/caliban-sshd}"
PORT="${CALIBAN_SSHD_PORT:-2222}"
SSHD=/usr/sbin/sshd

alive() {
  local pid
  [[ -s "$STATE/sshd.pid" ]] || return 1
  pid="$(cat "$STATE/sshd.pid")"
  kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q sshd
}

answers() {
  ssh -F "$STATE/ssh_config" -o BatchMode=yes -o ConnectTimeout=5 root@localhost true 2>/dev/null
}

install_packages() {
  [[ -x "$SSHD" ]] && return 0
  [[ "$(id -u)" == 0 && -r /etc/debian_version ]] || die "sshd is not installed; install Debian's openssh-server"
  log "installing openssh-server with apt"
  export DEBIAN_FRONTEND=noninteractive
  # Package scripts try to start services; there is no init system to do so here.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' RETURN
  apt-get install -y -q --no-install-recommends openssh-server >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends openssh-server >/dev/null; }
}

write_config() {
  mkdir -p "$STATE"
  chmod 700 "$STATE"
  [[ -s "$STATE/host_ed25519" ]] || ssh-keygen -q -t ed25519 -N '' -C caliban-test-host -f "$STATE/host_ed25519"
  [[ -s "$STATE/id_ed25519" ]] || ssh-keygen -q -t ed25519 -N '' -C caliban-test-client -f "$STATE/id_ed25519"
  cp "$STATE/id_ed25519.pub" "$STATE/authorized_keys"
  chmod 600 "$STATE/authorized_keys"
  echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$STATE/host_ed25519.pub")" >"$STATE/known_hosts"
  cat >"$STATE/sshd_config" <<EOF
# Written by caliban's scripts/ssh-login.sh; rewritten on each start.
ListenAddress 127.0.0.1
Port $PORT
HostKey $STATE/host_ed25519
PidFile $STATE/sshd.pid
AuthorizedKeysFile $STATE/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The state dir is root-only (700), but /tmp above it is world-writable.
StrictModes no
X11Forwarding no
LogLevel ERROR
EOF
  cat >"$STATE/ssh_config" <<EOF
# Written by caliban's scripts/ssh-login.sh: the test login node.
Host localhost
  HostName 127.0.0.1
  Port $PORT
  IdentityFile $STATE/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $STATE/known_hosts
  StrictHostKeyChecking yes
EOF
  chmod 600 "$STATE/ssh_config"
}

start() {
  [[ "$(id -u)" == 0 ]] || die "run as root"
  install_packages
  if alive && answers; then
    return 0
  fi
  alive && kill "$(cat "$STATE/sshd.pid")" && sleep 0.2
  write_config
  # sshd refuses to start without its privilege separation folder.
  mkdir -p /run/sshd && chmod 755 /run/sshd
  "$SSHD" -t -f "$STATE/sshd_config" || die "sshd refuses $STATE/sshd_config"
  "$SSHD" -f "$STATE/sshd_config" -E "$STATE/sshd.log"
  local i
  for ((i = 0; i < 100; i++)); do
    answers && { log "up: root@localhost on 127.0.0.1:$PORT (ssh -F $STATE/ssh_config)"; return 0; }
    sleep 0.1
  done
  die "sshd does not answer on 127.0.0.1:$PORT; see $STATE/sshd.log"
}

stop() {
  if alive; then
    kill "$(cat "$STATE/sshd.pid")"
    rm -f "$STATE/sshd.pid"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) answers ;;
  -h | --help) usage ;;
  *) usage >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A one-node Slurm cluster (slurmctld + slurmd + munged) for caliban's tests.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/slurm-cluster.sh start | stop | status | --help

  start   install Debian's slurm-wlm, munge, slurmrestd and runc if missing (apt,
          no recommends), write a one-node configuration with four simulated GPUs
          and an oci.conf for `sbatch --container` (runc) under the state dir, start munged, slurmctld and slurmd in the
          background, and wait until the node is idle. Does nothing to a
          cluster that is already up.
  stop    stop the daemons this script started (no-op when none is running)
  status  print the node and partitions (sinfo), exit 1 when the cluster is down

Root only (slurmd runs jobs as their submitter, and CI jobs run `docker run`).
State (configuration, spool, logs, the jobcomp file) lives in
$CALIBAN_SLURM_DIR, default /tmp/caliban-slurm. The configuration is linked
as /etc/slurm/slurm.conf unless a site configuration is already there (then
export SLURM_CONF=$CALIBAN_SLURM_DIR/slurm.conf to reach this cluster).

Partitions: `debug` (default, no time limit) and `short` (MaxTime 10 minutes,
for tests of limits the cluster refuses). GPUs are character devices
$CALIBAN_SLURM_DIR/dev/nvidia[0-3] (copies of /dev/null) named by gres.conf, so
`--gres=gpu:K` jobs get CUDA_VISIBLE_DEVICES / SLURM_JOB_GPUS of their own.

Containers: oci.conf (beside slurm.conf) runs `sbatch --container=BUNDLE` jobs
with runc as root (state in $CALIBAN_SLURM_DIR/runc), through RunTimeRun so
the job's exit code is the program's (caliban's `slurm submit --runtime oci`).
Slurm reads oci.conf when a job step starts: writing it needs no restart.
EOF
}

log() { echo "slurm-cluster: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

STATE="${CALIBAN_SLURM_DIR:-/tmp/caliban-slurm}"
CONF="$STATE/slurm.conf"
ETC=/etc/slurm/slurm.conf
NODE="$(hostname -s)"
CPUS="${CALIBAN_SLURM_CPUS:-8}"
GPUS=4

# True if the pid file $1 names a live process whose command line has $2.
alive() {
  local pid
  [[ -s "$1" ]] || return 1
  pid="$(cat "$1")"
  kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$2"
}

PACKAGES=(slurm-wlm munge slurmrestd runc)

install_packages() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null &&
    command -v slurmrestd >/dev/null && command -v runc >/dev/null && return 0
  [[ "$(id -u)" == 0 && -r /etc/debian_version ]] ||
    die "Slurm is not installed; install Debian's ${PACKAGES[*]} packages"
  log "installing ${PACKAGES[*]} with apt"
  export DEBIAN_FRONTEND=noninteractive
  # Package scripts try to start services; there is no init system to do so here.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' RETURN
  apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null; }
}

# oci.conf for `sbatch --container`: runc as root. Slurm 22.05 wants RunTimeQuery,
# RunTimeKill and RunTimeDelete beside RunTimeRun (or Create+Start); only
# RunTimeRun ends the job with the program's exit status. The query prints a
# stopped state for a container runc no longer knows (`runc run` removes it at
# exit), so Slurm's clean-up does not write a JSON error into every job's output.
write_oci_conf() {
  local runc
  runc="$(command -v runc)" || { log "no runc: sbatch --container will not work"; return 0; }
  mkdir -p "$STATE/runc"
  cat >"$STATE/oci-query.new" <<EOF
#!/bin/sh
# RunTimeQuery of oci.conf: runc's state of container \$1, or "stopped" once it is gone.
$runc --root=$STATE/runc state "\$1" 2>/dev/null || echo '{"status": "stopped"}'
EOF
  chmod 755 "$STATE/oci-query.new"
  mv "$STATE/oci-query.new" "$STATE/oci-query"
  cat >"$STATE/oci.conf.new" <<EOF
# Written by caliban's scripts/slurm-cluster.sh: sbatch --container with runc.
RunTimeQuery="$STATE/oci-query %n.%u.%j.%s.%t"
RunTimeRun="$runc --root=$STATE/runc run %n.%u.%j.%s.%t -b %b"
RunTimeKill="$runc --root=$STATE/runc kill -a %n.%u.%j.%s.%t"
RunTimeDelete="$runc --root=$STATE/runc delete --force %n.%u.%j.%s.%t"
EOF
  chmod 644 "$STATE/oci.conf.new"
  mv "$STATE/oci.conf.new" "$STATE/oci.conf"
}

write_config() {
  local mem i
  mkdir -p "$STATE"/{ctld,spool,dev,log}
  chmod 755 "$STATE"
  for ((i = 0; i < GPUS; i++)); do
    # Slurm binds GPUs by device file; /dev/null's numbers make harmless ones.
    [[ -c "$STATE/dev/nvidia$i" ]] || { rm -f "$STATE/dev/nvidia$i"; mknod "$STATE/dev/nvidia$i" c 1 3; }
  done
  mem=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))
  cat >"$STATE/gres.conf" <<EOF
Name=gpu File=$STATE/dev/nvidia[0-$((GPUS - 1))]
EOF
  cat >"$CONF.new" <<EOF
# Written by caliban's scripts/slurm-cluster.sh; rewritten on each start.
ClusterName=caliban
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# No cgroup hierarchy without systemd: track processes by their parents.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
# No slurmdbd here: finished jobs are kept one line each in this file.
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.txt
SchedulerParameters=batch_sched_delay=0
# Advertise $CPUS CPUs whatever the machine has, so arrays run side by side.
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=ALL MaxTime=10 State=UP
EOF
  mv "$CONF.new" "$CONF"
  chmod 644 "$CONF" "$STATE/gres.conf"
  write_oci_conf
  mkdir -p /etc/slurm
  if [[ ! -e "$ETC" || "$(readlink "$ETC" || true)" == "$CONF" ]]; then
    ln -sfn "$CONF" "$ETC"
  else
    log "a site configuration is in $ETC; export SLURM_CONF=$CONF to use this cluster"
  fi
}

start_munge() {
  if [[ -S /run/munge/munge.socket.2 ]] && munge -n </dev/null >/dev/null 2>&1; then
    return 0
  fi
  mkdir -p /run/munge /etc/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 755 /run/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 700 /etc/munge
  chmod 400 /etc/munge/munge.key
  runuser -u munge -- munged --force
  touch "$STATE/munged.ours"
}

wait_idle() {
  local i state
  for ((i = 0; i < 300; i++)); do
    state="$(SLURM_CONF="$CONF" sinfo -h -n "$NODE" -o %T 2>/dev/null || true)"
    [[ "$state" == idle || "$state" == mixed || "$state" == allocated ]] && return 0
    sleep 0.1
  done
  die "the node did not become idle (state: ${state:-none}); see $STATE/log/"
}

start() {
  [[ "$(id -u)" == 0 ]] || die "run as root"
  install_packages
  if alive "$STATE/slurmctld.pid" slurmctld && alive "$STATE/slurmd.pid" slurmd; then
    # A cluster started by an older version of this script gains oci.conf
    # without a restart (slurmstepd reads it per job step).
    [[ -s "$STATE/oci.conf" ]] || write_oci_conf
    wait_idle
    return 0
  fi
  write_config
  start_munge
  alive "$STATE/slurmctld.pid" slurmctld || SLURM_CONF="$CONF" slurmctld -f "$CONF"
  alive "$STATE/slurmd.pid" slurmd || SLURM_CONF="$CONF" slurmd -f "$CONF"
  wait_idle
  log "up: node $NODE, $CPUS CPUs, $GPUS GPUs, state in $STATE"
}

stop_one() {
  local pidfile="$STATE/$1.pid" i
  alive "$pidfile" "$1" || return 0
  kill "$(cat "$pidfile")" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    alive "$pidfile" "$1" || return 0
    sleep 0.1
  done
  kill -9 "$(cat "$pidfile")" 2>/dev/null || true
}

stop() {
  stop_one slurmd
  stop_one slurmctld
  if [[ -e "$STATE/munged.ours" ]]; then
    if [[ -s /run/munge/munged.pid ]]; then kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true; fi
    rm -f "$STATE/munged.ours"
  fi
}

status() {
  alive "$STATE/slurmctld.pid" slurmctld || { log "slurmctld is not running"; exit 1; }
  alive "$STATE/slurmd.pid" slurmd || { log "slurmd is not running"; exit 1; }
  SLURM_CONF="$CONF" sinfo
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  -h | --help) usage ;;
  *) usage >&2; exit 2 ;;
esac

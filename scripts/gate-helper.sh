#!/usr/bin/env bash
# Compile caliban's static gate helper (pre-warmed local sweeps) into its cache.
set -euo pipefail

usage() {
  cat <<'EOF2'
Usage: scripts/gate-helper.sh [--help]

Prints the path of caliban's gate helper on stdout, compiling it first if it is
not cached yet (${CALIBAN_CACHE:-$HOME/.cache/caliban}/gate-*). Pre-warmed local
sweeps start each container with it (caliban/platforms/local/gate.c); without
it they use plain starts. Compiling needs a C compiler and a static C library;
as root on Debian/Ubuntu, gcc and libc6-dev are installed when missing.
With CI=1 a helper that cannot be made is an error; otherwise a warning.
Environment: PYTHON (default .venv/bin/python), CC.
EOF2
}
case "${1:-}" in -h|--help) usage; exit 0 ;; "") ;; *) usage >&2; exit 2 ;; esac

cd "$(dirname "$0")/.."
log() { echo "gate-helper: $*" >&2; }
PY="${PYTHON:-.venv/bin/python}"

static_cc() {
  printf 'int main(void) { return 0; }\n' |
    "${CC:-cc}" -static -x c -o /dev/null - >/dev/null 2>&1
}

if ! static_cc; then
  if [[ "$(id -u)" == 0 && -r /etc/debian_version ]] && command -v apt-get >/dev/null; then
    log "installing gcc and libc6-dev (a static C library) for the gate helper"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends gcc libc6-dev >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null &&
        apt-get install -y -q --no-install-recommends gcc libc6-dev >/dev/null; }
  fi
fi

if ! "$PY" -c '
import os, sys
from caliban.platforms.local.gate import build_helper
path = build_helper(os.environ)
sys.exit(1) if path is None else print(path)
'; then
  if [[ "${CI:-}" == 1 ]]; then
    log "ERROR: the gate helper cannot be compiled here (no C compiler or static C library)"
    exit 1
  fi
  log "warning: no C compiler with a static C library: pre-warmed sweeps use plain starts"
fi

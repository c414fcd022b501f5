#!/usr/bin/env bash
# Every Python interpreter on this machine that caliban supports (3.10+), one path
# a line: the system's /usr/bin/python3 and pyenv's 3.10-3.13 builds.
set -euo pipefail
declare -A seen=()
for py in /usr/bin/python3 "${PYENV_ROOT:-/root/.pyenv}"/versions/3.1[0-3]*/bin/python; do
    [[ -x "$py" ]] || continue
    real="$(readlink -f "$py")"
    [[ -z "${seen[$real]:-}" ]] || continue
    seen[$real]=1
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null && echo "$py"
done
exit 0

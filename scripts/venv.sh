#!/usr/bin/env bash
# Make (or refresh) the project's venv: scripts/venv.sh VENV, with $PYTHON (default
# python3) as its interpreter. Installs the package editable with every extra and
# the dev tools, at the versions of constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
python="${PYTHON:-python3}"

fail() { echo "make: $*" >&2; exit 1; }

command -v "$python" >/dev/null || fail "no $python; install Python 3.10+ or run make PYTHON=/path/to/python3"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    fail "$python is Python $("$python" -c 'import platform; print(platform.python_version())'); caliban needs 3.10+ (make PYTHON=/path/to/python3.10+)"

if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    # Debian and Ubuntu ship venv's pip bootstrap separately (python3.X-venv).
    if ! "$python" -c 'import ensurepip' 2>/dev/null; then
        pkg="python$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            echo "installing $pkg (venv support for $python)" >&2
            export DEBIAN_FRONTEND=noninteractive
            apt-get install -y -qq "$pkg" >/dev/null 2>&1 ||
                { apt-get update -qq >/dev/null && apt-get install -y -qq "$pkg" >/dev/null; } ||
                fail "could not install $pkg; install it, or run make PYTHON=/path/to/python3"
        else
            fail "$python cannot make a venv: run \`sudo apt-get install $pkg\` (or make PYTHON=/path/to/python3)"
        fi
    fi
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# This project was the distribution `caliban` before it became caliban-async; both
# own bin/caliban, so the old one goes first.
if "${pip[@]}" show --quiet caliban >/dev/null 2>&1; then
    "${pip[@]}" uninstall --quiet --yes caliban
fi
"${pip[@]}" install --quiet -c constraints.txt -e '.[dev]'

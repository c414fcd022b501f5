"""How ``caliban shell`` starts its shell so that the image's Python stays first on PATH.

The user's home is mounted, so their ``.bashrc``/``.zshrc`` runs, and pyenv or
conda init there puts the host's Python ahead of the image's: ``import sklearn``
then fails although the image has it. The shell is started through a small
wrapper: it remembers the image's PATH, runs the usual rc files, and if they
made ``python3`` resolve elsewhere it puts the image's PATH first again and
says once which file did it.
"""

from __future__ import annotations

from collections.abc import Sequence

IMAGE_PATH_ENV = "CALIBAN_IMAGE_PATH"

# POSIX sh, sourced last by bash and zsh alike; __RCFILE__ becomes the file it follows.
_KEEP_IMAGE_PYTHON = r"""
if [ -n "${CALIBAN_IMAGE_PATH:-}" ]; then
  __caliban_py=$(PATH="$CALIBAN_IMAGE_PATH" command -v python3 2>/dev/null)
  __caliban_now=$(command -v python3 2>/dev/null)
  if [ -n "$__caliban_py" ] && [ "$__caliban_now" != "$__caliban_py" ]; then
    __caliban_what="the image's Python is first again"
    printf 'caliban: %s put %s ahead of %s on PATH; %s\n' \
      "__RCFILE__" "${__caliban_now:-another python3}" "$__caliban_py" "$__caliban_what" >&2
    PATH="$CALIBAN_IMAGE_PATH:$PATH"
    export PATH
    hash -r 2>/dev/null
  fi
  unset __caliban_py __caliban_now __caliban_what
fi
"""

_BASHRC = (
    '[ -f /etc/bash.bashrc ] && . /etc/bash.bashrc\n[ -f "$HOME/.bashrc" ] && . "$HOME/.bashrc"\n'
    + _KEEP_IMAGE_PYTHON.replace("__RCFILE__", "~/.bashrc")
)
_ZSHENV = '[ -f "$HOME/.zshenv" ] && . "$HOME/.zshenv"\n'
_ZSHRC = (
    'ZDOTDIR="$HOME"\n[ -f "$HOME/.zshrc" ] && . "$HOME/.zshrc"\n'
    + _KEEP_IMAGE_PYTHON.replace("__RCFILE__", "~/.zshrc")
)

# The rc text arrives as arguments, not environment, so the shell's `env` stays clean.
_START_BASH = (
    f'export {IMAGE_PATH_ENV}="$PATH"; d=$(mktemp -d) && printf "%s" "$1" > "$d/bashrc"'
    ' && exec /bin/bash --rcfile "$d/bashrc" -i'
)
_START_ZSH = (
    f'export {IMAGE_PATH_ENV}="$PATH"; d=$(mktemp -d) && printf "%s" "$1" > "$d/.zshenv"'
    ' && printf "%s" "$2" > "$d/.zshrc" && ZDOTDIR="$d" exec /bin/zsh -i'
)


def entrypoint(shell: str) -> Sequence[str]:
    """The container's entrypoint for an interactive ``shell`` (bash or zsh)."""
    if shell == "zsh":
        return ["/bin/sh", "-c", _START_ZSH, "caliban-shell", _ZSHENV, _ZSHRC]
    return ["/bin/sh", "-c", _START_BASH, "caliban-shell", _BASHRC]

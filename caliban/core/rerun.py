"""The command that runs one recorded job again, exactly: same image, same arguments.

Built from the command line recorded as the job's provenance: the flags that chose
a sweep or a group (``--experiment_config``, ``--xgroup``...) go, the image the
job ran is pinned, and the job's own arguments (experiment flags and script
arguments, as the script received them) follow ``--``. Pure: strings only.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

# Flags that pick what to run or where to record it, not how a job runs.
_DROP_WITH_VALUE = frozenset(
    {"--experiment_config", "--xgroup", "--image_id", "--image_tag", "--max_sweep", "--export"}
)
_DROP = frozenset({"--dry_run", "--json", "--force"})


def rerun_argv(
    command: Sequence[str], *, entry: str | None, image: str, args: Sequence[str], platform: str
) -> list[str] | None:
    """``command`` (``caliban SUBCOMMAND ...`` as recorded) rewritten to run one job
    of it again; None when the record lacks what that needs."""
    if len(command) < 2 or entry is None:
        return None
    own = list(command[1:])
    if "--" in own:
        own = own[: own.index("--")]
    kept: list[str] = []
    skip = False
    entry_seen = False
    for token in own:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in _DROP_WITH_VALUE:
            skip = "=" not in token
            continue
        if name in _DROP:
            continue
        if token == entry and not entry_seen:
            entry_seen = True
            continue
        kept.append(token)
    if not entry_seen:
        return None
    pin = "--image_id" if platform == "local" else "--image_tag"
    return [command[0], *kept, pin, image, entry, "--", *args]


def rerun_command(
    command: Sequence[str], *, entry: str | None, image: str, args: Sequence[str], platform: str
) -> str | None:
    argv = rerun_argv(command, entry=entry, image=image, args=args, platform=platform)
    return shlex.join(argv) if argv is not None else None

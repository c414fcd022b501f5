"""Benchmark: the pre-push key scan of a 5,000-file build context.

The scan (``caliban.adapters.build.find_secrets``) walks the context with the credential
rules and reads the first 16 KiB of every file that would be sent. Measured in
the same run: the plain walk with ``.dockerignore`` only (what the scan adds
over listing the files), and the content hash every build already computes
(``scan_context``, reading every byte). Files are warm in the page cache, as they
are right after editing. Prints one JSON object (best of ``--repeat`` runs).

Run: .venv/bin/python benchmarks/secret_scan.py [--files 5000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from caliban.adapters.build import find_secrets, scan_context
from caliban.core import dockerfile
from caliban.core.dockerignore import DockerIgnore, walk_context
from caliban.core.project import resolve_entrypoint
from caliban.spec import JobMode


def make_folder(root: Path, files: int) -> None:
    """Code and text in 50 packages, 2% of it 1 MB binaries, plus a 2,000-object .git."""
    rng = random.Random(0)
    (root / "train.py").write_text("print('hi')\n")
    for i in range(files - 1):
        folder = root / f"pkg{i % 50}" / f"sub{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        if i % 50 == 0:
            (folder / f"weights{i}.bin").write_bytes(rng.randbytes(1 << 20))
        else:
            line = f"def f{i}(x):\n    return x * {i}  # some code\n"
            (folder / f"mod{i}.py").write_text(line * rng.randint(20, 150))
    git = root / ".git" / "objects"
    for i in range(2000):
        obj = git / f"{i % 256:02x}" / f"{i:038x}"
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(rng.randbytes(512))


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="caliban-scan-") as tmp:
        root = Path(tmp)
        make_folder(root, args.files)
        spec = dockerfile.BuildSpec(
            base_image="python:3.11-slim",
            user=dockerfile.ImageUser(os.getuid(), os.getgid(), "me"),
            mode=JobMode.CPU,
            entry=resolve_entrypoint("train.py", root),
        )
        text = dockerfile.render(spec)
        sent = sum(1 for _ in walk_context(root, ["."], DockerIgnore()))
        walk = best(lambda: list(walk_context(root, ["."], DockerIgnore.load(root))), args.repeat)
        scan = best(lambda: find_secrets(root, spec), args.repeat)
        hashed = best(lambda: scan_context(root, spec, text), args.repeat)
        found = find_secrets(root, spec)
    print(
        json.dumps(
            {
                "benchmark": "secret_scan",
                "files_in_folder": args.files + 2000,
                "entries_walked_without_rules": sent,
                "scan_seconds": round(scan, 4),
                "baseline_walk_seconds": round(walk, 4),
                "baseline_content_hash_seconds": round(hashed, 4),
                "scan_over_walk": round(scan / walk, 2),
                "scan_over_hash": round(scan / hashed, 3),
                "keys_found": len(found),
                "python": platform.python_version(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

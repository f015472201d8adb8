"""Running a job or study command as an earlier revision of this repository did, beside the current
one: the benches that compare "before this change" with now check the earlier commit out into a
temporary git worktree and run the same command there, with the same Python environment.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """A detached checkout of `ref` (any commit-ish) in a temporary folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="bench-rev-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), ref],
                   check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)],
                       check=False, capture_output=True)


def timed_module(cwd: Path, module: str, args: list[str]) -> float:
    """Run `python -m module args...` in `cwd` (its packages first on the path); wall seconds.
    Raises with the command's last output lines when it fails."""
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{module} {' '.join(args)} in {cwd} exited {done.returncode}:\n{tail}")
    log.info("%s in %s: %.1f s", module, cwd, seconds)
    return seconds

"""An inter-process lock on a file, so concurrent actors do a one-time job (a conversion, an assembly,
the forward proxies) once: the others wait, then find its result."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def exclusive(lock_path: Path, what: str = "") -> Iterator[None]:
    """Hold an exclusive `flock` on `lock_path` (created when missing); logs once when it has to wait.
    Not POSIX: no lock, and callers' atomic renames keep the result whole."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process holding %s%s", lock_path, f" ({what})" if what else "")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

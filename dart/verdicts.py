"""Measured verdicts cached per machine (a kernel, a dtype, a gather's cost, a prompt group's cap): where
each is stored, how it is read and written, and a lock so that the processes of one machine (a job's
actors, which start together) measure each once, one at a time. Two processes timing at once on a
machine of few cores each measure the other's load; with the lock the first measures and the others
wait, then read what it stored."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from .filelock import exclusive

log = logging.getLogger(__name__)

T = TypeVar("T")


def cpu_model() -> str:
    """The CPU's model name ('' where the platform does not say)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def verdict_key(kind: str, key: dict, cache_dir: Path) -> Path | None:
    """Where a measured `kind` verdict for `key` on this CPU, torch and thread count is cached (None: CPU unknown)."""
    cpu = cpu_model()
    if not cpu:
        return None
    key = {"cpu": cpu, "machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           **key}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"{kind}-{digest}.json"


def read_verdict(path: Path | None, allowed: tuple[str, ...] | None) -> str | None:
    """A measured choice cached at `path`, if it is one of `allowed` (None: any text); a bad entry is
    measured again."""
    if path is None or not path.exists():
        return None
    try:
        choice = json.loads(path.read_text())["choice"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable verdict %s: %s", path, exc)
        return None
    return choice if isinstance(choice, str) and (allowed is None or choice in allowed) else None


def write_verdict(path: Path | None, choice: str) -> None:
    """Cache a measured choice at `path` atomically (None: not cached)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"choice": choice, "cpu": cpu_model()}))
    os.replace(tmp, path)


def measured_once(path: Path | None, read: Callable[[], T | None], measure: Callable[[], T],
                  write: Callable[[T], None]) -> T:
    """The verdict `read` finds at `path`, else `measure`d and `write`n under the verdict's lock file (in
    `locks/` beside it); a process that waited on another's measurement reads what that one wrote (path
    None: measured every time, no lock)."""
    cached = read()
    if cached is not None:
        return cached
    if path is None:
        return measure()
    with exclusive(path.parent / "locks" / f"{path.stem}.lock", f"measuring {path.name}"):
        cached = read()
        if cached is not None:
            return cached
        value = measure()
        write(value)
        return value


def cached_measurement(kind: str, key: dict, device: torch.device, cache_dir: Path | None, kind_type: type, measure):
    """A measured dataclass of floats, read from the verdict cache (a CPU's) or measured and stored there."""
    path = verdict_key(kind, key, cache_dir) if cache_dir is not None and device.type == "cpu" else None

    def read():
        cached = read_verdict(path, None)
        try:
            return None if cached is None else kind_type(*map(float, cached.split()))
        except (TypeError, ValueError):
            return None

    return measured_once(path, read, measure,
                         lambda measured: write_verdict(path, " ".join(map(repr, dataclasses.astuple(measured)))))

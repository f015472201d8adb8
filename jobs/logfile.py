"""A job invocation's logging: lines on the terminal without tracebacks, everything (tracebacks
included) in the invocation's log file, whose path a failure's one line names."""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

from dart.model_config import cache_root
from pipeline.config import JobConfig

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TerminalFormatter(logging.Formatter):
    """The record's line only: a traceback goes to the log file, never to the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class QuietFileHandler(logging.FileHandler):
    """A log file that never prints its own failures (a full disk must not dump onto the terminal)."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


def log_path(name: str, log_dir: str | None) -> Path:
    """<control.log_dir or the model cache's logs/>/<name>-<UTC time>-<pid>.log"""
    folder = Path(log_dir).expanduser() if log_dir else cache_root() / "logs"
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return folder / f"{name}-{stamp}-{os.getpid()}.log"


def open_log_file(path: Path) -> logging.Handler | None:
    """The file handler, or None (after one line saying so) where the folder cannot hold it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = QuietFileHandler(path, encoding="utf-8")
    except OSError as err:
        sys.stderr.write(f"warning: no log file ({path}: {err.strerror or err}); set control.log_dir\n")
        return None
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def job_logging(config: JobConfig) -> contextlib.AbstractContextManager[Path | None]:
    """invocation_logging for a job: named after its task, control.log_level and control.log_dir."""
    return invocation_logging(config.task, config.control.log_level, config.control.log_dir)


@contextlib.contextmanager
def invocation_logging(name: str, level: str, log_dir: str | None) -> Iterator[Path | None]:
    """Root logging at `level` to the terminal and to the log file, for one invocation; yields the
    log file's path (None when it could not be opened). Handlers are removed after."""
    root = logging.getLogger()
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(TerminalFormatter(FORMAT))
    terminal.addFilter(not_file_only)
    path = log_path(name, log_dir)
    file = open_log_file(path)
    handlers = [h for h in (terminal, file) if h is not None]
    saved_level = root.level
    root.setLevel(level)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield path if file is not None else None
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(saved_level)

"""Failures during a run, each as one line for a person: its cause and the way forward. The run is
left resumable by construction (parts written whole, markers last), so the way forward is a rerun."""
from __future__ import annotations

RERUN = "finished items are kept: rerun the same command to resume"
# `extra` of a log record for the job's log file only (a traceback the terminal's one line replaces)
FILE_ONLY = {"file_only": True}


def first_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (its first non-empty line, cut to `limit` characters)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:limit]


class JobFailed(RuntimeError):
    """A failure during the run, its message the line a person reads (no traceback needed)."""


class WorkerSetupError(JobFailed):
    """An actor could not load the model: the same on every attempt, so the job stops at once."""


def failure_line(err: BaseException) -> str:
    """The one line for a failure during the run."""
    if isinstance(err, JobFailed):
        return str(err)
    cause = getattr(err, "cause", None)      # a Ray task's error carries the exception it raised
    if isinstance(cause, JobFailed):
        return str(cause)
    if cause is not None:
        err = cause
    return f"the run failed ({type(err).__name__}: {first_line(err)}); {RERUN}"

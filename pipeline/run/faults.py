"""Faults of a disk or an object store while a run reads its inputs or writes its directory, each as
one failure line (its cause and what to do before the rerun)."""
from __future__ import annotations

import contextlib
import errno
from typing import Iterator

from ..failures import JobFailed, first_line

# errno -> what it means for a run's output, and what to do about it
DISK_FAULTS = {
    errno.ENOSPC: ("no space left on the device", "free space on it (or set another output.dir) and"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space on it (or set another output.dir) and"),
    errno.EROFS: ("the file system is read-only", "make it writable (or set another output.dir) and"),
    errno.EACCES: ("permission denied", "make it writable for this user (or set another output.dir) and"),
    errno.EPERM: ("permission denied", "make it writable for this user (or set another output.dir) and"),
}


class OutputFailed(JobFailed):
    """Writing the run's output failed (disk full or read-only, store unreachable or refusing)."""


class InputFailed(JobFailed):
    """Reading an input failed during the run (its store became unreachable)."""


def is_storage_fault(err: BaseException) -> bool:
    """An OSError (disk, connection, permission) or an error of the object-store clients."""
    module = type(err).__module__.split(".")[0]
    return isinstance(err, OSError) or module in ("aiohttp", "botocore", "aiobotocore", "s3fs", "gcsfs", "fsspec")


def storage_cause(err: BaseException) -> tuple[str, str]:
    """(what went wrong, what to do before the rerun) for a fault of a disk or an object store."""
    code = getattr(err, "errno", None)
    if code in DISK_FAULTS:
        return DISK_FAULTS[code]
    if isinstance(err, (PermissionError,)) or "AccessDenied" in str(err) or "Forbidden" in str(err):
        return ("access denied", "check the credentials and")
    return (f"{type(err).__name__}: {first_line(err)}", "check that it is reachable (address, network, "
            "credentials) and")


def storage_faults(failure: type[Exception], what: str) -> contextlib.AbstractContextManager:
    """Faults of a disk or store inside the block become one `failure` line about `what`."""
    @contextlib.contextmanager
    def translated() -> Iterator[None]:
        try:
            yield
        except Exception as err:
            if not is_storage_fault(err):
                raise
            cause, todo = storage_cause(err)
            raise failure(f"cannot {what}: {cause}; {todo} rerun the same command: finished items are kept") from err
    return translated()


def writing(where: object) -> contextlib.AbstractContextManager:
    """Faults of a disk or store while writing the run at `where` become one OutputFailed line."""
    return storage_faults(OutputFailed, f"write the run at {where}")


def reading(uri: str) -> contextlib.AbstractContextManager:
    """Faults of a disk or store while reading input `uri` become one InputFailed line."""
    return storage_faults(InputFailed, f"read input file {uri}")

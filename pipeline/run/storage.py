"""Where runs are written: a folder on local disk or under an object-store URI (any fsspec protocol).

Local disk: a file is written to a hidden temp name beside it, fsynced, then renamed onto its name.
Object stores (s3://, gs://, memory://, ...): one put per object, which the store makes visible whole
or not at all; there are no temp objects. Credentials and endpoints come from the store's own
environment (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...) or from
output.storage_options.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A hidden temp name beside `path` to write to: renamed onto `path` when the block succeeds,
    removed when it fails, so readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: Path, value: Any) -> None:
    write_atomic_bytes(path, json_bytes(value))


def json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()


def is_remote(url: str) -> bool:
    """An fsspec URI other than file://; everything else is a local path."""
    return "://" in url and not url.startswith("file://")


class Storage:
    """One root folder, local or remote; every path below is a string in the filesystem's own form."""

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        import fsspec.core
        from fsspec.implementations.local import LocalFileSystem

        self.local = not is_remote(url)
        if self.local:
            self.fs = LocalFileSystem()
            self.root = str(Path(url.removeprefix("file://")).expanduser().resolve())
        else:
            self.fs, self.root = fsspec.core.url_to_fs(url, **(options or {}))
            self.fs.invalidate_cache()        # another process may have written since the last listing
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.protocol = protocol

    def path(self, *names: str) -> str:
        return "/".join([self.root.rstrip("/"), *names])

    def url(self, path: str) -> str:
        """How a user names the path: a local path, or the URI with its protocol."""
        return path if self.local else f"{self.protocol}://{path}"

    def makedirs(self, path: str) -> None:
        if self.local:
            Path(path).mkdir(parents=True, exist_ok=True)

    def write(self, path: str, data: bytes) -> None:
        """The whole file or object appears at once (local: temp, fsync, rename; stores: one put)."""
        if self.local:
            write_atomic_bytes(Path(path), data)
        else:
            self.fs.pipe_file(path, data)

    def read(self, path: str) -> bytes | None:
        """The file's bytes, or None when there is none."""
        try:
            return self.fs.cat_file(path)
        except (FileNotFoundError, IsADirectoryError):
            return None

    def size(self, path: str) -> int | None:
        try:
            return self.fs.size(path)
        except FileNotFoundError:
            return None

    def remove(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass

    def create(self, path: str, data: bytes) -> bool:
        """Write only if nothing is at `path` (a conditional put on S3); False if something is."""
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True

    def version(self, path: str) -> str | None:
        """What names this content of the object (ETag), for a conditional replace; None if unknown."""
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        return info.get("ETag") or info.get("etag") or info.get("generation")

    def replace(self, path: str, data: bytes, version: str | None) -> bool:
        """Overwrite `path` only while it still holds `version`: a conditional put (If-Match) on S3.
        Stores without one delete and create, which leaves a short window to a racing writer."""
        if self.protocol in ("s3", "s3a") and version:
            try:
                self.fs.pipe_file(path, data, IfMatch=version)
            except (OSError, FileNotFoundError):
                return False
            return True
        self.remove(path)
        return self.create(path, data)


def submitted_job_id() -> str | None:
    """The submission id when this process is the driver of a `ray job submit` job.

    Ray's job supervisor (ray/dashboard/modules/job/job_supervisor.py) gives the entrypoint
    RAY_JOB_CONFIG_JSON_ENV_VAR, a JSON whose metadata holds `job_submission_id`."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        return json.loads(raw).get("metadata", {}).get("job_submission_id") or "unknown"
    except (ValueError, AttributeError):
        return "unknown"


def check_durable_output(output_dir: str) -> None:
    """Inside a submitted job, refuse an output.dir under Ray's temporary copy of the working dir."""
    job_id = submitted_job_id()
    if job_id is None or is_remote(output_dir):
        return
    path = Path(output_dir.removeprefix("file://")).expanduser()
    cwd = Path.cwd().resolve()
    if path.is_absolute() and not path.resolve().is_relative_to(cwd):
        return
    raise ValueError(
        f"output.dir {output_dir!r} would resolve to {cwd / path} inside Ray's temporary copy of the "
        f"working directory (submitted job {job_id}), which is deleted with the Ray session and lives on "
        "one node only. Set output.dir to an absolute path on storage every node shares (e.g. "
        "output.dir=/shared/outputs) or to an object-store URI (e.g. output.dir=s3://bucket/outputs).")

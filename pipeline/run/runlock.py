"""One driver per run directory: a lock on local disk, a lease on object stores.

Both keep `lock.json` in the run directory, naming the holder (host, pid, since): a second driver
refuses with that name (it does not wait). A holder that is gone is taken over with a warning.

* Local disk: an exclusive `flock` on lock.json, held while the driver runs. The kernel drops it
  when the holder dies (SIGKILL included), so a lock is stale exactly when its holder is gone. On
  NFS this relies on the client's lock support (NFSv4 locks; a dead client's lock ends with the
  server's lease).
* Object stores: lock.json is a lease with an expiry, created by a conditional put (If-None-Match on
  S3) and renewed by the holder every lease_seconds / 3. It is stale once expired, or at once when
  it names this host and a pid that is gone. Takeover and renewal are conditional on the lease's
  ETag (If-Match) on S3; other stores delete then create, with a short window for a racing taker.
  A holder that finds its lease taken stops writing (RunLost). Hosts' clocks must agree to well
  under the lease.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from .storage import Storage, json_bytes

log = logging.getLogger(__name__)


class RunBusy(ValueError):
    """Another live driver holds the run."""


class RunLost(RuntimeError):
    """This driver's lease was taken over; it must stop writing."""


def holder_info(lease_seconds: float | None = None) -> dict[str, Any]:
    now = time.time()
    info = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if lease_seconds is not None:
        info.update(lease_seconds=lease_seconds, expires=now + lease_seconds)
    return info


def describe(info: dict[str, Any]) -> str:
    return f"host {info.get('host')}, pid {info.get('pid')}, since {info.get('since')}"


def pid_gone(info: dict[str, Any]) -> bool:
    """The holder ran on this host and its process no longer exists."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def parse(data: bytes | None) -> dict[str, Any] | None:
    try:
        info = json.loads(data) if data else None
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


class FileLock:
    """flock on <run>/lock.json for the life of the driver (local disk)."""

    def __init__(self, storage: Storage, path: str, run_url: str) -> None:
        self.path, self.run_url, self.fd = path, run_url, None

    def acquire(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = parse(os.pread(fd, 65536, 0)) or {}
            os.close(fd)
            raise RunBusy(f"run {self.run_url} is in use by another driver ({describe(holder)}); "
                          "wait for it to finish or stop it, then rerun") from None
        old = parse(os.pread(fd, 65536, 0))
        if old:
            log.warning("run %s: taking over the lock of a driver that is gone (%s)", self.run_url, describe(old))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json_bytes(holder_info()), 0)
        os.fsync(fd)
        self.fd = fd

    def check(self) -> None:
        """A local lock cannot be taken while held."""

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)      # closing drops the flock
            self.fd = None


class LeaseLock:
    """A lease object <run>/lock.json with an expiry that the holder renews (object stores)."""

    def __init__(self, storage: Storage, path: str, run_url: str, lease_seconds: float) -> None:
        self.storage, self.path, self.run_url, self.lease = storage, path, run_url, lease_seconds
        self.info: dict[str, Any] = {}
        self.lost: str | None = None
        self.stop = threading.Event()
        self.renewer: threading.Thread | None = None

    def acquire(self) -> None:
        self.info = holder_info(self.lease)
        if not self.storage.create(self.path, json_bytes(self.info)):
            version = self.storage.version(self.path)
            old = parse(self.storage.read(self.path)) or {}
            stale = self.stale_reason(old)
            if stale is None:
                raise RunBusy(f"run {self.run_url} is leased by another driver ({describe(old)}, lease "
                              f"expires in {old.get('expires', 0) - time.time():.0f} s); wait for it to "
                              "finish or stop it, then rerun")
            if not self.storage.replace(self.path, json_bytes(self.info), version):
                raise RunBusy(f"run {self.run_url}: another driver took over the stale lease first")
            log.warning("run %s: taking over the lease of %s (%s)", self.run_url, describe(old), stale)
        self.renewer = threading.Thread(target=self.renew_loop, name="run-lease", daemon=True)
        self.renewer.start()

    @staticmethod
    def stale_reason(old: dict[str, Any]) -> str | None:
        if not old:
            return "the lease is unreadable"
        if pid_gone(old):
            return "its process is gone"
        if old.get("expires", 0) < time.time():
            return "its lease expired"
        return None

    def renew(self) -> None:
        version = self.storage.version(self.path)
        current = parse(self.storage.read(self.path)) or {}
        if current.get("token") != self.info["token"]:
            self.lost = f"the lease now names {describe(current)}" if current else "the lease was removed"
            log.error("run %s: lost the lease (%s); stopping writes", self.run_url, self.lost)
            return
        info = {**self.info, "expires": time.time() + self.lease}
        if self.storage.replace(self.path, json_bytes(info), version):
            self.info = info

    def renew_loop(self) -> None:
        while not self.stop.wait(self.lease / 3) and self.lost is None:
            try:
                self.renew()
            except Exception as err:     # a store hiccup: try again next period, the lease still runs
                log.warning("run %s: renewing the lease failed (%s)", self.run_url, err)

    def check(self) -> None:
        if self.lost is None and self.info.get("expires", 0) < time.time():
            self.lost = "the lease expired before it was renewed"
        if self.lost is not None:
            raise RunLost(f"run {self.run_url}: this driver no longer holds the run ({self.lost})")

    def release(self) -> None:
        self.stop.set()
        if self.renewer is not None:
            self.renewer.join()
        current = parse(self.storage.read(self.path)) or {}
        if current.get("token") == self.info.get("token"):
            self.storage.remove(self.path)

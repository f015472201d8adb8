"""The run directory: resolved config, plan, one part per item (written whole), markers written last.

    <output.dir>/<task>-<fingerprint>/     a local path or an object-store URI (storage.py)
        config.yaml   plan.json           written when the run starts; a rerun must match them
        lock.json                         the driver running it (runlock.py)
        parts/<item_id>.parquet           local: a hidden temp name, then renamed; stores: one put
        markers/<item_id>.json            written after its part: the item is done
        summary.json  _SUCCESS            written when every item is done

A marker names its item (the planned item, the run) and its part (sha256 of the bytes, row count,
sha256 of the ids). On resume an item is done only when its marker and part agree with the plan and
with each other; anything else is logged and redone.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..inputs import WorkItem
from .faults import is_storage_fault, writing
from .runlock import FileLock, LeaseLock
from .storage import Storage, atomic_path, json_bytes, write_atomic_bytes, write_json

__all__ = ["RunDir", "atomic_path", "write_atomic_bytes", "write_json"]   # the helpers are used by pipeline.study

log = logging.getLogger(__name__)


def ids_digest(table: pa.Table) -> str:
    return hashlib.sha256(json.dumps(table.column("id").to_pylist()).encode()).hexdigest()


def rows_problem(item: WorkItem, table: pa.Table) -> str | None:
    """Why a table is not this item's rows (count, item_id, source, row_index), or None."""
    n = table.num_rows
    if n != item.num_rows:
        return f"{n} rows for {item.num_rows} planned"
    for name in ("item_id", "source", "row_index", "id"):
        if name not in table.column_names:
            return f"no {name} column"
    if table.column("item_id").to_pylist() != [item.item_id] * n:
        return "its item_id column names another item"
    if table.column("source").to_pylist() != [item.uri] * n:
        return f"its source column is not {item.uri}"
    if table.column("row_index").to_pylist() != list(range(item.start, item.stop)):
        return f"its row_index column is not rows {item.start}..{item.stop - 1}"
    return None


def part_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def conformed(table: pa.Table, schema: pa.Schema) -> pa.Table | None:
    """`table` in `schema` when it lacks only nullable columns (filled with nulls) and holds no column
    the schema does not declare, each of the declared type; else None."""
    fields = {f.name: f for f in table.schema}
    if any(name not in schema.names or fields[name].type != schema.field(name).type for name in fields):
        return None
    if any(f.name not in fields and not f.nullable for f in schema):
        return None
    columns = [table.column(f.name) if f.name in fields else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


class RunDir:
    """One run of one config. Finished items are those whose marker and part check out."""

    def __init__(self, storage: Storage, name: str, schema: pa.Schema | None = None) -> None:
        self.storage, self.name, self.schema = storage, name, schema
        self.path = storage.path(name)
        self.root = self.at(self.path)
        self.parts, self.markers = self.at(f"{self.path}/parts"), self.at(f"{self.path}/markers")
        self.verified: dict[str, tuple[bytes, int]] = {}  # item id -> (marker bytes, part size) checked
        self.holder: FileLock | LeaseLock | None = None

    def at(self, path: str) -> Path | str:
        """A path as users name it: a Path on local disk, a URI on an object store."""
        return Path(path) if self.storage.local else self.storage.url(path)

    @classmethod
    def open(cls, output_dir: str, task: str, fingerprint: str, config_yaml: str, plan: list[WorkItem],
             schema: pa.Schema | None = None, storage_options: dict[str, Any] | None = None) -> "RunDir":
        """Create the run, or check that an existing one holds this very config and plan."""
        run = cls(Storage(output_dir, storage_options), f"{task}-{fingerprint}", schema)
        plan_json = [it.to_dict() for it in plan]
        old = run.storage.read(f"{run.path}/plan.json")
        if old is not None:
            if json.loads(old) != plan_json:
                raise ValueError(f"{run.root} holds a different plan; refusing to mix runs")
            log.info("resuming run %s", run.root)
        run.storage.makedirs(f"{run.path}/parts")
        run.storage.makedirs(f"{run.path}/markers")
        run.storage.write(f"{run.path}/config.yaml", config_yaml.encode())
        if old is None:
            run.storage.write(f"{run.path}/plan.json", json_bytes(plan_json))
        return run

    @contextlib.contextmanager
    def lock(self, lease_seconds: float = 60) -> Iterator[None]:
        """Hold the run for one driver: refuses (RunBusy) while another live driver holds it."""
        where = f"{self.path}/lock.json"
        self.holder = (FileLock(self.storage, where, str(self.root)) if self.storage.local
                       else LeaseLock(self.storage, where, str(self.root), lease_seconds))
        with writing(self.root):
            self.holder.acquire()
        try:
            yield
        finally:
            try:
                self.holder.release()
            except Exception as err:       # the disk or store failed: the run's error says so already
                if not is_storage_fault(err):
                    raise
                log.warning("run %s: its lock was not released (%s); a rerun takes it over", self.root, err)
            self.holder = None

    def part_path(self, item: WorkItem) -> Path | str:
        return self.at(self.part_key(item))

    def marker_path(self, item: WorkItem) -> Path | str:
        return self.at(self.marker_key(item))

    def part_key(self, item: WorkItem) -> str:
        return f"{self.path}/parts/{item.item_id}.parquet"

    def marker_key(self, item: WorkItem) -> str:
        return f"{self.path}/markers/{item.item_id}.json"

    def done_marker(self, item: WorkItem) -> dict[str, Any] | None:
        """The item's marker when the item is done; None (after a warning, if something is off) if not.
        A marker checked before is trusted again while it and its part's size are unchanged."""
        raw = self.storage.read(self.marker_key(item))
        if raw is None:
            return None
        if self.verified.get(item.item_id, (None, None))[0] == raw:
            if self.storage.size(self.part_key(item)) == self.verified[item.item_id][1]:
                return json.loads(raw)
        try:
            marker = json.loads(raw)
            if "part_sha256" not in marker and "run" not in marker:
                marker, raw = self.upgraded_marker(item, marker)
            problem = self.marker_problem(item, marker)
        except Exception as err:
            problem, marker = f"unreadable marker or part ({type(err).__name__}: {err})", None
        if problem is not None:
            log.warning("item %s is redone: %s", item.item_id, problem)
            return None
        self.verified[item.item_id] = (raw, marker["part_size"])
        return marker

    def upgraded_marker(self, item: WorkItem, legacy: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """A marker written before markers had checksums: its part counts as done when it holds the
        item's rows, in the declared schema or in one that lacks only columns added since (they are
        filled with nulls). The driver holding the run rewrites such a part in the declared schema and
        gives it a checksummed marker, so runs of an earlier version resume instead of recomputing."""
        data = self.storage.read(self.part_key(item))
        if data is None:
            return legacy, b""
        table = pq.read_table(pa.BufferReader(data))
        if self.schema is not None and not table.schema.remove_metadata().equals(self.schema.remove_metadata()):
            table = conformed(table, self.schema)
            if table is None:
                return legacy, b""
            data = part_bytes(table)
        marker = {**legacy, "run": self.name, "rows": table.num_rows, "part_size": len(data),
                  "part_sha256": hashlib.sha256(data).hexdigest(), "ids_sha256": ids_digest(table)}
        raw = json_bytes(marker)
        if self.holder is not None and rows_problem(item, table) is None:
            self.storage.write(self.part_key(item), data)
            self.storage.write(self.marker_key(item), raw)
            log.info("item %s: part and marker of an earlier version upgraded", item.item_id)
        return marker, raw

    def is_done(self, item: WorkItem) -> bool:
        return self.done_marker(item) is not None

    def marker_problem(self, item: WorkItem, marker: dict[str, Any]) -> str | None:
        """Why marker and part do not prove the item done, or None."""
        if marker.get("item") != item.to_dict():
            return f"its marker belongs to another item ({str(marker.get('item'))[:200]})"
        if marker.get("run") != self.name:
            return f"its marker belongs to run {marker.get('run')!r}, not {self.name!r}"
        if "part_sha256" not in marker or "part_size" not in marker:
            return "its marker has no part checksum"
        data = self.storage.read(self.part_key(item))
        if data is None:
            return "its part is missing"
        if hashlib.sha256(data).hexdigest() != marker["part_sha256"]:
            return "its part's sha256 differs from its marker's (the part was replaced or damaged)"
        table = pq.read_table(pa.BufferReader(data))
        if self.schema is not None and not table.schema.remove_metadata().equals(self.schema.remove_metadata()):
            return "its part has another schema"
        problem = rows_problem(item, table)
        if problem is None and ids_digest(table) != marker.get("ids_sha256"):
            problem = "its part's ids differ from its marker's"
        return None if problem is None else f"its part does not hold the item's rows: {problem}"

    def write_part(self, item: WorkItem, table: pa.Table, info: dict[str, Any]) -> None:
        """Part first (whole), then the marker: a crash between them only redoes the item."""
        problem = rows_problem(item, table)
        if problem is not None:
            raise RuntimeError(f"item {item.item_id}: the result is not the item's rows ({problem}); not written")
        self.guard()
        data = part_bytes(table)
        self.storage.write(self.part_key(item), data)
        marker = {"item": item.to_dict(), "run": self.name, "rows": table.num_rows, "part_size": len(data),
                  "part_sha256": hashlib.sha256(data).hexdigest(), "ids_sha256": ids_digest(table), **info}
        raw = json_bytes(marker)
        self.storage.write(self.marker_key(item), raw)
        self.verified[item.item_id] = (raw, len(data))

    def write_empty(self, schema: pa.Schema) -> None:
        """A plan without rows: one part of no rows, so readers of parts/ get the declared schema."""
        self.storage.write(f"{self.path}/parts/empty.parquet", part_bytes(schema.empty_table()))

    def clean_temp(self) -> None:
        """Half-written parts of an interrupted run (local disk only: object stores have no temp
        objects). Call only while holding the lock: another live driver's temp files are its own."""
        if self.storage.local:
            for tmp in Path(self.path, "parts").glob(".*.tmp-*"):
                tmp.unlink(missing_ok=True)

    def read(self, items: list[WorkItem] | None = None, columns: list[str] | None = None) -> pa.Table:
        """The parts of `items` (default: every part in parts/); of no items, the empty part."""
        fs = self.storage.fs
        if items is None:
            return pq.read_table(f"{self.path}/parts", columns=columns, filesystem=fs)
        paths = [self.part_key(it) for it in items] or [f"{self.path}/parts/empty.parquet"]
        return pa.concat_tables([pq.read_table(p, columns=columns, filesystem=fs) for p in paths])

    def guard(self) -> None:
        """Raise RunLost when this driver's lease on the run was taken over (object stores)."""
        if self.holder is not None:
            self.holder.check()

    def finish(self, summary: dict[str, Any]) -> None:
        self.guard()
        self.storage.write(f"{self.path}/summary.json", json_bytes(summary))
        self.storage.write(f"{self.path}/_SUCCESS", b"")

    def unfinish(self) -> None:
        self.storage.remove(f"{self.path}/_SUCCESS")

"""The run directory: resolved config, plan, one part per item (atomic), markers written last.

    <output.dir>/<task>-<fingerprint>/
        config.yaml   plan.json           written when the run starts; a rerun must match them
        parts/<item_id>.parquet           written to a hidden temp name, then renamed
        markers/<item_id>.json            written after its part: the item is done
        summary.json  _SUCCESS            written when every item is done
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .plan import WorkItem

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
    write_atomic_bytes(path, (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode())


class RunDir:
    """One run of one config. Finished items are those with both a part and a marker."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.parts = root / "parts"
        self.markers = root / "markers"

    @classmethod
    def open(cls, output_dir: str, task: str, fingerprint: str, config_yaml: str,
             plan: list[WorkItem]) -> "RunDir":
        """Create the run, or check that an existing one holds this very config and plan."""
        run = cls(Path(output_dir).expanduser().resolve() / f"{task}-{fingerprint}")
        plan_json = [it.to_dict() for it in plan]
        if (run.root / "plan.json").exists():
            old = json.loads((run.root / "plan.json").read_text())
            if old != plan_json:
                raise ValueError(f"{run.root} holds a different plan; refusing to mix runs")
            log.info("resuming run %s", run.root)
        run.parts.mkdir(parents=True, exist_ok=True)
        run.markers.mkdir(exist_ok=True)
        write_atomic_bytes(run.root / "config.yaml", config_yaml.encode())
        if not (run.root / "plan.json").exists():
            write_json(run.root / "plan.json", plan_json)
        return run

    def part_path(self, item: WorkItem) -> Path:
        return self.parts / f"{item.item_id}.parquet"

    def marker_path(self, item: WorkItem) -> Path:
        return self.markers / f"{item.item_id}.json"

    def is_done(self, item: WorkItem) -> bool:
        """A marker whose part exists with the planned row count; anything less is redone."""
        marker, part = self.marker_path(item), self.part_path(item)
        if not marker.exists():
            return False
        try:
            return part.exists() and pq.ParquetFile(part).metadata.num_rows == item.num_rows
        except Exception as err:
            log.warning("part %s unreadable (%s); redoing the item", part, err)
            return False

    def write_part(self, item: WorkItem, table: pa.Table, info: dict[str, Any]) -> None:
        """Part first (temp then rename), then the marker: a crash between them only redoes the item."""
        if table.num_rows != item.num_rows:
            raise RuntimeError(f"item {item.item_id}: {table.num_rows} rows for {item.num_rows} planned")
        with atomic_path(self.part_path(item)) as tmp:
            pq.write_table(table, tmp)
        write_json(self.marker_path(item), {"item": item.to_dict(), "rows": table.num_rows, **info})

    def write_empty(self, schema: pa.Schema) -> None:
        """A plan without rows: one part of no rows, so readers of parts/ get the declared schema."""
        with atomic_path(self.parts / "empty.parquet") as tmp:
            pq.write_table(schema.empty_table(), tmp)

    def clean_temp(self) -> None:
        """Half-written parts of an interrupted run."""
        for tmp in self.parts.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.parts, columns=columns)

    def finish(self, summary: dict[str, Any]) -> None:
        write_json(self.root / "summary.json", summary)
        (self.root / "_SUCCESS").write_text("")

    def unfinish(self) -> None:
        (self.root / "_SUCCESS").unlink(missing_ok=True)

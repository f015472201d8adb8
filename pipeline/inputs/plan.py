"""Deterministic work plan: (file x row range) items with stable ids, no coordinator needed."""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass

from .sources import SourceFile


@dataclass(frozen=True)
class WorkItem:
    """Rows [start, stop) of source `source_index`; its id names its output part."""

    item_id: str
    source_index: int
    uri: str
    start: int
    stop: int

    @property
    def num_rows(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict:
        return asdict(self)


def _stem(uri: str) -> str:
    name = uri.rstrip("/").rsplit("/", 1)[-1].split("@", 1)[0]
    name = re.sub(r"\.(parquet|pq|arrow|feather|ipc)$", "", name)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "input"


def item_id(src: SourceFile, start: int, stop: int) -> str:
    """Stable across runs and machines: path, row range and the file's content fingerprint."""
    digest = hashlib.sha256(f"{src.uri}|{start}|{stop}|{src.fingerprint}".encode()).hexdigest()[:12]
    return f"{_stem(src.uri)}.{start:09d}-{stop:09d}.{digest}"


def plan_items(sources: list[SourceFile], rows_per_item: int, limit: int | None = None) -> list[WorkItem]:
    """Each file cut into consecutive row ranges of rows_per_item (the last may be shorter); with
    `limit`, only the first `limit` rows over the files in order (item ids do not depend on it)."""
    items = []
    left = float("inf") if limit is None else limit
    for index, src in enumerate(sources):
        rows = int(min(src.num_rows, left))
        left -= rows
        for start in range(0, rows, rows_per_item):
            stop = min(start + rows_per_item, rows)
            items.append(WorkItem(item_id(src, start, stop), index, src.uri, start, stop))
    ids = [it.item_id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError("the same input file is listed twice (duplicate work items)")
    return items


def plan_digest(items: list[WorkItem]) -> str:
    return hashlib.sha256("\n".join(it.item_id for it in items).encode()).hexdigest()[:16]

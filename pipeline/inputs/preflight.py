"""Checks that run before any work: inputs resolved and readable with the columns the task reads,
the output not tangled with the inputs, and rows whose id an earlier row already has."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .plan import WorkItem
from .records import id_strings
from ..settings import InputConfig
from .sources import GLOB_CHARS, SourceFile, check_columns, read_rows, resolve_inputs

log = logging.getLogger(__name__)


def check_inputs(inp: InputConfig, output_dir: str) -> list[SourceFile]:
    """Every input file, each checked for the columns the job reads; the output must not overlap them."""
    sources = resolve_inputs(inp.paths, inp.hf_split)
    if not sources:
        raise ValueError(f"input.paths {inp.paths} match no file")
    check_columns(sources, inp.columns, inp.passthrough_columns, lambda missing: column_hint(inp, missing))
    if inp.id_column is None:
        log.warning("input.id_column is null: row ids are derived as '<file>#<row>'")
    check_output_location(output_dir, inp.paths, sources)
    return sources


def column_hint(inp: InputConfig, missing: list[str]) -> str:
    """How to run without each missing column, by the input key that names it."""
    return "".join(f"; {missing_column_hint(inp, column)}" for column in missing)


def missing_column_hint(inp: InputConfig, column: str) -> str:
    if column == inp.reference_column:
        return ("to run without references (no quality metric) set input.reference_column=null, or set it to "
                "the column that holds them")
    if column == inp.id_column:
        return "set input.id_column=null to derive ids '<file>#<row>', or set it to the id column"
    if column in inp.passthrough_columns:
        return f"remove {column!r} from input.passthrough_columns"
    key = next(k for k in ("text_column", "question_column", "choices_column") if getattr(inp, k) == column)
    return f"set input.{key} to the column that holds it"


def local_path(uri: str) -> Path | None:
    return None if "://" in uri and not uri.startswith("file://") else Path(uri.removeprefix("file://")).resolve()


def input_root(path: str) -> Path | None:
    """The local file or directory an input path reads: a glob's fixed leading directory."""
    local = local_path(path)
    if local is None:
        return None
    text = str(local)
    cut = min((text.index(c) for c in GLOB_CHARS if c in text), default=None)
    if cut is not None:
        return Path(text[:cut].rsplit("/", 1)[0] or "/")
    return local if local.exists() else None


def check_output_location(output_dir: str, input_paths: list[str], sources: list[SourceFile]) -> None:
    """The output must never be inside an input path (a glob's directory included), nor hold an input file."""
    out = Path(output_dir).expanduser().resolve()
    for path in input_paths:
        root = input_root(path)
        if root is not None and out.is_relative_to(root):
            raise ValueError(f"output.dir {out} is inside input directory {root} (input path {path!r}); "
                             "choose another output.dir")
    for src in sources:
        local = local_path(src.uri)
        if local is not None and local.is_relative_to(out):
            raise ValueError(f"input file {src.uri} is inside output.dir {out}; choose another output.dir")


BATCH_ROWS = 1 << 20      # ids hashed at a time: bounds the driver's memory on any input size


def id_batches(src: SourceFile, stop: int, id_column: str) -> Iterator[tuple[int, pa.Array]]:
    """(first row, ids) for rows [0, stop) of one source, at most BATCH_ROWS at a time; Parquet is
    streamed by row group, so a file's id column is never read whole."""
    if src.kind != "parquet":     # Arrow IPC and Hugging Face splits are read whole by read_rows anyway
        ids = read_rows(src, 0, stop, [id_column]).column(id_column)
        for first in range(0, stop, BATCH_ROWS):
            yield first, ids.slice(first, BATCH_ROWS)
        return
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(src.uri)
    first = 0
    with fs.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=[id_column]):
            if first >= stop:
                break
            yield first, batch.column(0).slice(0, stop - first)
            first += batch.num_rows


def hash_strings(text: pa.Array) -> np.ndarray:
    """uint64 per id (SipHash of its UTF-8, pandas' hash_array): equal ids hash equal."""
    import pandas as pd

    return pd.util.hash_array(text.to_numpy(zero_copy_only=False), categorize=False)


def planned_stops(plan: list[WorkItem]) -> dict[int, int]:
    """source index -> rows [0, stop) of it that the plan covers, in source order."""
    stops: dict[int, int] = {}
    for item in plan:
        stops[item.source_index] = max(stops.get(item.source_index, 0), item.stop)
    return dict(sorted(stops.items()))


def find_duplicate_ids(sources: list[SourceFile], plan: list[WorkItem],
                       id_column: str | None) -> dict[tuple[int, int], str]:
    """(source, row) -> error for every planned row whose id an earlier row (in plan order) already has.
    The first keeps the id and runs; the later ones become error rows, so nothing is lost and
    ids of ok rows stay unique. Ids follow records.id_strings' rule; null or undecodable ids are
    error rows of their own and take no part.

    Exact in bounded memory: pass 1 streams the id column and keeps one 64-bit hash per row
    (8 bytes a row); sorting them gives the hashes seen twice; pass 2 re-reads only the batches
    holding such a hash and compares those ids as text, so a hash collision is never a duplicate."""
    if id_column is None:
        return {}
    stops = planned_stops(plan)
    hashes = np.zeros(sum(stops.values()), np.uint64)
    valid = np.zeros(len(hashes), bool)
    batches = []                                  # (source index, first row, offset in hashes, rows)
    for index, stop in stops.items():
        for first, ids in id_batches(sources[index], stop, id_column):
            text, _ = id_strings(ids, id_column, f" of {sources[index].uri}")
            at = batches[-1][2] + batches[-1][3] if batches else 0
            hashes[at:at + len(text)] = hash_strings(text)
            valid[at:at + len(text)] = text.is_valid().to_numpy(zero_copy_only=False)
            batches.append((index, first, at, len(text)))
    seen = hashes[valid]
    seen.sort()
    repeated = np.unique(seen[1:][seen[1:] == seen[:-1]])
    del seen
    if len(repeated) == 0:
        return {}
    suspect = np.isin(hashes, repeated) & valid
    del hashes, valid
    found = confirm_duplicates(sources, batches, suspect, id_column)
    log.warning("%d row(s) repeat an earlier row's id (%s); they become error rows", len(found), id_column)
    return found


def confirm_duplicates(sources: list[SourceFile], batches: list[tuple[int, int, int, int]],
                       suspect: np.ndarray, id_column: str) -> dict[tuple[int, int], str]:
    """Pass 2: the suspect rows' ids as text, in plan order; every repeat of an earlier id is found."""
    first_at: dict[str, tuple[int, int]] = {}
    found = {}
    for index, first, at, rows in batches:
        offsets = np.flatnonzero(suspect[at:at + rows])
        if len(offsets) == 0:
            continue
        ids = read_rows(sources[index], first, first + rows, [id_column]).column(id_column)
        text, _ = id_strings(ids.take(pa.array(offsets)), id_column)
        for offset, value in zip(offsets.tolist(), text.to_pylist()):
            where = first_at.setdefault(value, (index, first + offset))
            if where != (index, first + offset):
                found[(index, first + offset)] = (f"ValueError: duplicate id {value!r} ({id_column}); "
                                                  f"first at {sources[where[0]].uri}#{where[1]}")
    return found

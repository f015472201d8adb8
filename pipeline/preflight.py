"""Checks that run before any work: inputs resolved and readable with the columns the task reads,
the output not tangled with the inputs, and rows whose id an earlier row already has."""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from .plan import WorkItem
from .settings import InputConfig
from .sources import GLOB_CHARS, SourceFile, check_columns, read_rows, resolve_inputs

log = logging.getLogger(__name__)


def check_inputs(inp: InputConfig, output_dir: str) -> list[SourceFile]:
    """Every input file, each checked for the columns the job reads; the output must not overlap them."""
    sources = resolve_inputs(inp.paths, inp.hf_split)
    if not sources:
        raise ValueError(f"input.paths {inp.paths} match no file")
    check_columns(sources, inp.columns, inp.passthrough_columns)
    if inp.id_column is None:
        log.warning("input.id_column is null: row ids are derived as '<file>#<row>'")
    check_output_location(output_dir, inp.paths, sources)
    return sources


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


def find_duplicate_ids(sources: list[SourceFile], plan: list[WorkItem],
                       id_column: str | None) -> dict[tuple[int, int], str]:
    """(source, row) -> error for every planned row whose id an earlier row (in plan order) already has.
    The first keeps the id and runs; the later ones become error rows, so nothing is lost and
    ids of ok rows stay unique. Reads only the id column."""
    if id_column is None:
        return {}
    stops: dict[int, int] = {}
    for item in plan:
        stops[item.source_index] = max(stops.get(item.source_index, 0), item.stop)
    tables = []
    for index, stop in stops.items():
        ids = read_rows(sources[index], 0, stop, [id_column]).column(id_column)
        try:
            ids = ids if pa.types.is_string(ids.type) else pc.cast(ids, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ValueError(f"id column {id_column!r} of {sources[index].uri} has type {ids.type}; "
                             "ids must be strings or numbers (or set input.id_column: null)") from None
        tables.append(pa.table({"id": ids, "source": pa.array([index] * stop, pa.int64()),
                                "row": pa.array(range(stop), pa.int64())}))
    if not tables:
        return {}
    rows = pa.concat_tables(tables).filter(pc.is_valid(pc.field("id")))
    counts = rows.group_by("id").aggregate([("id", "count")])
    repeated = counts.filter(pc.greater(counts["id_count"], 1)).column("id")
    if len(repeated) == 0:
        return {}
    first: dict[bytes, tuple[int, int]] = {}
    found = {}
    dups = rows.filter(pc.is_in(rows["id"], value_set=repeated))
    dups = dups.sort_by([("source", "ascending"), ("row", "ascending")])
    for value, source, row in zip(pc.cast(dups["id"], pa.binary()).to_pylist(), dups["source"].to_pylist(),
                                  dups["row"].to_pylist()):
        if value in first:
            where = first[value]
            found[(source, row)] = (f"ValueError: duplicate id {value.decode(errors='replace')!r} "
                                    f"({id_column}); first at {sources[where[0]].uri}#{where[1]}")
        else:
            first[value] = (source, row)
    log.warning("%d row(s) repeat an earlier row's id (%s); they become error rows", len(found), id_column)
    return found

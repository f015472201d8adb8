"""Turn an item's input rows plus per-row values into a table of the declared schema."""
from __future__ import annotations

from typing import Any

import pyarrow as pa

from .plan import WorkItem


def derived_id(item: WorkItem, row_index: int) -> str:
    """The id of a row without an id column: its file and row number."""
    return f"{item.uri}#{row_index}"


def python_rows(rows: pa.Table) -> tuple[list[dict[str, Any]], list[str | None]]:
    """(records, problems): rows as dicts; a cell that is not valid UTF-8 text becomes None and
    gives its row a problem, so one bad cell neither sinks the item nor loses the row."""
    try:
        return rows.to_pylist(), [None] * rows.num_rows
    except UnicodeDecodeError:
        pass
    records: list[dict[str, Any]] = [{} for _ in range(rows.num_rows)]
    problems: list[str | None] = [None] * rows.num_rows
    for name in rows.column_names:
        column = rows.column(name)
        for k in range(rows.num_rows):
            try:
                records[k][name] = column[k].as_py()
            except UnicodeDecodeError as err:
                records[k][name] = None
                problems[k] = problems[k] or f"ValueError: {name} is not valid UTF-8 ({err.reason} at byte {err.start})"
    return records, problems


TEXT_TYPES = (pa.string(), pa.large_string(), pa.string_view(), pa.binary(), pa.large_binary(), pa.binary_view())


def id_strings(ids: pa.Array | pa.ChunkedArray, id_column: str, where: str = "") -> tuple[pa.Array, dict[int, str]]:
    """The one rule for ids, in the duplicate check and in the output alike: text as it is, binary
    decoded as UTF-8, numbers as Arrow writes them (5 -> "5"). Returns (strings, problems): an id
    that is not valid UTF-8 is null in `strings`, with a problem at its offset; a null id stays null.
    A column of any other type is a ValueError (`where` names the file in its message)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    kind = ids.type
    if pa.types.is_dictionary(kind):
        ids, kind = ids.dictionary_decode(), kind.value_type
    textual = kind in TEXT_TYPES or pa.types.is_fixed_size_binary(kind)
    try:
        if kind == pa.string():
            ids.validate(full=True)          # a string column written unchecked may hold invalid UTF-8
            return ids, {}
        return ids.cast(pa.string()), {}
    except pa.ArrowInvalid:
        if textual:
            return decode_each(ids, id_column)
    except pa.ArrowNotImplementedError:
        pass
    raise ValueError(f"id column {id_column!r}{where} has type {kind}; ids must be text, UTF-8 binary or "
                     "numbers (or set input.id_column: null)")


def decode_each(ids: pa.Array, id_column: str) -> tuple[pa.Array, dict[int, str]]:
    """Ids decoded one at a time: the slow path of a batch holding an id that is not valid UTF-8."""
    values: list[str | None] = []
    problems: dict[int, str] = {}
    for k, raw in enumerate(ids.cast(pa.large_binary()).to_pylist()):
        try:
            values.append(None if raw is None else raw.decode())
        except UnicodeDecodeError as err:
            values.append(None)
            problems[k] = f"ValueError: id ({id_column}) is not valid UTF-8 ({err.reason} at byte {err.start})"
    return pa.array(values, pa.string()), problems


def row_ids(item: WorkItem, rows: pa.Table, id_column: str | None) -> tuple[list[str], list[str | None]]:
    """(ids, problems): the id column as strings (id_strings' rule); a null or undecodable id gets a
    derived id and a problem."""
    indexes = range(item.start, item.stop)
    if id_column is None:
        return [derived_id(item, r) for r in indexes], [None] * rows.num_rows
    text, bad = id_strings(rows.column(id_column), id_column)
    ids, problems = [], []
    for k, (r, value) in enumerate(zip(indexes, text.to_pylist())):
        if value is None:
            ids.append(derived_id(item, r))
            problems.append(bad.get(k) or f"ValueError: id ({id_column}) is null")
        else:
            ids.append(value)
            problems.append(None)
    return ids, problems


def build_part(item: WorkItem, rows: pa.Table, ids: list[str], values: list[dict[str, Any]],
               common: dict[str, Any], schema: pa.Schema, passthrough: list[str]) -> pa.Table:
    """One output row per input row: ids, pass-through columns, task values, then provenance."""
    if not (rows.num_rows == len(ids) == len(values) == item.num_rows):
        raise RuntimeError(f"item {item.item_id}: {item.num_rows} rows planned, {rows.num_rows} read, "
                           f"{len(values)} produced")
    carried, _ = python_rows(rows.select(passthrough))    # undecodable cells carry as null
    records = []
    for k, (row_id, value) in enumerate(zip(ids, values)):
        record = {"id": row_id, "source": item.uri, "row_index": item.start + k, "item_id": item.item_id}
        record.update(carried[k])
        record.update(common)
        record.update(value)
        records.append(record)
    return pa.Table.from_pylist(records, schema=schema)


def error_part(item: WorkItem, rows: pa.Table, id_column: str | None, error: str,
               common: dict[str, Any], schema: pa.Schema, passthrough: list[str]) -> pa.Table:
    """Every row of an item that failed all its attempts, as an error row."""
    ids, _ = row_ids(item, rows, id_column)
    values = [{"status": "error", "error": error}] * len(ids)
    return build_part(item, rows, ids, values, common, schema, passthrough)

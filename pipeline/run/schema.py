"""The declared output schema of every part, and the rows that fill it."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pyarrow as pa

from dart.telemetry import SequenceTelemetry

from ..tasks import TASKS

HEAD_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),      # input file URI
    pa.field("row_index", pa.int64(), nullable=False),    # row within that file
    pa.field("item_id", pa.string(), nullable=False),
]

TAIL_FIELDS = [
    pa.field("status", pa.string(), nullable=False),      # "ok" | "error"
    pa.field("error", pa.string()),
    pa.field("finish_reason", pa.string()),
    pa.field("model", pa.string()),
    pa.field("model_fingerprint", pa.string()),
    pa.field("dart_method", pa.string()),
    pa.field("config_fingerprint", pa.string()),
    pa.field("actor_id", pa.string()),
    pa.field("node_id", pa.string()),
    pa.field("device", pa.string()),
    pa.field("attempt", pa.int64()),
    pa.field("item_started_at", pa.timestamp("us", tz="UTC")),
    pa.field("item_seconds", pa.float64()),
    pa.field("batch_seconds", pa.float64()),
]

# Columns that depend on where and when a row ran, not on what it computed.
RUN_DEPENDENT = ("actor_id", "node_id", "device", "attempt", "item_started_at", "item_seconds",
                 "batch_seconds", "prefill_seconds", "decode_seconds")
# Columns that depend on the rows a row shared its forwards with (under continuous batching, a matter of
# timing): a forward's FFN weight reads are shared among its rows, and the FFN path it takes (so the FLOPs
# it executes and DART's mask multiplies) depends on all of them. Every other column is the row's own.
BATCH_DEPENDENT = ("ffn_flops_executed", "ffn_bytes_dense", "ffn_bytes_executed", "compact_forwards",
                   "union_forwards", "rowwise_forwards", "dart_overhead_flops")


def _arrow_type(annotation: Any) -> pa.DataType:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        return pa.list_(_arrow_type(args[0]))
    if args and type(None) in args:  # X | None
        return _arrow_type(next(a for a in args if a is not type(None)))
    return {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}[annotation]


def telemetry_fields() -> list[pa.Field]:
    """SequenceTelemetry flattened: one column per field, lists as list columns (DART_SPEC 8)."""
    hints = typing.get_type_hints(SequenceTelemetry)
    return [pa.field(f.name, _arrow_type(hints[f.name])) for f in dataclasses.fields(SequenceTelemetry)
            if f.name != "method"]   # the method is the dart_method column


def output_schema(task: str, passthrough: list[pa.Field]) -> pa.Schema:
    """Head, pass-through columns, task output, telemetry, status/provenance/timings."""
    names = {f.name for f in HEAD_FIELDS + TAIL_FIELDS + list(TASKS[task].output_fields)} | {"output"}
    clash = [f.name for f in passthrough if f.name in names]
    if clash:
        raise ValueError(f"pass-through column(s) {clash} clash with output columns; rename them")
    fields = [*HEAD_FIELDS, *passthrough, pa.field("output", pa.string()), *list(TASKS[task].output_fields),
              *telemetry_fields(), *TAIL_FIELDS]
    return pa.schema(fields, metadata={"dart_pipeline.task": task})

"""Everything decided before any work runs: inputs checked, plan made, run directory opened."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from .config import JobConfig, dump_config
from .plan import WorkItem, plan_digest, plan_items
from .records import error_part
from .schema import output_schema
from .sources import SourceFile, check_columns, read_rows, resolve_inputs
from .store import RunDir

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Everything decided before any work runs."""

    config: JobConfig
    sources: list[SourceFile]
    plan: list[WorkItem]
    schema: pa.Schema
    fingerprint: str
    run: RunDir


def _local_dir(uri: str) -> Path | None:
    return None if "://" in uri and not uri.startswith("file://") else Path(uri.removeprefix("file://")).resolve()


def check_output_location(config: JobConfig, sources: list[SourceFile]) -> None:
    """The output must never be inside an input directory, nor hold an input file."""
    out = Path(config.output.dir).expanduser().resolve()
    for path in config.input.paths:
        local = _local_dir(path)
        if local is not None and local.is_dir() and out.is_relative_to(local):
            raise ValueError(f"output.dir {out} is inside input directory {local}; choose another output.dir")
        if local is not None and "**" in path:
            root = Path(str(local).split("**", 1)[0])
            if out.is_relative_to(root):
                raise ValueError(f"output.dir {out} is under the recursive input glob {path}")
    for src in sources:
        local = _local_dir(src.uri)
        if local is not None and local.is_relative_to(out):
            raise ValueError(f"input file {src.uri} is inside output.dir {out}; choose another output.dir")


def prepare(config: JobConfig) -> Prepared:
    """Resolve and check every input, plan the items, open (or resume) the run directory."""
    inp = config.input
    sources = resolve_inputs(inp.paths, inp.hf_split)
    if not sources:
        raise ValueError(f"input.paths {inp.paths} match no file")
    check_columns(sources, inp.columns, inp.passthrough_columns)
    if inp.id_column is None:
        logger.warning("input.id_column is null: row ids are derived as '<file>#<row>'")
    check_output_location(config, sources)
    first = sources[0].schema
    schema = output_schema(config.task, [first.field(c) for c in inp.passthrough_columns])
    plan = plan_items(sources, inp.rows_per_item, inp.limit)
    fingerprint = config.fingerprint(plan_digest(plan))
    run = RunDir.open(config.output.dir, config.task, fingerprint, dump_config(config), plan)
    logger.info("%d input file(s), %d rows, %d work items; run %s", len(sources),
                sum(s.num_rows for s in sources), len(plan), run.root)
    return Prepared(config, sources, plan, schema, fingerprint, run)


def read_item_rows(prep: Prepared, item: WorkItem) -> pa.Table:
    return read_rows(prep.sources[item.source_index], item.start, item.stop, prep.config.input.columns)


def write_failed_item(prep: Prepared, item: WorkItem, rows: pa.Table, error: str, attempts: int) -> None:
    """An item that failed every attempt: its rows become error rows and the job goes on."""
    cfg = prep.config
    common = {"model": cfg.model.source, "dart_method": cfg.dart.method,
              "config_fingerprint": prep.fingerprint, "attempt": attempts}
    table = error_part(item, rows, cfg.input.id_column, error, common, prep.schema,
                       list(cfg.input.passthrough_columns))
    prep.run.write_part(item, table, {"status": "failed", "attempts": attempts, "error": error})

"""A job's model, engine and task as a Ray Data transform: `Dataset.map_batches(DartBatchMapper, ...)`.

    import ray
    from pipeline.config import load_config
    from pipeline.cluster import DartBatchMapper, map_batches_options

    config = load_config("conf/summarize.yaml")
    ray.data.read_parquet("data/xsum_sample.parquet").map_batches(
        DartBatchMapper, **map_batches_options(config)).write_parquet("outputs/summaries")

Each input row gives the row the job writes for it (same prompt, seed, engine, task output and
telemetry). What the job adds around rows (a plan, resuming, bounded retries, one run directory,
duplicate ids across files) is left to Ray Data here.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..config import JobConfig, apply_overrides, load_config, parse_config
from ..inputs import id_strings, python_rows
from ..run import output_schema
from ..settings import PoolConfig
from ..tasks import TASKS
from .placement import actor_need, autoscaler_node_types, check_placement, sized_by_memory
from .worker import runtime_ids

log = logging.getLogger(__name__)

# Columns of the job's parts that belong to its plan and retries, not to a row: no file and row
# position reach a map_batches call, and Ray Data has no work items, attempts or run fingerprint.
JOB_ONLY_COLUMNS = ("source", "row_index", "item_id", "config_fingerprint", "attempt", "item_started_at",
                    "item_seconds")


def job_config(config: JobConfig | str | Path | None, overrides: Sequence[str] = ()) -> JobConfig:
    """A JobConfig as given, or read from a YAML path (None: defaults only), then `key=value` overrides."""
    if isinstance(config, JobConfig):
        return parse_config(apply_overrides(config.model_dump(mode="json"), list(overrides))) if overrides else config
    return load_config(config, list(overrides))


def mapper_schema(task: str, passthrough: list[pa.Field]) -> pa.Schema:
    """The job's declared schema without JOB_ONLY_COLUMNS; `id` is nullable (a null input id stays null)."""
    declared = output_schema(task, passthrough)
    fields = [f.with_nullable(True) if f.name == "id" else f for f in declared if f.name not in JOB_ONLY_COLUMNS]
    return pa.schema(fields, metadata=declared.metadata)


def build_runner(config: JobConfig) -> tuple[Any, Any, str]:
    """(task runner, engine, model fingerprint) as a job's actor builds them: on a CPU torch threads = CPUs
    per actor and freed blocks kept (dart.host_memory), the model loaded once, a DartEngine, TASKS[config.task].runner."""
    from dart.engine import DartEngine
    from dart.host_memory import configure_cpu_process
    from dart.loading import load_model, model_fingerprint

    if config.pool.num_gpus_per_actor == 0:
        configure_cpu_process(config.pool.cpus_per_actor)
    model, tokenizer = load_model(config.model)
    fingerprint = model_fingerprint(model)
    engine = DartEngine(model, tokenizer, config.dart, fingerprint=fingerprint, cache_dir=config.model.cache_dir)
    return TASKS[config.task].runner(config.task_context(), tokenizer, engine), engine, fingerprint


def map_batches_options(config: JobConfig | str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Keyword arguments of `Dataset.map_batches(DartBatchMapper, ...)` from the config's pool section:
    a fixed pool of pool.num_actors actors with its CPUs/GPUs, each running pool.in_flight_per_actor
    calls at once (their rows share the actor's continuous batch, as a job's items do), pool.batch_size
    rows per call, pyarrow batches (the input's column types kept). With Ray running, CPU actors are
    sized by memory as the job's pool is (fewer actors where the nodes' memory cannot hold them all, each
    asking Ray for its memory; `placement.sized_by_memory`), and a pool Ray Data would wait on forever
    is refused (`check_placement`, `check_cpu_room`). Without a running Ray (Ray Data starts one with the
    first dataset) nothing is sized or checked."""
    import ray

    config = job_config(config, overrides)
    pool, memory = config.pool, None
    if ray.is_initialized():
        check_placement(pool)               # a pool no node can place is refused, not lowered
        size = sized_by_memory(pool, actor_need(config), widen=False)
        pool, memory = pool.model_copy(update={"num_actors": size.actors}), size.memory
        check_cpu_room(pool)
    calls = pool.in_flight_per_actor
    compute = ray.data.ActorPoolStrategy(size=pool.num_actors, max_tasks_in_flight_per_actor=calls,
                                         max_concurrent_calls_per_actor=calls, enable_true_multi_threading=True)
    return {"fn_constructor_kwargs": {"config": config}, "compute": compute, "num_cpus": pool.cpus_per_actor,
            "num_gpus": pool.num_gpus_per_actor, "batch_size": pool.batch_size, "batch_format": "pyarrow",
            **({"memory": memory} if memory else {})}


def check_cpu_room(pool: PoolConfig) -> None:
    """Raise a ValueError naming the pool keys for a pool that takes every CPU of a running cluster that
    cannot grow: Ray Data's read and write tasks need a CPU beside the pool's, and without one the
    dataset waits forever (Ray 2.60)."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus - pool.num_actors * pool.cpus_per_actor < 1 and autoscaler_node_types() is None:
        raise ValueError(f"pool.num_actors={pool.num_actors} x pool.cpus_per_actor={pool.cpus_per_actor} take "
                         f"all {cpus:g} CPUs of the Ray cluster, and Ray Data's read and write tasks need one "
                         "beside them: lower pool.num_actors or pool.cpus_per_actor")


def plain(value: Any) -> Any:
    """A numpy cell as Python data (arrays to lists, numpy scalars to Python scalars)."""
    if hasattr(value, "tolist") and hasattr(value, "dtype"):   # ndarray or numpy scalar
        return [plain(v) for v in value] if getattr(value, "ndim", 0) else value.item()
    return value


def one_id(value: Any, id_column: str) -> tuple[str | None, str | None]:
    """(id, problem) of one cell under the job's id rule (records.id_strings)."""
    if value is None:
        return None, f"ValueError: id ({id_column}) is null"
    try:
        text, bad = id_strings(pa.array([value]), id_column)
    except (ValueError, TypeError, pa.ArrowException) as err:
        return None, f"ValueError: id ({id_column}) of type {type(value).__name__} is not text or a number ({err})"
    return text[0].as_py(), bad.get(0)


def arrow_rows(table: pa.Table, id_column: str) -> tuple[list[dict], list[str | None], list[str | None]]:
    """(records, ids, problems) of a pyarrow batch: the job's rules for ids and undecodable cells."""
    records, problems = python_rows(table)
    text, bad = id_strings(table.column(id_column), id_column)
    ids = text.to_pylist()
    for k, value in enumerate(ids):
        null = f"ValueError: id ({id_column}) is null" if value is None else None
        problems[k] = bad.get(k) or null or problems[k]    # the job's order: the id's problem first
    return records, ids, problems


def numpy_rows(columns: dict[str, Any], id_column: str) -> tuple[list[dict], list[str | None], list[str | None]]:
    """(records, ids, problems) of a numpy batch (Ray's default format), one cell at a time."""
    names = list(columns)
    count = len(columns[names[0]]) if names else 0
    records = [{name: plain(columns[name][k]) for name in names} for k in range(count)]
    found = [one_id(r[id_column], id_column) for r in records]
    return records, [i for i, _ in found], [p for _, p in found]


class DartBatchMapper:
    """A callable class for `ray.data.Dataset.map_batches`: one model and DartEngine per actor
    (loaded in the constructor, as a job's actor loads them), the job's task runner over each batch.

    `config`: a JobConfig or a YAML path, with `key=value` overrides (`pipeline.config.load_config`);
    its `input.*_column` keys name the columns read, `pool.batch_size` the rows per engine call.
    `map_batches_options(config)` gives the matching map_batches arguments.

    Batches: pyarrow tables (batch_format="pyarrow", what map_batches_options asks for), numpy dicts
    (Ray's default; cells converted one by one, pass-through column types inferred per batch) or
    pandas frames (through pa.Table.from_pandas: a missing value, None or NaN, is null). Returns a pyarrow table, one row per input row in order,
    with the job's output columns (`mapper_schema`): id, pass-through columns, output, the task's
    fields, the telemetry, status, error, finish_reason, model, model_fingerprint, dart_method,
    actor_id, node_id, device, batch_seconds. Left out: JOB_ONLY_COLUMNS (source, row_index, item_id,
    config_fingerprint, attempt, item_started_at, item_seconds). As in the job, the columns of
    schema.BATCH_DEPENDENT depend on which rows shared a forward, so on the batches.

    A bad row (null, empty, too long, undecodable or wrongly typed field; a null or undecodable id)
    becomes an error row (status "error", the job's error message) and never stops the batch; a null
    id stays null. Not checked, unlike the job: ids repeated across batches (no global view here),
    input.id_column null (refused: Ray Data gives no file and row to derive ids from), testing.*.
    A missing input column or anything else that fails raises, and Ray Data retries or fails the batch.
    """

    def __init__(self, config: JobConfig | str | Path, overrides: Sequence[str] = ()) -> None:
        self.config = job_config(config, overrides)
        if self.config.input.id_column is None:
            raise ValueError("DartBatchMapper needs input.id_column: a Ray Data batch carries no file and row "
                             "position to derive ids from")
        self.runner, engine, self.model_fingerprint = build_runner(self.config)
        actor_id, node_id = runtime_ids()
        self.common = {"model": self.config.model.source, "model_fingerprint": self.model_fingerprint,
                       "dart_method": self.config.dart.method, "actor_id": actor_id, "node_id": node_id,
                       "device": str(engine.device)}
        log.info("DartBatchMapper ready on %s (%s)", node_id or "this process", engine.device)

    def __call__(self, batch: pa.Table | dict[str, Any] | Any) -> pa.Table:
        inp = self.config.input
        if hasattr(batch, "iloc"):   # pandas: its missing values (None, NaN) become Arrow nulls, as the job reads them
            batch = pa.Table.from_pandas(batch, preserve_index=False)
        table = batch if isinstance(batch, pa.Table) else None
        columns = table.column_names if table is not None else list(batch.keys())
        missing = [c for c in inp.columns if c not in columns]
        if missing:
            raise ValueError(f"input column(s) {missing} not in the batch (columns: {columns}); set input.*_column")
        if table is not None:
            records, ids, problems = arrow_rows(table.select(inp.columns), inp.id_column)
            passthrough = [table.schema.field(c) for c in inp.passthrough_columns]
        else:
            records, ids, problems = numpy_rows({c: batch[c] for c in inp.columns}, inp.id_column)
            passthrough = [pa.field(c, pa.array([r[c] for r in records]).type) for c in inp.passthrough_columns]
        todo = [k for k, p in enumerate(problems) if p is None]
        values: list[dict[str, Any]] = [{"status": "error", "error": p} for p in problems]
        for k, value in zip(todo, self.runner.run([(ids[k], records[k]) for k in todo])):
            values[k] = value
        rows = [{"id": row_id, **{c: record[c] for c in inp.passthrough_columns}, **self.common, **value}
                for row_id, record, value in zip(ids, records, values)]
        return pa.Table.from_pylist(rows, schema=mapper_schema(self.config.task, passthrough))

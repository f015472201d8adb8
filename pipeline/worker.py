"""The Ray actor: loads one DART model once, then turns work items into output tables."""
from __future__ import annotations

import datetime as dt
import logging
import os
import time
from typing import Any

import pyarrow as pa

from .config import JobConfig
from .plan import WorkItem
from .records import build_part, python_rows, row_ids
from .tasks import TASKS

log = logging.getLogger(__name__)


def runtime_ids() -> tuple[str, str]:
    import ray

    if not ray.is_initialized():  # in-process use (tests); get_runtime_context would start Ray
        return "", ""
    ctx = ray.get_runtime_context()
    return ctx.get_actor_id() or "", ctx.get_node_id() or ""


class DartWorker:
    """Hosts one model and engine. Used as a Ray actor class (pipeline.pool wraps it)."""

    def __init__(self, config_json: str, schema: pa.Schema, config_fingerprint: str) -> None:
        import torch

        from dart.engine import DartEngine
        from dart.loading import load_model, model_fingerprint

        self.config = JobConfig.model_validate_json(config_json)
        self.schema, self.config_fingerprint = schema, config_fingerprint
        if self.config.pool.num_gpus_per_actor == 0:
            torch.set_num_threads(self.config.pool.cpus_per_actor)
        model, tokenizer = load_model(self.config.model)
        self.model_fingerprint = model_fingerprint(model)
        self.engine = DartEngine(model, tokenizer, self.config.dart, fingerprint=self.model_fingerprint,
                                 cache_dir=self.config.model.cache_dir)
        self.task = TASKS[self.config.task].runner(self.config.task_context(), tokenizer, self.engine)
        self.actor_id, self.node_id = runtime_ids()
        self.device = str(self.engine.device)
        log.info("worker %s ready on %s (%s)", self.actor_id, self.node_id, self.device)

    def describe(self) -> dict[str, Any]:
        return {"actor_id": self.actor_id, "node_id": self.node_id, "device": self.device,
                "model_fingerprint": self.model_fingerprint, "pid": os.getpid()}

    def run_item(self, item: WorkItem, rows: pa.Table, attempt: int,
                 known: dict[int, str] | None = None) -> pa.Table:
        """All rows of one item; a bad row becomes an error row, anything else raises (retried).
        `known`: problems the driver found before work (row offset in the item -> error, e.g. a
        duplicate id); those rows become error rows without running."""
        started = dt.datetime.now(dt.timezone.utc)
        began = time.perf_counter()
        inp, testing = self.config.input, self.config.testing
        if testing.delay_seconds:
            time.sleep(testing.delay_seconds)
        ids, problems = row_ids(item, rows, inp.id_column)
        failing = set(ids) & set(testing.fail_ids)
        if failing:
            raise RuntimeError(f"injected failure for id(s) {sorted(failing)} (testing.fail_ids)")
        records, decoding = python_rows(rows)
        problems = [p or d or (known or {}).get(k) for k, (p, d) in enumerate(zip(problems, decoding))]
        todo = [k for k, p in enumerate(problems) if p is None]
        values: list[dict[str, Any]] = [{"status": "error", "error": p} for p in problems]
        for k, value in zip(todo, self.task.run([(ids[k], records[k]) for k in todo])):
            values[k] = value
        common = {
            "model": self.config.model.source, "model_fingerprint": self.model_fingerprint,
            "dart_method": self.config.dart.method, "config_fingerprint": self.config_fingerprint,
            "actor_id": self.actor_id, "node_id": self.node_id, "device": self.device, "attempt": attempt,
            "item_started_at": started, "item_seconds": time.perf_counter() - began,
        }
        return build_part(item, rows, ids, values, common, self.schema, list(inp.passthrough_columns))


"""The Ray actor: loads one model once, then turns work items of one job after another into output
tables, each job's items through an engine and task runner built for that job's config."""
from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import traceback
from typing import Any

import pyarrow as pa

from ..config import JobConfig
from ..failures import WorkerSetupError, first_line
from ..inputs import WorkItem, build_part, python_rows, row_ids
from ..tasks import TASKS

log = logging.getLogger(__name__)

# What a worker needs to turn a job's items into parts: (config JSON, output schema, config fingerprint).
WorkerSetup = tuple[str, pa.Schema, str]


def runtime_ids() -> tuple[str, str]:
    import ray

    if not ray.is_initialized():  # in-process use (tests); get_runtime_context would start Ray
        return "", ""
    ctx = ray.get_runtime_context()
    return ctx.get_actor_id() or "", ctx.get_node_id() or ""


class DartWorker:
    """Hosts one model; its engine and task runner follow the job whose items it runs. Used as a Ray
    actor class (pool.py wraps it).

    Ray restarts a dead actor by calling __init__ with its first arguments, which may be an earlier
    job's; so each item carries its job's setup and the worker reconfigures before running it."""

    def __init__(self, config_json: str, schema: pa.Schema, config_fingerprint: str, threads: int | None = None) -> None:
        """`threads`: the CPUs Ray gave this actor where the pool differs from pool.cpus_per_actor."""
        import torch

        from dart.host_memory import configure_cpu_process
        from dart.loading import load_model, model_fingerprint

        config = JobConfig.model_validate_json(config_json)
        if config.pool.num_gpus_per_actor == 0:
            configure_cpu_process(threads or config.pool.cpus_per_actor)
        self.threads = torch.get_num_threads()
        self.model_config = config.model
        try:
            self.model, self.tokenizer = load_model(config.model)
        except Exception as err:    # kept, not raised: Ray would print it with a native stack dump and restart us
            self.load_error = (f"actor could not load model {config.model.source!r}: {type(err).__name__}: "
                               f"{first_line(err, 500)}", traceback.format_exc())
            self.actor_id, self.node_id = runtime_ids()
            return
        self.load_error: tuple[str, str] | None = None      # (one line, the traceback)
        self.model_fingerprint = model_fingerprint(self.model)
        self.proxies = None             # computed by the first engine that needs them, shared by the next
        self.engine = self.task = self.config = self.schema = self.config_fingerprint = None
        self.setup_key: tuple[str, str] | None = None     # (config JSON, fingerprint) of engine and task
        self.engines_built = 0
        self.idle = threading.Condition()     # items run at once (Ray threads); a rebuild waits for none
        self.running = 0
        self.actor_id, self.node_id = runtime_ids()
        self.device = str(self.model.get_input_embeddings().weight.device)
        self.configure(config_json, schema, config_fingerprint)
        log.info("worker %s ready on %s (%s)", self.actor_id, self.node_id, self.device)

    def configure(self, config_json: str, schema: pa.Schema, config_fingerprint: str) -> dict[str, Any]:
        """Run the next items under this config: a new engine and task runner over the loaded model
        (none when the config is the current one). Refuses a config for another model. Returns describe(),
        or {"load_error": (line, traceback)} when the model could not load."""
        if self.load_error is not None:
            return self.describe()
        with self.idle:
            self.switch((config_json, schema, config_fingerprint))
        return self.describe()

    def switch(self, setup: WorkerSetup) -> None:
        """Make `setup` current (lock held); a rebuild first waits until no item runs under the old one."""
        config_json, schema, config_fingerprint = setup
        if (config_json, config_fingerprint) != self.setup_key:
            self.idle.wait_for(lambda: self.running == 0)
            self.build(JobConfig.model_validate_json(config_json), schema, config_fingerprint)
            self.setup_key = (config_json, config_fingerprint)

    def build(self, config: JobConfig, schema: pa.Schema, config_fingerprint: str) -> None:
        """A new engine and task runner for `config` over the loaded model (lock held)."""
        from dart.engine import DartEngine

        if config.model != self.model_config:
            raise ValueError(f"this worker hosts model {self.model_config.model_dump(exclude_defaults=True)}, "
                             f"not {config.model.model_dump(exclude_defaults=True)}: a job on another model "
                             "needs its own actors")
        if self.engine is not None:
            self.engine.release_gathered()
            self.engine.close()           # unpatch the model before the next engine patches it
            self.engine = self.task = self.setup_key = None
        self.engine = DartEngine(self.model, self.tokenizer, config.dart, fingerprint=self.model_fingerprint,
                                 proxies=self.proxies, cache_dir=config.model.cache_dir)
        self.proxies = self.engine.proxies if self.engine.proxies is not None else self.proxies
        self.task = TASKS[config.task].runner(config.task_context(), self.tokenizer, self.engine)
        self.config, self.schema, self.config_fingerprint = config, schema, config_fingerprint
        self.engines_built += 1
        log.info("worker %s configured for run %s (%s)", self.actor_id, config_fingerprint, config.dart.method)

    def describe(self) -> dict[str, Any]:
        if self.load_error is not None:
            return {"load_error": self.load_error, "actor_id": self.actor_id, "pid": os.getpid()}
        return {"actor_id": self.actor_id, "node_id": self.node_id, "device": self.device,
                "model_fingerprint": self.model_fingerprint, "pid": os.getpid(),
                "model_dtype": str(self.model.dtype).removeprefix("torch."), "linear_kernel": self.engine.kernel,
                "config_fingerprint": self.config_fingerprint, "engines_built": self.engines_built,
                "threads": self.threads}

    def run_item(self, item: WorkItem, rows: pa.Table, attempt: int,
                 known: dict[int, str] | None = None, setup: WorkerSetup | None = None) -> pa.Table:
        """All rows of one item; a bad row becomes an error row, anything else raises (retried).
        `known`: problems the driver found before work (row offset in the item -> error, e.g. a
        duplicate id); those rows become error rows without running. `setup`: the item's job
        (configure's arguments); None runs it under the current config."""
        if self.load_error is not None:     # restarted by Ray, and the model did not load this time
            raise WorkerSetupError(self.load_error[0])
        with self.idle:
            if setup is not None:
                self.switch(setup)
            self.running += 1
            config, task, schema, fingerprint = self.config, self.task, self.schema, self.config_fingerprint
        try:
            return self.part(item, rows, attempt, known or {}, config, task, schema, fingerprint)
        finally:
            with self.idle:
                self.running -= 1
                self.idle.notify_all()

    def part(self, item: WorkItem, rows: pa.Table, attempt: int, known: dict[int, str], config: JobConfig, task,
             schema: pa.Schema, fingerprint: str) -> pa.Table:
        """The output part of one item under one config (the worker's at the time the item began)."""
        started = dt.datetime.now(dt.timezone.utc)
        began = time.perf_counter()
        inp, testing = config.input, config.testing
        if testing.delay_seconds:
            time.sleep(testing.delay_seconds)
        ids, problems = row_ids(item, rows, inp.id_column)
        failing = set(ids) & set(testing.fail_ids)
        if failing:
            raise RuntimeError(f"injected failure for id(s) {sorted(failing)} (testing.fail_ids)")
        records, decoding = python_rows(rows)
        problems = [p or d or known.get(k) for k, (p, d) in enumerate(zip(problems, decoding))]
        todo = [k for k, p in enumerate(problems) if p is None]
        values: list[dict[str, Any]] = [{"status": "error", "error": p} for p in problems]
        for k, value in zip(todo, task.run([(ids[k], records[k]) for k in todo])):
            values[k] = value
        common = {
            "model": config.model.source, "model_fingerprint": self.model_fingerprint,
            "dart_method": config.dart.method, "config_fingerprint": fingerprint,
            "actor_id": self.actor_id, "node_id": self.node_id, "device": self.device, "attempt": attempt,
            "item_started_at": started, "item_seconds": time.perf_counter() - began,
        }
        return build_part(item, rows, ids, values, common, schema, list(inp.passthrough_columns))

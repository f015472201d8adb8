"""The driver: open the job (inputs checked, plan made), run its pending items on Ray, summarize."""
from __future__ import annotations

import logging
import time
from typing import Any

from .checks import warn_if_unpruned
from .cluster import WorkerPool, run_items
from .config import JobConfig
from .run import Job, check_durable_output, writing

log = logging.getLogger(__name__)


def run_job(config: JobConfig, pool: WorkerPool | None = None) -> dict[str, Any]:
    """Run (or resume) a job to completion, or up to control.max_items; returns the summary.
    The run is held by this driver throughout (a second driver on it refuses: RunBusy). `pool`: actors
    shared with other jobs of the same model and pool settings (pipeline.cluster.pool_key); None starts
    the job's own and kills them at its end."""
    began = time.perf_counter()
    check_durable_output(config.output.dir)
    job = Job.open(config)
    warn_if_unpruned(config)
    with job.run.lock(config.output.lease_seconds):
        todo = job.unfinished()
        skipped = len(job.plan) - len(todo)
        if config.control.max_items is not None:
            todo = todo[:config.control.max_items]
        if not job.plan:
            log.warning("input %s has no rows: the run is complete with an empty output", config.input.paths)
            with writing(job.run.root):
                job.run.write_empty(job.schema)
        generated = 0
        if todo:
            with writing(job.run.root):
                job.run.unfinish()
            generated = run_items(job, todo, pool)
        wall = time.perf_counter() - began
        return job.close({"skipped_items": skipped, "wall_seconds": wall,
                          "tokens_per_second": generated / wall if wall > 0 else None})

"""The driver: check inputs, plan, skip finished items, run the rest on Ray actors, summarize."""
from __future__ import annotations

import logging
import time
from typing import Any

from .config import JobConfig
from .pool import run_items
from .prepare import prepare
from .summary import summarize_table

logger = logging.getLogger(__name__)


def run_job(config: JobConfig) -> dict[str, Any]:
    """Run (or resume) a job to completion, or up to control.max_items; returns the summary."""
    began = time.perf_counter()
    prep = prepare(config)
    prep.run.clean_temp()
    todo = [it for it in prep.plan if not prep.run.is_done(it)]
    skipped = len(prep.plan) - len(todo)
    if skipped:
        logger.info("%d of %d work items already done; skipping them", skipped, len(prep.plan))
    if config.control.max_items is not None:
        todo = todo[:config.control.max_items]
    if not prep.plan:
        logger.warning("input %s has no rows: the run is complete with an empty output", config.input.paths)
        prep.run.write_empty(prep.schema)
    generated = 0
    if todo:
        prep.run.unfinish()
        generated = run_items(prep, todo)
    done = sum(prep.run.is_done(it) for it in prep.plan)
    wall = time.perf_counter() - began
    summary = {"run_dir": str(prep.run.root), "config_fingerprint": prep.fingerprint, "task": config.task,
               "planned_items": len(prep.plan), "done_items": done, "skipped_items": skipped,
               "complete": done == len(prep.plan), "wall_seconds": wall,
               "tokens_per_second": generated / wall if wall > 0 else None}
    if done or not prep.plan:
        summary.update(summarize_table(prep.run.read(), config.task))
    if summary["complete"]:
        prep.run.finish(summary)
    logger.info("run %s: %d/%d items done", prep.run.root, done, len(prep.plan))
    return summary

"""Running a study: every cell of the sweep through the pipeline, then its results and report.

Runs live beside the studies, so studies under one output folder share identical configs' runs.

    <study.output>/runs/<task>-<fp>/    one pipeline run per config (parts, markers, summary.json)
    <study.output>/<study.name>/
        study.yaml                the resolved study config
        runs.json                 config label -> run directory and run summary
        results.parquet           one row per item x config, with study labels and derived metrics
        summary.csv  comparisons.csv  report.md  *.png    (pipeline.study.report)
"""
from __future__ import annotations

import logging
import time
from typing import Any

import yaml

from ..cluster import WorkerPool, pool_key
from ..driver import run_job
from ..run import Job, write_atomic_bytes, write_json
from .config import StudyConfig, StudyRun, expand
from .report import write_report
from .results import collect, write_results

log = logging.getLogger(__name__)


def run_state(run: StudyRun) -> dict[str, Any]:
    """Where a cell's run stands on disk, without running anything (for --report-only)."""
    job = Job.open(run.config)
    done = job.done_items()
    return {"run_dir": str(job.run.root), "config_fingerprint": job.fingerprint,
            "planned_items": len(job.plan), "done_items": done, "complete": done == len(job.plan)}


def run_cells(name: str, runs: list[StudyRun]) -> list[dict[str, Any]]:
    """Run (or resume) every cell; returns their summaries in `runs` order. Cells that share a model
    and the pool's actor settings run one after another on one set of actors, which load the model
    once: each cell only builds a new engine over it."""
    groups: dict[str, list[int]] = {}
    for k, run in enumerate(runs):
        groups.setdefault(pool_key(run.config), []).append(k)
    summaries: dict[int, dict[str, Any]] = {}
    for cells in groups.values():
        with WorkerPool(runs[cells[0]].config, [runs[k].config for k in cells[1:]]) as pool:
            for k in cells:
                run = runs[k]
                on = run.dataset if run.model is None else f"{run.dataset}, model {run.model}"
                log.info("study %s: config %d/%d %s on %s", name, k + 1, len(runs), run.label, on)
                summaries[k] = run_job(run.config, pool)
    return [summaries[k] for k in range(len(runs))]


def run_study(study: StudyConfig, report_only: bool = False) -> dict[str, Any]:
    """Run (or resume) every cell, collect the results, write the report. Returns what was written."""
    began = time.perf_counter()
    runs = expand(study)
    root = study.directory
    root.mkdir(parents=True, exist_ok=True)
    write_atomic_bytes(root / "study.yaml", yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False).encode())
    summaries = [run_state(run) for run in runs] if report_only else run_cells(study.study.name, runs)
    write_json(root / "runs.json", [{"model": r.model, "dataset": r.dataset, "config": r.label, **s}
                                    for r, s in zip(runs, summaries)])
    results = collect(runs, summaries, study.study.baseline)
    write_results(results, root / "results.parquet")
    written = write_report(results, study, root)
    wall = time.perf_counter() - began
    log.info("study %s written to %s in %.0f s", study.study.name, root, wall)
    return {"study_dir": str(root), "configs": len(runs), "complete": all(s.get("complete", False) for s in summaries),
            "wall_seconds": wall, **written}

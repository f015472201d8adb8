"""Bench 9: documents/s of a job now against the same job as an earlier commit ran it (default: the
commit before continuous batching), same config, same machine, runs alternated in one invocation
(before, now, then now, before, ...): wall seconds of each job process (Ray start, actors, model load
and every row), documents/s, their ratio, and how many rows' outputs are identical.

    python -m bench.throughput [--before ffeb9b0] [--reps 1] [--jobs qa summarize] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from bench.revision import ROOT, timed_module, worktree

log = logging.getLogger(__name__)

JOBS = {"qa": "conf/qa.yaml", "summarize": "conf/summarize.yaml", "label": "conf/label.yaml"}


def run_once(cwd: Path, job: str, overrides: list[str]) -> tuple[float, dict[str, str], int]:
    """(wall seconds, {row id: output}, rows) of one job run from the checkout at `cwd`."""
    with tempfile.TemporaryDirectory() as out:
        args = ["--config", JOBS[job], *overrides, "control.progress=false", f"output.dir={out}"]
        seconds = timed_module(cwd, f"jobs.{job}", args)
        run_dir = next(Path(out).glob(f"{job}-*"))
        table = pq.read_table(run_dir / "parts", columns=["id", "output"])
        outputs = dict(zip(table.column("id").to_pylist(), table.column("output").to_pylist()))
        rows = json.loads((run_dir / "summary.json").read_text()).get("rows", len(outputs))
    return seconds, outputs, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="ffeb9b0", help="the earlier commit to compare with")
    parser.add_argument("--reps", type=int, default=1, help="pairs of runs per job (each pair alternates the order)")
    parser.add_argument("--jobs", nargs="+", default=["qa", "summarize"], choices=sorted(JOBS))
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the job configs (both sides)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    lines = ["| job | rows | before s | now s | documents/s now vs before | identical outputs |",
             "|-----|------|----------|-------|---------------------------|-------------------|"]
    with worktree(args.before) as before:
        sides = {"before": before, "now": ROOT}
        for job in args.jobs:
            walls: dict[str, list[float]] = {side: [] for side in sides}
            outputs: dict[str, dict] = {}
            for rep in range(2 * args.reps):
                for side in (list(sides) if rep % 2 == 0 else list(reversed(sides))):
                    seconds, outputs[side], rows = run_once(sides[side], job, args.overrides)
                    walls[side].append(seconds)
            same = sum(outputs["now"].get(k) == v for k, v in outputs["before"].items())
            b, n = statistics.fmean(walls["before"]), statistics.fmean(walls["now"])
            lines.append(f"| {job} | {rows} | {b:.1f} | {n:.1f} | {b / n:.2f}x | {same}/{len(outputs['before'])} |")
    print(f"Bench 9: jobs now vs {args.before}, {args.reps} pair(s) of runs each, alternated\n" + "\n".join(lines))


if __name__ == "__main__":
    main()

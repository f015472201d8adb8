"""Bench 8: a 6-cell study end to end (`python -m jobs.study`, bench/study_reuse.yaml: 16 XSum
documents, dense, static and dart at two budgets, dart with recalibration), as the code before actor
reuse ran it (actors started and the model loaded per cell) and as the code now runs it: wall seconds
of each and their ratio.

    python -m bench.study_reuse [--before ffeb9b0] [--after HEAD] [--documents 16] [--runs 1]

Both revisions run from temporary git worktrees (bench/revision.py) with this Python environment, so
edits not yet committed in the checkout take no part. Each study writes to a fresh folder, so nothing
resumes. The model's conversion and forward proxies are cached before timing, so neither side pays
them. With --runs 2 or more the order alternates (before, after, then after, before, ...) and the
ratio is of the medians.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench import common
from bench.revision import ROOT, timed_module, worktree

STUDY = ROOT / "bench" / "study_reuse.yaml"


def study_rows(output: Path) -> int:
    """Rows written by every cell of the study under `output`."""
    runs = json.loads((output / "study_reuse" / "runs.json").read_text())
    return sum(r.get("rows", 0) for r in runs)


def one_study(cwd: Path, out: Path, documents: int) -> tuple[float, int]:
    """Wall seconds of one study run from `cwd`, and the rows it wrote."""
    seconds = timed_module(cwd, "jobs.study", ["--config", str(STUDY), f"study.output={out}",
                                               f"study.limit={documents}"])
    return seconds, study_rows(out)


def commit_of(ref: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], capture_output=True, text=True,
                          check=True).stdout.strip()


def timed_sides(revisions: dict[str, str], documents: int, runs: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Wall seconds of each side's studies, alternating which side runs first; rows written per side."""
    times: dict[str, list[float]] = {side: [] for side in revisions}
    rows: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        code = {side: stack.enter_context(worktree(ref)) for side, ref in revisions.items()}
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="study-reuse-")))
        for run in range(runs):
            for side in (list(revisions) if run % 2 == 0 else list(reversed(revisions))):
                seconds, rows[side] = one_study(code[side], scratch / f"{side}-{run}", documents)
                times[side].append(seconds)
    return times, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="ffeb9b0", help="the revision before actor reuse")
    parser.add_argument("--after", default="HEAD", help="the revision to compare with it")
    parser.add_argument("--documents", type=int, default=16, help="study.limit")
    parser.add_argument("--runs", type=int, default=1, help="studies per side (the first side alternates)")
    args = parser.parse_args(argv)
    common.load_embedded(threads=1, level=logging.WARNING)    # converted model and proxies on disk
    revisions = {"before": commit_of(args.before), "after": commit_of(args.after)}
    times, rows = timed_sides(revisions, args.documents, args.runs)
    median = {side: statistics.median(t) for side, t in times.items()}
    table = [[side, revisions[side], " ".join(f"{t:.0f}" for t in times[side]), str(rows[side]),
              f"{median['before'] / median[side]:.2f}"] for side in times]
    common.write_table(
        f"Bench 8: 6-cell study of {args.documents} XSum documents (bench/study_reuse.yaml), {args.runs} "
        f"run(s) per side, {common.machine()}; before/after = {median['before'] / median['after']:.2f}",
        ["side", "commit", "wall s", "rows written", "before / side"], table)


if __name__ == "__main__":
    main()

"""Bench 17: the main summarize job's documents/s against its dense run at the same dtype, at keep 0.5,
and in float32 (what `model.dtype: auto` runs on a CPU), all sides at `--dtype` (default: native)
unless a side sets its own: every side a whole job on a local Ray, the sides run
in mirrored order (A B C ..., then ... C B A) so that a machine busy for a while slows them alike.

    python -m bench.job_speed [--config conf/summarize.yaml --documents 48 --reps 1] [key=value ...]

Per side: documents/s over the processing window (first item start to last item end, read from the
parts: no Ray start or model load) and over the whole `run_job` call, the rows' prefill seconds, FFN
FLOPs executed against dense over prompt and generated tokens, ROUGE-L, and the dtype the actors ran.
Ratios are against the first side's mean. `--side NAME=k=v,k=v` replaces the default sides.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from bench import common
from pipeline.config import load_config
from pipeline.driver import run_job

DEFAULT_SIDES = {
    "dense (same dtype)": ["dart.method=dense"],
    "main job": [],
    "main job, keep 0.5": ["dart.keep_ratio=0.5"],
    "keep 0.5, dense prompt": ["dart.keep_ratio=0.5", "dart.prefill.mode=dense"],
    "main job, float32": ["model.dtype=float32"],
}
DATA = ["input.paths=[data/xsum_study.parquet]"]    # 200 XSum dev documents (data/README.md)


def parse_sides(given: list[str]) -> dict[str, list[str]]:
    """NAME=k=v,k=v arguments as {NAME: [k=v, ...]}."""
    sides = {}
    for side in given:
        name, _, overrides = side.partition("=")
        sides[name] = [o for o in overrides.split(",") if o]
    return sides


def window_seconds(run_dir: str) -> float:
    """First item start to last item end over the run's parts."""
    table = pq.read_table(Path(run_dir) / "parts", columns=["item_started_at", "item_seconds"])
    starts = [t.timestamp() for t in table.column("item_started_at").to_pylist()]
    ends = [s + d for s, d in zip(starts, table.column("item_seconds").to_pylist())]
    return max(ends) - min(starts)


def one_job(config_path: str, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        config = load_config(config_path, [*overrides, "control.progress=false", f"output.dir={out}"],
                             task="summarize")
        summary = run_job(config)
        summary["window_seconds"] = window_seconds(summary["run_dir"])
        return summary


def side_row(name: str, runs: list[dict], base: dict[str, float]) -> list[str]:
    window = statistics.fmean(r["rows"] / r["window_seconds"] for r in runs)
    whole = statistics.fmean(r["rows"] / r["wall_seconds"] for r in runs)
    prefill = statistics.fmean(r["prefill_seconds"] or 0.0 for r in runs)
    last = runs[-1]
    return [name, f"{window:.3f}", f"{window / base['window']:.3f}", f"{whole:.3f}", f"{whole / base['whole']:.3f}",
            f"{prefill:.1f}", f"{last.get('ffn_flops_executed_fraction') or 0:.3f}", f"{last.get('rouge_l') or 0:.3f}",
            str(last.get("model_dtype", "?"))]


HEADER = ["side", "docs/s (window)", "vs first", "docs/s (whole run)", "vs first", "prefill s (rows' sum)",
          "FFN FLOPs / dense", "ROUGE-L", "dtype"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="conf/summarize.yaml")
    parser.add_argument("--documents", type=int, default=48)
    parser.add_argument("--reps", type=int, default=1, help="mirrored rounds (each runs every side twice)")
    parser.add_argument("--side", action="append", default=[], metavar="NAME=K=V,K=V")
    common.dtype_argument(parser)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of every side")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    sides = parse_sides(args.side) if args.side else DEFAULT_SIDES
    common_overrides = [*DATA, f"input.limit={args.documents}", f"model.dtype={args.dtype}", *args.overrides]
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for rep in range(2 * args.reps):
        for name in (list(sides) if rep % 2 == 0 else list(reversed(sides))):
            runs[name].append(one_job(args.config, [*common_overrides, *sides[name]]))
            logging.warning("%s: %.1f s window, %.1f s whole", name, runs[name][-1]["window_seconds"],
                            runs[name][-1]["wall_seconds"])
    first = runs[next(iter(sides))]
    base = {"window": statistics.fmean(r["rows"] / r["window_seconds"] for r in first),
            "whole": statistics.fmean(r["rows"] / r["wall_seconds"] for r in first)}
    config = load_config(args.config, common_overrides, task="summarize")
    common.write_table(
        f"Bench 17: summarize job, {args.documents} documents of {config.input.paths}, {config.pool.num_actors} "
        f"actors x {config.pool.cpus_per_actor} CPU, {2 * args.reps} runs per side (mirrored order), {common.machine()}",
        HEADER, [side_row(name, side_runs, base) for name, side_runs in runs.items()])


if __name__ == "__main__":
    main()

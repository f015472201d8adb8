"""Bench 3: pipeline overhead: documents/s of the summarize job (`pipeline.driver.run_job`: Ray actor,
prompt building, Parquet parts, markers) against the bare engine generating the same prompts in the
same batches, alternated bare / job / bare in one run.

    python -m bench.pipeline_overhead [--config conf/summarize.yaml] [key=value ...]

Defaults make the two sides comparable on a shared CPU: one actor with one CPU (the bare engine uses
one torch thread), method dart as in the config, a fresh output folder per job run.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

import pyarrow.parquet as pq
import torch

from bench import common
from dart.engine import DartEngine
from dart.loading import load_model, model_fingerprint
from pipeline.config import load_config
from pipeline.driver import run_job
from pipeline.tasks.summarize import SummarizeTask

BENCH_OVERRIDES = ["pool.num_actors=1", "pool.cpus_per_actor=1", "pool.local_num_cpus=1", "control.progress=false"]


def bare_engine(config, documents: list[dict]) -> float:
    """Seconds for the bare engine: load, build the same prompts, generate in the job's batches."""
    start = time.perf_counter()
    model, tokenizer = load_model(config.model)
    engine = DartEngine(model, tokenizer, config.dart, fingerprint=model_fingerprint(model),
                        cache_dir=config.model.cache_dir)
    try:
        task = SummarizeTask(config.task_context(), tokenizer, engine)
        prompts = [task.prepare(row)[0].ids for row in documents]
        size = config.pool.batch_size
        for first in range(0, len(prompts), size):
            results = engine.generate(prompts[first:first + size], config.generation)
            [tokenizer.decode(r.token_ids, skip_special_tokens=True) for r in results]
    finally:
        engine.close()
    return time.perf_counter() - start


def job(config_path: str, overrides: list[str]) -> tuple[float, float]:
    """(wall seconds of run_job, sum of the items' own seconds inside the actor)."""
    with tempfile.TemporaryDirectory() as out:
        config = load_config(config_path, [*BENCH_OVERRIDES, *overrides, f"output.dir={out}"], task="summarize")
        start = time.perf_counter()
        summary = run_job(config)
        wall = time.perf_counter() - start
        table = pq.read_table(f"{summary['run_dir']}/parts", columns=["item_id", "item_seconds"]).to_pandas()
        return wall, float(table.groupby("item_id")["item_seconds"].first().sum())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="conf/summarize.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the job config (both sides)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    config = load_config(args.config, [*BENCH_OVERRIDES, *args.overrides], task="summarize")
    documents = []
    for path in config.input.paths:
        documents += pq.read_table(path).to_pylist()
    bare_before = bare_engine(config, documents)
    job_wall, job_items = job(args.config, args.overrides)
    bare_after = bare_engine(config, documents)
    bare = statistics.fmean([bare_before, bare_after])
    n = len(documents)
    rows = [["bare engine (load + prompts + generate)", f"{n / bare:.3f}", "1.000", "-"],
            ["summarize job, end to end (Ray start, actor, Parquet)", f"{n / job_wall:.3f}",
             f"{bare / job_wall:.3f}", f"{job_wall / bare - 1:+.1%}"],
            ["summarize job, inside the actor (sum of item_seconds)", f"{n / job_items:.3f}",
             f"{bare / job_items:.3f}", f"{job_items / bare - 1:+.1%}"]]
    common.write_table(f"Bench 3: pipeline overhead, {n} documents of {config.input.paths}, batch "
                       f"{config.pool.batch_size}, {config.dart.method} keep {config.dart.keep_ratio}, "
                       f"{common.machine()} (bare runs: {bare_before:.0f} s, {bare_after:.0f} s)",
                       ["side", "documents/s", "speed vs bare", "overhead"], rows)


if __name__ == "__main__":
    main()

"""Bench 10: what continuous batching saves inside one actor, without Ray or the fixed costs of a job:
a job config's rows through one engine as static batches (pool.batch_size rows in plan order, left-padded
to the longest, the batch running until its last row ends: the actor before continuous batching) and
through the continuous batch (the rows of pool.in_flight_per_actor items at once, longest first), the
two alternated on the same prompts: seconds, the ratio, prompt tokens computed (padding included), and
how many rows' tokens are identical.

    python -m bench.batching [--config conf/qa.yaml] [--rows 24] [--reps 2] [--threads 1] [key=value ...]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time

import pyarrow.parquet as pq

from bench import common
from dart.engine import DartEngine
from dart.group_cost import group_cap
from dart.scheduler import Request, generate_continuously
from pipeline.config import load_config
from pipeline.tasks import TASKS


def static_batches(engine, prompts, gen, size: int) -> tuple[list, int]:
    """(results, prompt tokens computed) of batches of `size` in order."""
    out, computed = [], 0
    for start in range(0, len(prompts), size):
        batch = prompts[start:start + size]
        computed += max(map(len, batch)) * len(batch)
        out += engine.generate(batch, gen)
    return out, computed


def continuous(engine, prompts, gen, size: int, rows_at_once: int) -> list:
    """Results of the continuous batch, fed `rows_at_once` rows at a time (the items an actor holds)."""
    out: dict = {}
    for start in range(0, len(prompts), rows_at_once):
        keys = range(start, min(start + rows_at_once, len(prompts)))
        out.update(generate_continuously(engine, [Request(k, prompts[k], 0) for k in keys], gen, size))
    return [out[k] for k in range(len(prompts))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="conf/qa.yaml")
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    model, tokenizer, proxies = common.load_embedded(args.threads, level=logging.WARNING)
    config = load_config(args.config, args.overrides)
    engine = DartEngine(model, tokenizer, config.dart, proxies=proxies)
    group_cap(engine)                    # the batcher's measured prefill groups, before any timing
    task = TASKS[config.task].runner(config.task_context(), tokenizer, engine)
    rows = pq.read_table(config.input.paths[0]).slice(0, args.rows).to_pylist()
    prompts = [task.prepare(row)[0].ids for row in rows]
    size, at_once = config.pool.batch_size, config.input.rows_per_item * config.pool.in_flight_per_actor
    seconds: dict[str, list[float]] = {"static": [], "continuous": []}
    for rep in range(args.reps):
        for side in (["static", "continuous"] if rep % 2 == 0 else ["continuous", "static"]):
            began = time.perf_counter()
            if side == "static":
                before, computed = static_batches(engine, prompts, config.generation, size)
            else:
                after = continuous(engine, prompts, config.generation, size, at_once)
            seconds[side].append(time.perf_counter() - began)
    same = sum(a.token_ids == b.token_ids for a, b in zip(before, after))
    real = sum(map(len, prompts))
    s, c = statistics.median(seconds["static"]), statistics.median(seconds["continuous"])
    print(f"Bench 10: {config.task} ({args.config}), {len(prompts)} rows, batch {size}, {at_once} rows at once, "
          f"{args.threads} thread(s), median of {args.reps}\n"
          "| static s | continuous s | rows/s continuous vs static | prompt tokens static (real) | "
          "generated tokens | identical rows |\n|---|---|---|---|---|---|\n"
          f"| {s:.1f} | {c:.1f} | {s / c:.2f}x | {computed} ({real}) | "
          f"{sum(len(r.token_ids) for r in after)} | {same}/{len(prompts)} |")


if __name__ == "__main__":
    main()

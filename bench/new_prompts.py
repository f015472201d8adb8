"""Bench 25: the summarize job's prompts prefilled as a job meets them, each new, and then again: dense
against the job's DART settings, one engine each, the sides alternated per prompt, ms per prompt.

A new prompt brings new matmul shapes (its length, and under DART each layer's kept width), and oneDNN
compiles a kernel for each shape it has not seen: a bench that repeats one prompt never pays that, a job
pays it on every document. `--tiles G R` sets each engine's padding of gathered sets and prompt
blocks under oneDNN (default dart.compact.GATHER_TILE, ROW_TILE; `--tiles 1 1`: none), to compare in
separate runs, each a fresh process (oneDNN's kernel cache is per process).

    python -m bench.new_prompts [--config conf/summarize.yaml --prompts 24 --tiles 64 32] [--side k=v,k=v ...]
"""
from __future__ import annotations

import argparse
import logging
import time

import pyarrow.parquet as pq

from bench import common
from dart import compact
from dart.engine import DartEngine
from pipeline.config import load_config
from pipeline.tasks import TASKS

WARM_UP = 4     # prompts run first on every side (shapes of the first block, the engine's own measurements)
DATA = "data/xsum_study.parquet"


def prefill_each(engines: dict[str, DartEngine], prompts: list[list[int]]) -> dict[str, float]:
    """Seconds each side's engine spends prefilling every prompt once, sides alternated per prompt."""
    seconds = dict.fromkeys(engines, 0.0)
    for i, prompt in enumerate(prompts):
        for name in (list(engines) if i % 2 == 0 else list(engines)[::-1]):
            began = time.perf_counter()
            engines[name].prefill([prompt])
            seconds[name] += time.perf_counter() - began
            engines[name].release_gathered()
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="conf/summarize.yaml")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--tiles", type=int, nargs=2, default=[compact.GATHER_TILE, compact.ROW_TILE])
    parser.add_argument("--side", action="append", help="comma-separated overrides beside dense (default: the config)")
    common.dtype_argument(parser)
    args = parser.parse_args(argv)
    model, tokenizer, proxies = common.load_embedded(1, level=logging.WARNING, dtype=args.dtype)
    sides = {"dense": ["dart.method=dense"], **{side or "(as shipped)": [o for o in side.split(",") if o]
                                                for side in (args.side or [""])}}
    configs = {name: load_config(args.config, overrides) for name, overrides in sides.items()}
    engines = {name: DartEngine(common.sibling(model), tokenizer, c.dart, proxies=proxies) for name, c in configs.items()}
    for engine in engines.values():
        if engine.gathers.onednn:                       # the tiles apply under oneDNN alone
            engine.gathers.tile, engine.gathers.row_tile = args.tiles
    config = configs["dense"]
    task = TASKS[config.task].runner(config.task_context(), tokenizer, engines["dense"])
    rows = pq.read_table(DATA).slice(0, WARM_UP + args.prompts).to_pylist()
    prompts = [task.prepare(row)[0].ids for row in rows]
    prefill_each(engines, prompts[:WARM_UP])
    new = prefill_each(engines, prompts[WARM_UP:])
    again = prefill_each(engines, prompts[WARM_UP:])
    for engine in engines.values():
        engine.close()
    rows_out = [[name, f"{1e3 * new[name] / args.prompts:.1f}", f"{new['dense'] / new[name]:.3f}",
                 f"{1e3 * again[name] / args.prompts:.1f}", f"{again['dense'] / again[name]:.3f}"] for name in engines]
    common.write_table(
        f"Bench 25: {args.prompts} job prompts ({sum(map(len, prompts[WARM_UP:])) // args.prompts} tokens on average) "
        f"prefilled new, then again; tiles {args.tiles[0]} neurons / {args.tiles[1]} rows; {model.dtype}, "
        f"{common.machine()}, linear kernel {common.engine_kernel(model)}",
        ["side", "new: ms per prompt", "dense / side", "again: ms per prompt", "dense / side"], rows_out)


if __name__ == "__main__":
    main()

"""Bench 20: where the summarize job's time goes, without Ray: one job config's rows through one engine's
continuous batcher (pool.batch_size rows; the rows of pool.in_flight_per_actor items in flight, the next
item's submitted when one ends, as an actor runs them), each side on its own engine, the sides alternated
in mirrored order. Per side: prefill and decode seconds (the engine calls' wall time) against the first
side, decode steps by batch size and the mean step at full batch, the FFN paths the rows' forwards took,
the decode gathers and their seconds over what the measured gather cost predicts (the last 8 of a run).

    python -m bench.job_steps [--config conf/summarize.yaml] [--rows 24] [--reps 2] \
        [--side dart.method=dense] [--side ""] [--side dart.keep_ratio=0.5,dart.decode_masks=shared]

A side is a comma-separated list of config overrides ("" is the config as shipped). A side that starts
with `bound=K` is the job's bound at keep K: `dart.method=dense` on a sibling of the model whose every FFN
keeps K of its neurons physically (bench.common.cut_sibling), so that it differs from the engine in its FFN
alone. An item `group=N` makes the batcher's prefill groups hold at most N positions (rows times the
longest prompt) instead of what dart.group_cost measured (`group=256`: as before that measurement).
`--fixed-tokens` makes every row generate max_new_tokens (`generation.stop_on_eos=false`), so the sides
decode the same tokens and differ in the seconds they take for them.
"""
from __future__ import annotations

import argparse
import collections
import logging
import statistics
import time
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from bench import common
from dart.engine import DartEngine
from dart.group_cost import group_cap
from dart.scheduler import ContinuousBatcher, Request
from pipeline.config import load_config
from pipeline.tasks import TASKS

DEFAULT_SIDES = ["dart.method=dense", "", "dart.keep_ratio=0.5", "dart.keep_ratio=0.5,dart.decode_masks=shared"]


@dataclass
class Tally:
    """One run of a side: wall seconds of the engine's calls, by kind and batch size, and counts."""

    total: float = 0.0
    seconds: collections.Counter = field(default_factory=collections.Counter)   # ("prefill"|"decode", rows)
    calls: collections.Counter = field(default_factory=collections.Counter)
    gathers: int = 0
    gather_ratios: list[float] = field(default_factory=list)   # observed over predicted seconds (CPU)
    paths: tuple[int, int, int] = (0, 0, 0)     # compact, union, rowwise forwards summed over rows
    generated: int = 0

    def sum(self, kind: str) -> float:
        return sum(s for (k, _), s in self.seconds.items() if k == kind)


class TimedEngine:
    """Wraps an engine's prefill and decode_step to time them (the engine is unchanged)."""

    def __init__(self, engine: DartEngine) -> None:
        self.engine, self.tally = engine, Tally()
        self.prefill_call, self.decode_call = engine.prefill, engine.decode_step
        self.gathers_before = engine.gathers.decode_gathers
        engine.gathers.costs.ratios = []

    def __enter__(self) -> Tally:
        def timed(kind, call, rows_of):
            def run(*args, **kwargs):
                began = time.perf_counter()
                out = call(*args, **kwargs)
                key = (kind, rows_of(*args))
                self.tally.seconds[key] += time.perf_counter() - began
                self.tally.calls[key] += 1
                return out
            return run

        self.engine.prefill = timed("prefill", self.prefill_call, lambda prompts, *_: len(prompts))
        self.engine.decode_step = timed("decode", self.decode_call, lambda _batch, tokens: len(tokens))
        return self.tally

    def __exit__(self, *exc) -> None:
        del self.engine.prefill, self.engine.decode_step
        self.tally.gathers = self.engine.gathers.decode_gathers - self.gathers_before
        self.tally.gather_ratios = list(self.engine.gathers.costs.ratios)


def run_items(engine: DartEngine, prompts: list[list[int]], gen, batch_size: int, rows_per_item: int,
              in_flight: int, group_tokens: int | None = None) -> dict:
    """Every prompt generated as an actor runs them: the rows of `in_flight` work items of `rows_per_item`
    rows share one continuous batch, and the next item's rows are submitted as soon as an item's last row
    finishes (pipeline.tasks.batching); prefill groups of at most `group_tokens` positions (None: as
    measured, dart.group_cost). Returns {row index: result}."""
    items = [list(range(start, min(start + rows_per_item, len(prompts)))) for start in range(0, len(prompts), rows_per_item)]
    batcher, results, queued = ContinuousBatcher(engine, gen, batch_size, group_tokens=group_tokens), {}, 0
    open_items: list[list[int]] = []
    while queued < len(items) or not batcher.idle:
        while queued < len(items) and len(open_items) < in_flight:
            open_items.append(items[queued])
            batcher.submit([Request(k, prompts[k], 0) for k in items[queued]])
            queued += 1
        results.update(batcher.step())
        open_items = [item for item in open_items if not all(k in results for k in item)]
    engine.release_gathered()
    return results


def run_side(engine: DartEngine, prompts: list[list[int]], gen, batch_size: int, rows_per_item: int,
             in_flight: int, group_tokens: int | None = None) -> Tally:
    with TimedEngine(engine) as tally:
        began = time.perf_counter()
        results = run_items(engine, prompts, gen, batch_size, rows_per_item, in_flight, group_tokens)
        tally.total = time.perf_counter() - began
    telemetry = [r.telemetry for r in results.values()]
    tally.paths = (sum(t.compact_forwards for t in telemetry), sum(t.union_forwards for t in telemetry),
                   sum(t.rowwise_forwards for t in telemetry))
    tally.generated = sum(len(r.token_ids) for r in results.values())
    return tally


def ratios(values: list[float]) -> str:
    return "-" if not values else f"{min(values):.1f}-{max(values):.1f}"


def table_rows(tallies: dict[str, list[Tally]], batch_size: int) -> list[list[str]]:
    def mean(name, value):
        return statistics.mean(value(t) for t in tallies[name])

    first = next(iter(tallies))
    base = {kind: mean(first, lambda t: t.sum(kind) if kind != "total" else t.total)
            for kind in ("total", "prefill", "decode")}
    rows = []
    for name, runs in tallies.items():
        last = runs[-1]
        full = [t.seconds[("decode", batch_size)] / max(t.calls[("decode", batch_size)], 1) for t in runs]
        steps = " ".join(f"b{rows}:{n}" for (kind, rows), n in sorted(last.calls.items()) if kind == "decode")
        cells = []
        for kind in ("total", "prefill", "decode"):
            value = mean(name, lambda t: t.total if kind == "total" else t.sum(kind))
            cells += [f"{value:.2f}", f"{base[kind] / value:.3f}"]
        rows.append([name or "(as shipped)", *cells, steps, f"{1000 * statistics.mean(full):.1f}",
                     "/".join(map(str, last.paths)), str(last.gathers), ratios(last.gather_ratios), str(last.generated)])
    return rows


def bound_keep(side: str) -> float | None:
    head = side.split(",")[0]
    return float(head.removeprefix("bound=")) if head.startswith("bound=") else None


def side_group_tokens(side: str) -> int | None:
    groups = [o.removeprefix("group=") for o in side.split(",") if o.startswith("group=")]
    return int(groups[-1]) if groups else None


def side_overrides(side: str) -> list[str]:
    overrides = [o for o in side.split(",") if o and not o.startswith("group=")]
    return overrides if bound_keep(side) is None else ["dart.method=dense", *overrides[1:]]


def side_model(model, side: str):
    keep = bound_keep(side)
    return common.sibling(model) if keep is None else common.cut_sibling(model, keep)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="conf/summarize.yaml")
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--side", action="append", help="comma-separated overrides, or bound=K[,...] (repeat; "
                        "default: " + " | ".join(s or '""' for s in DEFAULT_SIDES) + ")")
    parser.add_argument("--fixed-tokens", action="store_true", help="every row generates max_new_tokens")
    common.dtype_argument(parser)
    args = parser.parse_args(argv)
    sides = args.side if args.side else DEFAULT_SIDES
    model, tokenizer, proxies = common.load_embedded(args.threads, level=logging.WARNING, dtype=args.dtype)
    fixed = ["generation.stop_on_eos=false"] if args.fixed_tokens else []
    configs = {side: load_config(args.config, side_overrides(side) + fixed) for side in sides}
    engines = {side: DartEngine(side_model(model, side), tokenizer, c.dart, proxies=proxies) for side, c in configs.items()}
    for engine in engines.values():
        group_cap(engine)                # the batcher's measured prefill groups, before any timing
    config = next(iter(configs.values()))
    task = TASKS[config.task].runner(config.task_context(), tokenizer, next(iter(engines.values())))
    rows = pq.read_table(config.input.paths[0]).slice(0, args.rows).to_pylist()
    prompts = [task.prepare(row)[0].ids for row in rows]
    size, per_item, in_flight = config.pool.batch_size, config.input.rows_per_item, config.pool.in_flight_per_actor
    tallies: dict[str, list[Tally]] = {side: [] for side in sides}
    for rep in range(args.reps):
        for side in (sides if rep % 2 == 0 else sides[::-1]):
            tallies[side].append(run_side(engines[side], prompts, configs[side].generation, size, per_item, in_flight,
                                          side_group_tokens(side)))
    for engine in engines.values():
        engine.close()
    kernel = common.engine_kernel(model)
    header = ["side", "total s", "vs first", "prefill s", "vs first", "decode s", "vs first", "decode steps (last run)",
              f"ms per b{size} step", "compact/union/rowwise row-fwd", "decode gathers", "gather s observed/predicted", "tokens generated"]
    common.write_table(
        f"Bench 20: {config.task} ({args.config}), {len(prompts)} rows ({sum(map(len, prompts)) // len(prompts)} prompt "
        f"tokens on average){', every row max_new_tokens' if args.fixed_tokens else ''}, batch {size}, {in_flight} items of {per_item} rows in flight, one process, mean of {args.reps} alternated runs; "
        f"{model.dtype}, {common.machine()}, linear kernel {kernel}", header, table_rows(tallies, size))


if __name__ == "__main__":
    main()

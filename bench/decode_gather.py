"""Bench 13: what a decode gather costs against what it saves per forward, the figures behind
`dart.compact.GATHER_COST_IN_FORWARDS` (ski-rental rule of `ffn_path: auto` in decode).

For each keep ratio and batch: `static` DART (masks once, no drift) on 600-token XSum prompts, decoded
with `ffn_path: masked` and with `ffn_path: compact` (forced: compact at batch 1, the union above),
the sides alternating. A forward's time is the median of the forwards after the first two; the
gather is the first compact forward less a compact forward. `break-even` is gather / (masked - gathered
forward); `cost in forwards` is the same figure in the units of GATHER_COST_IN_FORWARDS, the gather
over (1 - f) / f of the break-even, f the gathered fraction of the FFN. `auto waits` is what the
shipped rule does for that f.

    python -m bench.decode_gather [--reps 3 --keep 0.5 0.3 --batch 1 4 --forwards 12]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench import common
from dart.compact import GATHER_COST_IN_FORWARDS, forwards_to_amortize, union_kept
from dart.config import DartConfig
from dart.engine import DartEngine


def decode_times(engine: DartEngine, prompts: list[list[int]], forwards: int, device: torch.device) -> list[float]:
    """Seconds of each decode forward after one prefill of `prompts` (greedy)."""
    logits, batch = engine.prefill(prompts)
    tokens, times = logits.argmax(-1), []
    for _ in range(forwards):
        common.synchronize(device)
        began = time.perf_counter()
        logits = engine.decode_step(batch, tokens)
        common.synchronize(device)
        times.append(time.perf_counter() - began)
        tokens = logits.argmax(-1)
    engine.release_gathered()
    return times


def measure(model, tokenizer, proxies, keep: float, prompts, reps: int, forwards: int, device) -> list[str]:
    engines = {path: DartEngine(common.sibling(model), tokenizer, DartConfig(
        method="static", budget="uniform", keep_ratio=keep, ffn_path=path), proxies=proxies)
        for path in ("masked", "compact")}
    try:
        runs: dict[str, list[list[float]]] = {"masked": [], "compact": []}
        for rep in range(reps):
            for path in (("masked", "compact") if rep % 2 == 0 else ("compact", "masked")):
                runs[path].append(decode_times(engines[path], prompts, forwards, device))
        gathered_fraction = gathered(engines["compact"], prompts)
    finally:
        for engine in engines.values():
            engine.close()
    masked = statistics.median(t for run in runs["masked"] for t in run[2:])
    compact = statistics.median(t for run in runs["compact"] for t in run[2:])
    gather = statistics.median(run[0] for run in runs["compact"]) - compact
    saving = masked - compact
    breakeven = gather / saving if saving > 0 else float("inf")
    cost = breakeven * (1 - gathered_fraction) / gathered_fraction
    return [f"{keep:.2f}", str(len(prompts)), f"{gathered_fraction:.3f}", f"{masked * 1e3:.1f}", f"{compact * 1e3:.1f}",
            f"{gather * 1e3:.0f}", f"{breakeven:.1f}", f"{cost:.1f}", str(forwards_to_amortize(gathered_fraction))]


def gathered(engine: DartEngine, prompts) -> float:
    """The gathered fraction of the FFN in a compact/union decode forward of these prompts."""
    _, batch = engine.prefill(prompts)
    kept = [state.kept for state in batch.states]
    kept = kept[0] if len(kept) == 1 else union_kept(kept, engine.shape.width)
    engine.release_gathered()
    return sum(int(k.numel()) for k in kept) / (len(kept) * engine.shape.width)


HEADER = ["keep", "batch", "gathered fraction f", "masked forward ms", "gathered forward ms", "gather ms",
          "break-even forwards", "cost in forwards", "auto waits"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keep", type=float, nargs="+", default=[0.5, 0.3])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--forwards", type=int, default=12)
    parser.add_argument("--prompt-tokens", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    model, tokenizer, proxies = common.load_embedded(args.threads, args.device)
    device = model.get_input_embeddings().weight.device
    start = time.perf_counter()
    rows = [measure(model, tokenizer, proxies, keep, common.document_prompts(tokenizer, batch, args.prompt_tokens),
                    args.reps, args.forwards, device)
            for keep in args.keep for batch in args.batch]
    common.write_table(f"Bench 13: decode gathers, SmolLM2-135M-Instruct {model.dtype}, {common.machine()}, "
                       f"{args.prompt_tokens}-token prompts, {args.reps} reps, GATHER_COST_IN_FORWARDS = "
                       f"{GATHER_COST_IN_FORWARDS:g} ({time.perf_counter() - start:.0f} s)", HEADER, rows)


if __name__ == "__main__":
    main()

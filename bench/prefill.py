"""Bench 6: prefill time of block-wise DART (docs/prefill.md) against `dense`, 512-token prompts, at
several sparsities, batch 1 and 4, as ratios measured side by side in one run.

Each repetition runs one prefill per variant on the same prompts, the order rotating every
repetition; the table gives medians of the per-repetition time ratios to `dense`. DART variants use
`budget: uniform`, `mask_step: 1` (the first block runs dense and calibrates, the masks form from it),
drift on with the default `carry` policy (no dense block after a drift event).

    python -m bench.prefill [--reps 5 --batch 1 4 --sparsity 0.3 0.5 0.7 --first-block-tokens 64 --block-tokens 224]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench import common
from dart.config import DartConfig, PrefillConfig


def variants(sparsities: list[float], first_block_tokens: int, block_tokens: int) -> dict[str, DartConfig]:
    configs = {"dense": DartConfig(method="dense")}
    for s in sparsities:
        configs[f"dart blockwise {s:.0%}"] = DartConfig(
            method="dart", budget="uniform", keep_ratio=round(1 - s, 6), mask_step=1,
            prefill=PrefillConfig(mode="blockwise", block_tokens=block_tokens, first_block_tokens=first_block_tokens))
    return configs


def prefill_once(engine, prompts: list[list[int]], device: torch.device) -> tuple[float, list]:
    """Seconds of one prefill of `prompts`, and the rows' telemetry."""
    engine.release_gathered()
    states = [engine.new_state() for _ in prompts]
    common.synchronize(device)
    start = time.perf_counter()
    engine.prefill(prompts, states)
    common.synchronize(device)
    seconds = time.perf_counter() - start
    return seconds, [engine.telemetry(s, len(p), 0, seconds, 0.0) for s, p in zip(states, prompts)]


def measure(engines: dict, prompts: list[list[int]], reps: int, device: torch.device, warmup: int = 1):
    """{name: [seconds per repetition]} and {name: telemetry of the last repetition}."""
    names = list(engines)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    telemetry: dict[str, list] = {}
    for rep in range(reps + warmup):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed, telemetry[name] = prefill_once(engines[name], prompts, device)
            if rep >= warmup:
                seconds[name].append(elapsed)
    return seconds, telemetry


def row(batch: int, name: str, seconds: dict, telemetry: list) -> list[str]:
    speedup = statistics.median(d / s for d, s in zip(seconds["dense"], seconds[name]))
    flops = sum(t.ffn_flops_executed for t in telemetry) / sum(t.ffn_flops_dense for t in telemetry)
    blocks = sum(t.prefill_blocks for t in telemetry)
    paths = f"{sum(t.compact_forwards - t.union_forwards - t.rowwise_forwards for t in telemetry) / blocks:.2f}/" \
            f"{sum(t.union_forwards for t in telemetry) / blocks:.2f}/" \
            f"{sum(t.rowwise_forwards for t in telemetry) / blocks:.2f}"
    return [str(batch), name, f"{speedup:.3f}", f"{statistics.median(seconds[name]):.2f}",
            f"{statistics.fmean(t.prompt_applied_sparsity for t in telemetry):.3f}", f"{flops:.3f}", paths,
            str(sum(t.drift_events for t in telemetry))]


HEADER = ["batch", "variant", "prefill speed vs dense", "median s", "prompt applied sparsity",
          "FFN FLOPs executed vs dense", "compact/union/rowwise block share", "drift events"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--first-block-tokens", type=int, default=64, help="the dense, calibrating block")
    parser.add_argument("--block-tokens", type=int, default=224, help="each later (pruned) block")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    model, tokenizer, proxies = common.load_embedded(args.threads, args.device)
    device = model.get_input_embeddings().weight.device
    start, rows = time.perf_counter(), []
    for batch in args.batch:
        decoders = common.engines(model, tokenizer, variants(args.sparsity, args.first_block_tokens, args.block_tokens), proxies)
        try:
            engines = {name: decoder.engine for name, decoder in decoders.items()}
            seconds, telemetry = measure(engines, common.document_prompts(tokenizer, batch, args.prompt_tokens),
                                         args.reps, device)
        finally:
            common.close(decoders)
        rows += [row(batch, name, seconds, telemetry[name]) for name in engines]
    common.write_table(f"Bench 6: block-wise prefill, SmolLM2-135M-Instruct {model.dtype}, {common.machine()}, "
                       f"prompt {args.prompt_tokens} tokens, blocks {args.first_block_tokens} then {args.block_tokens}, "
                       f"{args.reps} reps "
                       f"(median per-rep ratios; {time.perf_counter() - start:.0f} s)", HEADER, rows)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()

"""Bench 6: prefill time of block-wise DART (docs/prefill.md) against `dense`, 512-token prompts, at
several sparsities, batch 1 and 4, as ratios measured side by side in one run.

Each repetition runs one prefill per variant on the same prompts, the order rotating every
repetition; the table gives medians of the per-repetition time ratios to `dense`. DART variants use
`budget: uniform`, `mask_step: 1` (the first block runs dense and calibrates, the masks form from it),
drift on with the default `carry` policy (no dense block after a drift event).

Beside them runs the bound of each sparsity: the unpatched model with its FFN physically cut to a
fixed random subset of that size, fed the same blocks (the first through the whole model, as DART's
calibrating block), with no DART bookkeeping and no weight gathering. `vs bound` is a DART variant's
speed over its bound's, in the same repetitions.

    python -m bench.prefill [--reps 5 --batch 1 4 --sparsity 0.3 0.5 0.7 --first-block-tokens 64 --block-tokens 224]
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from bench import common
from dart import kernels
from dart.config import DartConfig, PrefillConfig
from dart.kv_cache import growing_cache
from dart.patch import decoder_layers


def variants(sparsities: list[float], first_block_tokens: int, block_tokens: int,
             kernel: str = "torch") -> dict[str, DartConfig]:
    configs = {"dense": DartConfig(method="dense", linear_kernel=kernel)}
    for s in sparsities:
        configs[f"dart blockwise {s:.0%}"] = DartConfig(
            method="dart", budget="uniform", keep_ratio=round(1 - s, 6), mask_step=1, linear_kernel=kernel,
            prefill=PrefillConfig(mode="blockwise", block_tokens=block_tokens, first_block_tokens=first_block_tokens))
    return configs


class CutFfnPrefill:
    """The bound of a sparsity: prefill blocks through a sibling of the model whose every FFN keeps a
    fixed random `keep` of its neurons (physically: smaller Linears), the first block through the whole
    model. Same call as `prefill_once`; its telemetry is None."""

    def __init__(self, model, keep: float, first_block_tokens: int, block_tokens: int, seed: int = 0,
                 kernel: str = "torch") -> None:
        self.model, self.cut = common.sibling(model), common.cut_sibling(model, keep, seed, kernel)
        self.first_block_tokens, self.block_tokens = first_block_tokens, block_tokens
        if kernel == "onednn":              # the engines' kernel, so the bound differs in its FFN alone
            kernels.route_linears(self.model, decoder_layers(self.model))

    @torch.inference_mode()
    def __call__(self, prompts: list[list[int]], device: torch.device) -> tuple[float, None]:
        ids = torch.tensor(prompts, device=device)
        starts = PrefillConfig(mode="blockwise", block_tokens=self.block_tokens,
                               first_block_tokens=self.first_block_tokens).starts(ids.shape[1])
        cache = growing_cache(self.model.config)      # the engines' KV cache
        common.synchronize(device)
        start = time.perf_counter()
        for i, (begin, end) in enumerate(zip(starts, starts[1:] + [ids.shape[1]])):
            hidden = (self.model if i == 0 else self.cut).model(input_ids=ids[:, begin:end], cache=cache,
                                                              use_cache=True).last_hidden_state
        self.model.lm_head(hidden[:, -1])
        common.synchronize(device)
        return time.perf_counter() - start, None


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


def measure(runners: dict, prompts: list[list[int]], reps: int, device: torch.device, warmup: int = 1):
    """{name: [seconds per repetition]} and {name: telemetry of the last repetition} of runners
    {name: run(prompts, device) -> (seconds, telemetry)}."""
    names = list(runners)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    telemetry: dict[str, list] = {}
    for rep in range(reps + warmup):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed, telemetry[name] = runners[name](prompts, device)
            if rep >= warmup:
                seconds[name].append(elapsed)
    return seconds, telemetry


def ratio(seconds: dict, over: str, name: str) -> float:
    """Median over repetitions of seconds[over] / seconds[name]: the speed of `name` against `over`."""
    return statistics.median(o / s for o, s in zip(seconds[over], seconds[name]))


def bound_name(sparsity: float) -> str:
    return f"bound: FFN cut to {1 - sparsity:.0%}"


def row(batch: int, name: str, seconds: dict, telemetry: list | None, bound: str | None) -> list[str]:
    speed = [str(batch), name, f"{ratio(seconds, 'dense', name):.3f}",
             f"{ratio(seconds, bound, name):.3f}" if bound else "-", f"{statistics.median(seconds[name]):.2f}"]
    if telemetry is None:
        return speed + ["-"] * 4
    flops = sum(t.ffn_flops_executed for t in telemetry) / sum(t.ffn_flops_dense for t in telemetry)
    blocks = sum(t.prefill_blocks for t in telemetry)
    paths = f"{sum(t.compact_forwards - t.union_forwards - t.rowwise_forwards for t in telemetry) / blocks:.2f}/" \
            f"{sum(t.union_forwards for t in telemetry) / blocks:.2f}/" \
            f"{sum(t.rowwise_forwards for t in telemetry) / blocks:.2f}"
    return speed + [f"{statistics.fmean(t.prompt_applied_sparsity for t in telemetry):.3f}", f"{flops:.3f}", paths,
                    str(sum(t.drift_events for t in telemetry))]


HEADER = ["batch", "variant", "prefill speed vs dense", "vs bound", "median s", "prompt applied sparsity",
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
    common.dtype_argument(parser)
    parser.add_argument("--linear-kernel", default="auto", choices=["auto", "torch", "onednn"],
                        help="dart.linear_kernel of every side, the bounds included (auto: measured once)")
    args = parser.parse_args(argv)
    model, tokenizer, proxies = common.load_embedded(args.threads, args.device, dtype=args.dtype)
    device = model.get_input_embeddings().weight.device
    kernel = common.engine_kernel(model, args.linear_kernel)
    configs = variants(args.sparsity, args.first_block_tokens, args.block_tokens, kernel)
    bounds = {bound_name(s): CutFfnPrefill(model, 1 - s, args.first_block_tokens, args.block_tokens, kernel=kernel)
              for s in args.sparsity}
    bound_of = dict(zip(list(configs)[1:], bounds))
    start, rows = time.perf_counter(), []
    for batch in args.batch:
        decoders = common.engines(model, tokenizer, configs, proxies)
        try:
            runners = {name: functools.partial(prefill_once, decoder.engine) for name, decoder in decoders.items()}
            seconds, telemetry = measure(runners | bounds, common.document_prompts(tokenizer, batch, args.prompt_tokens),
                                         args.reps, device)
        finally:
            common.close(decoders)
        rows += [row(batch, name, seconds, telemetry[name], bound_of.get(name)) for name in [*runners, *bounds]]
    common.write_table(f"Bench 6: block-wise prefill, SmolLM2-135M-Instruct {model.dtype}, {common.machine()}, "
                       f"linear kernel {kernel}, "
                       f"prompt {args.prompt_tokens} tokens, blocks {args.first_block_tokens} then {args.block_tokens}, "
                       f"{args.reps} reps "
                       f"(median per-rep ratios; {time.perf_counter() - start:.0f} s)", HEADER, rows)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()

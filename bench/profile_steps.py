"""Bench 18: where a step's time goes, by torch.profiler: a 512-token prompt (block-wise, 48 then 224
tokens) and a steady decode step at batch 1, `dense` against DART at 50% and the bound (the unpatched
model, FFN cut to half, same kernel and KV cache), at the machine's native dtype. Per op: self CPU ms
per prompt or per step on each side and DART's excess over the bound, largest first.

    python -m bench.profile_steps [--dtype auto --steps 20 --rows 12]
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench import common
from bench.prefill import CutFfnPrefill, prefill_once
from dart.config import DartConfig, PrefillConfig

BLOCKS = PrefillConfig(mode="blockwise", first_block_tokens=48, block_tokens=224)


def op_ms(run, repeats: int) -> dict[str, float]:
    """Self CPU milliseconds per call of `run`, by op name (after one untimed call)."""
    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            run()
    return {e.key: e.self_cpu_time_total / 1e3 / repeats for e in prof.key_averages()}


def rows_of(sides: dict[str, dict[str, float]], dart: str, bound: str, count: int) -> list[list[str]]:
    names = sorted(set().union(*sides.values()), key=lambda n: -(sides[dart].get(n, 0) - sides[bound].get(n, 0)))
    rows = [[name, *(f"{s.get(name, 0):.2f}" for s in sides.values()),
             f"{sides[dart].get(name, 0) - sides[bound].get(name, 0):+.2f}"] for name in names[:count]]
    totals = {side: sum(ops.values()) for side, ops in sides.items()}
    return rows + [["total", *(f"{t:.2f}" for t in totals.values()), f"{totals[dart] - totals[bound]:+.2f}"]]


def prompt_sides(model, tokenizer, proxies, kernel: str, prompts) -> dict[str, dict[str, float]]:
    configs = {"dense": DartConfig(method="dense", linear_kernel=kernel),
               "dart 50%": DartConfig(method="dart", budget="uniform", keep_ratio=0.5, mask_step=1,
                                      linear_kernel=kernel, prefill=BLOCKS)}
    decoders = common.engines(model, tokenizer, configs, proxies)
    bound = CutFfnPrefill(model, 0.5, BLOCKS.first_block_tokens, BLOCKS.block_tokens, kernel=kernel)
    cpu = torch.device("cpu")
    try:
        sides = {name: op_ms(lambda d=d: prefill_once(d.engine, prompts, cpu), 3) for name, d in decoders.items()}
    finally:
        common.close(decoders)
    return sides | {"bound": op_ms(lambda: bound(prompts, cpu), 3)}


def decode_sides(model, tokenizer, proxies, kernel: str, prompts, steps: int) -> dict[str, dict[str, float]]:
    configs = {"dense": DartConfig(method="dense", linear_kernel=kernel),
               "dart 50%": DartConfig(method="dart", budget="uniform", keep_ratio=0.5, mask_step=0,
                                      ffn_path="compact", linear_kernel=kernel)}
    decoders = common.engines(model, tokenizer, configs, proxies)
    decoders["bound"] = common.HfDecoder(common.cut_sibling(model, 0.5, kernel=kernel), growing=True)
    try:
        sides = {}
        for name, decoder in decoders.items():
            decoder.start(prompts)
            sides[name] = op_ms(decoder.step, steps)
        return sides
    finally:
        common.close(decoders)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.dtype_argument(parser)
    parser.add_argument("--steps", type=int, default=20, help="decode steps profiled")
    parser.add_argument("--rows", type=int, default=12, help="ops shown per table")
    args = parser.parse_args(argv)
    model, tokenizer, proxies = common.load_embedded(1, dtype=args.dtype)
    kernel = common.engine_kernel(model)
    label = f"SmolLM2-135M-Instruct {model.dtype}, {common.machine()}, linear kernel {kernel}"
    header = ["op", "dense ms", "dart 50% ms", "bound ms", "dart - bound"]
    prompt = prompt_sides(model, tokenizer, proxies, kernel, common.document_prompts(tokenizer, 1, 512))
    common.write_table(f"Bench 18a: one 512-token prompt, batch 1, self CPU ms by op, {label}", header,
                       rows_of(prompt, "dart 50%", "bound", args.rows))
    step = decode_sides(model, tokenizer, proxies, kernel, common.document_prompts(tokenizer, 1, 128), args.steps)
    common.write_table(f"Bench 18b: one decode step, batch 1 (128-token prompt, compact path), self CPU ms by op, "
                       f"{label}", header, rows_of(step, "dart 50%", "bound", args.rows))


if __name__ == "__main__":
    main()

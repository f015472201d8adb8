"""Bench 22: does torch.compile pay for a steady decode step here? The unpatched model with transformers'
StaticCache, eager against compiled by inductor (`torch.compile`, static shapes), beside the engine's
`dense` decode step on the same prompts; the sides alternated step by step after the compiled side's
warm-up. Per side: median ms per step, speed against the engine, and the share of greedy tokens equal
to the eager model's.

    python -m bench.compile_step [--batch 4 --prompt-tokens 448 --steps 40 --dtype native]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from transformers import StaticCache

from bench import common
from dart.config import DartConfig


class StaticDecoder:
    """The unpatched model decoding on a StaticCache, its step eager or compiled."""

    def __init__(self, model, steps: int, compiled: bool) -> None:
        self.model, self.steps = model, steps
        self.forward = torch.compile(self.step_logits, dynamic=False) if compiled else self.step_logits
        self.tokens: list[torch.Tensor] = []

    def step_logits(self, ids, cache, position):
        return self.model(input_ids=ids, past_key_values=cache, use_cache=True, cache_position=position).logits[:, -1]

    def start(self, prompts: list[list[int]]) -> None:
        ids = torch.tensor(prompts)
        self.length = ids.shape[1]
        self.cache = StaticCache(config=self.model.config, max_cache_len=self.length + self.steps)
        out = self.model(input_ids=ids, past_key_values=self.cache, use_cache=True,
                         cache_position=torch.arange(self.length), logits_to_keep=1)
        self.next = out.logits[:, -1].argmax(-1, keepdim=True)

    def step(self) -> None:
        logits = self.forward(self.next, self.cache, torch.tensor([self.length]))
        self.length += 1
        self.next = logits.argmax(-1, keepdim=True)
        self.tokens.append(self.next)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=448)
    parser.add_argument("--steps", type=int, default=40, help="timed steps, after 4 of warm-up")
    parser.add_argument("--threads", type=int, default=1)
    common.dtype_argument(parser)
    args = parser.parse_args(argv)
    warm = 4
    model, tokenizer, proxies = common.load_embedded(args.threads, level=logging.WARNING, dtype=args.dtype)
    kernel = common.engine_kernel(model)
    prompts = common.document_prompts(tokenizer, args.batch, args.prompt_tokens)
    sides = common.engines(model, tokenizer, {"engine dense": DartConfig(method="dense", linear_kernel=kernel)}, proxies)
    sides |= {"hf static eager": StaticDecoder(common.sibling(model), warm + args.steps, compiled=False),
              "hf static compiled": StaticDecoder(common.sibling(model), warm + args.steps, compiled=True)}
    times: dict[str, list[float]] = {name: [] for name in sides}
    try:
        with torch.inference_mode():
            for side in sides.values():
                side.start(prompts)
            for k in range(warm + args.steps):
                for name, side in sides.items():
                    began = time.perf_counter()
                    side.step()
                    if k >= warm:
                        times[name].append(time.perf_counter() - began)
    finally:
        common.close({"engine dense": sides["engine dense"]})
    eager = torch.cat(sides["hf static eager"].tokens, 1)
    engine_ms = statistics.median(times["engine dense"])
    rows = []
    for name, side in sides.items():
        ms = statistics.median(times[name])
        same = "-" if name == "engine dense" else f"{(torch.cat(side.tokens, 1) == eager).float().mean().item():.3f}"
        rows.append([name, f"{1000 * ms:.1f}", f"{engine_ms / ms:.3f}", same])
    common.write_table(
        f"Bench 22: one decode step at batch {args.batch} after {args.prompt_tokens}-token prompts, median of "
        f"{args.steps} alternated steps; {model.dtype}, {common.machine()}, engine's linear kernel {kernel}",
        ["side", "ms per step", "speed vs engine", "tokens equal to hf eager"], rows)


if __name__ == "__main__":
    main()

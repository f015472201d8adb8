"""Bench 2: DART bookkeeping overhead: `dart` at keep ratio 1.0 (scores, masks, drift monitoring, no
neuron dropped) against `dense` and the unpatched model, decode tokens/s side by side, batch 1; and
the same variants' prefill of one `--prefill-tokens` prompt (the prompt whole: statistics of every
token, the drift signal, the auto budget's residual statistics), repetitions alternated.

    python -m bench.overhead [--tokens 64 --reps 4 --prefill-tokens 512 --dtype auto]
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time

from bench import common
from dart.config import DartConfig

VARIANTS = {
    "hf (unpatched)": None,
    "dense": DartConfig(method="dense"),
    "dart keep 1.0 uniform m=0": DartConfig(method="dart", budget="uniform", keep_ratio=1.0, mask_step=0),
    "dart keep 1.0 auto budget": DartConfig(method="dart", budget="auto", keep_ratio=1.0),
}
HEADER = ["variant", "tok/s vs dense", "tok/s vs hf", "overhead vs dense", "DART FLOPs / dense FFN FLOPs"]


def run(model, tokenizer, prompts, args, proxies, device) -> list[list[str]]:
    decoders = common.engines(model, tokenizer, VARIANTS, proxies)
    try:
        timings = common.interleave(decoders, prompts, args.tokens, args.reps, device)
    finally:
        common.close(decoders)
    rows = []
    for name in decoders:
        speed = timings.speedup(name, "dense")
        s = timings.summary(name)
        rows.append([name, f"{speed:.3f}", f"{timings.speedup(name, 'hf (unpatched)'):.3f}",
                     f"{1 / speed - 1:+.1%}", f"{s['overhead_flops_ratio']:.2e}" if s else "-"])
    return rows


def prefill_rows(model, tokenizer, prompts, reps: int, proxies, device) -> list[list[str]]:
    from bench.prefill import measure, prefill_once, ratio

    configs = {name: cfg for name, cfg in VARIANTS.items() if cfg is not None}
    decoders = common.engines(model, tokenizer, configs, proxies)
    try:
        runners = {name: functools.partial(prefill_once, d.engine) for name, d in decoders.items()}
        seconds, _ = measure(runners, prompts, reps, device)
    finally:
        common.close(decoders)
    return [[name, f"{ratio(seconds, 'dense', name):.3f}", f"{1 / ratio(seconds, 'dense', name) - 1:+.1%}",
             f"{statistics.median(seconds[name]):.3f}"] for name in runners]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--prefill-tokens", type=int, default=512, help="prompt of the prefill table (0: none)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    common.dtype_argument(parser)
    args = parser.parse_args(argv)
    model, tokenizer, proxies = common.load_embedded(args.threads, args.device, dtype=args.dtype)
    start = time.perf_counter()
    rows = run(model, tokenizer, common.document_prompts(tokenizer, 1, args.prompt_tokens), args, proxies,
               model.get_input_embeddings().weight.device)
    common.write_table(f"Bench 2: DART bookkeeping overhead, SmolLM2-135M-Instruct {model.dtype}, batch 1, "
                       f"{common.machine()}, linear kernel {common.engine_kernel(model)}, "
                       f"{args.tokens} tokens x {args.reps} reps (median per-token ratios; "
                       f"{time.perf_counter() - start:.0f} s)", HEADER, rows)
    if args.prefill_tokens:
        rows = prefill_rows(model, tokenizer, common.document_prompts(tokenizer, 1, args.prefill_tokens),
                            2 * args.reps, proxies, model.get_input_embeddings().weight.device)
        common.write_table(f"Bench 2b: the same variants' prefill of one {args.prefill_tokens}-token prompt "
                           f"(median per-repetition ratios, {2 * args.reps} reps)",
                           ["variant", "prefill speed vs dense", "overhead vs dense", "median s"], rows)


if __name__ == "__main__":
    main()

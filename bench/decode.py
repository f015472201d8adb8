"""Bench 1: decode tokens/s of the unpatched model, `dense` and `dart` (masked / auto FFN path; at
batch > 1 also `shared`, decode_masks: shared) at several applied sparsities, batch 1 and 8, as ratios
to `dense` measured side by side.

Beside each sparsity runs its bound: the unpatched model with its FFN physically cut to a fixed random
subset of that size (same dtype, Linear kernel and KV cache as the engines), decoding the same prompts; `vs bound`
is the speed of `dart auto` (and `dart shared`) over it.

    python -m bench.decode [--tokens 64 --reps 2 --batch 1 8 --sparsity 0.3 0.5 0.7 --dtype auto]
"""
from __future__ import annotations

import argparse
import time

import torch

from bench import common
from dart.config import DartConfig


def variants(sparsities: list[float], kernel: str, batch: int = 1) -> dict[str, DartConfig | None]:
    """At batch > 1 also `dart shared`: auto's path with the rows sharing one kept set (decode_masks)."""
    configs: dict[str, DartConfig | None] = {"hf (unpatched)": None,
                                             "dense": DartConfig(method="dense", linear_kernel=kernel)}
    for s in sparsities:
        for path in ("masked", "auto") + (("shared",) if batch > 1 else ()):
            configs[f"dart {path} {s:.0%}"] = DartConfig(
                method="dart", budget="uniform", keep_ratio=round(1 - s, 6), mask_step=0, linear_kernel=kernel,
                ffn_path="auto" if path == "shared" else path, decode_masks="shared" if path == "shared" else "per_row")
    return configs


def bound_name(sparsity: float) -> str:
    return f"bound: FFN cut to {1 - sparsity:.0%}"


def run(model, tokenizer, prompts_of, args, proxies, device, kernel: str) -> list[list[str]]:
    rows = []
    for batch in args.batch:
        decoders = common.engines(model, tokenizer, variants(args.sparsity, kernel, batch), proxies)
        decoders |= {bound_name(s): common.HfDecoder(common.cut_sibling(model, 1 - s, kernel=kernel), growing=True)
                     for s in args.sparsity}
        try:
            timings = common.interleave(decoders, prompts_of(batch), args.tokens, args.reps, device)
        finally:
            common.close(decoders)
        for name in decoders:
            s = timings.summary(name)
            bound = next((bound_name(x) for x in args.sparsity if name in (f"dart auto {x:.0%}", f"dart shared {x:.0%}")),
                         None)
            rows.append([str(batch), name, f"{timings.speedup(name, 'dense'):.3f}",
                         f"{timings.speedup(name, bound):.3f}" if bound else "-",
                         f"{timings.speedup(name, 'hf (unpatched)'):.3f}",
                         f"{s['applied_sparsity']:.3f}" if s else "-",
                         f"{s['compact_share']:.2f}/{s['union_share']:.2f}" if s else "-",
                         f"{s['bytes_ratio']:.3f}" if s else "-", str(round(s["drift_events"])) if s else "-"])
    return rows


HEADER = ["batch", "variant", "tok/s vs dense", "vs bound", "tok/s vs hf", "applied sparsity",
          "compact/union fwd share", "FFN bytes vs dense", "drift events"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="decode tokens per repetition")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    common.dtype_argument(parser)
    args = parser.parse_args(argv)
    model, tokenizer, proxies = common.load_embedded(args.threads, args.device, dtype=args.dtype)
    device = model.get_input_embeddings().weight.device
    kernel = common.engine_kernel(model)
    start = time.perf_counter()
    rows = run(model, tokenizer, lambda b: common.document_prompts(tokenizer, b, args.prompt_tokens), args,
               proxies, device, kernel)
    common.write_table(f"Bench 1: decode speed, SmolLM2-135M-Instruct {model.dtype}, {common.machine()}, "
                       f"linear kernel {kernel}, "
                       f"prompt {args.prompt_tokens} tokens, {args.tokens} tokens x {args.reps} reps "
                       f"(median per-token ratios; {time.perf_counter() - start:.0f} s)", HEADER, rows)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()

"""Bench 12: the matmul kernels of `dart.linear_kernel` side by side on the embedded SmolLM2: each of the
model's Linear shapes at decode and prompt row counts (weights out of cache: one copy per layer), then
a dense engine's batch-4 decode step and 512-token prefill under `torch` and `onednn`, alternated;
median times and torch / oneDNN ratios, and which kernel `auto` picks here.

    python -m bench.kernels [--reps 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bench import common
from dart import kernels
from dart.config import DartConfig
from dart.engine import DartEngine
from dart.patch import decoder_layers

HEADER = ["what", "rows", "torch ms", "oneDNN packed ms", "torch / oneDNN"]
ROWS = (1, 4, 64, 256, 512)


def median_seconds(run, reps: int) -> float:
    run()
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


@torch.inference_mode()
def matmul_rows(model, reps: int) -> list[list[str]]:
    """Per Linear of a decoder layer: every layer's copy in turn, so the weights stream from memory."""
    layers = decoder_layers(model)
    names = ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj", "mlp.down_proj")
    out = []
    for name in names:
        weights = [layer.get_submodule(name).weight for layer in layers]
        packed = [kernels.pack(w) for w in weights]
        for rows in ROWS:
            x = torch.randn(rows, weights[0].shape[1], dtype=weights[0].dtype)
            plain = median_seconds(lambda: [F.linear(x, w) for w in weights], reps) / len(weights)
            onednn = median_seconds(lambda: [kernels.linear(x, p) for p in packed], reps) / len(weights)
            out.append([f"{name} {tuple(weights[0].shape)}", str(rows), f"{plain * 1e3:.3f}", f"{onednn * 1e3:.3f}",
                        f"{plain / onednn:.2f}"])
    return out


@torch.inference_mode()
def engine_rows(model, tokenizer, reps: int) -> list[list[str]]:
    """A dense engine's 512-token prefill (batch 1) and batch-4 decode step after 4 such prompts."""
    engines = {k: DartEngine(common.sibling(model), tokenizer, DartConfig(method="dense", linear_kernel=k))
               for k in ("torch", "onednn")}
    try:
        prompts = common.document_prompts(tokenizer, 4, 512)
        prefill = {k: [] for k in engines}
        step = {k: [] for k in engines}
        for rep in range(reps):
            for kernel in (list(engines) if rep % 2 == 0 else list(reversed(engines))):
                engine = engines[kernel]
                began = time.perf_counter()
                engine.prefill(prompts[:1])
                prefill[kernel].append(time.perf_counter() - began)
                logits, batch = engine.prefill(prompts)
                tokens = logits.argmax(-1)
                for _ in range(8):
                    began = time.perf_counter()
                    tokens = engine.decode_step(batch, tokens).argmax(-1)
                    step[kernel].append(time.perf_counter() - began)
    finally:
        for engine in engines.values():
            engine.close()
    out = []
    for what, rows, times in (("engine prefill, 512 tokens", "512", prefill), ("engine decode step, batch 4", "4", step)):
        t, o = statistics.median(times["torch"]), statistics.median(times["onednn"])
        out.append([what, rows, f"{t * 1e3:.1f}", f"{o * 1e3:.1f}", f"{t / o:.2f}"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not kernels.onednn_available(torch.device("cpu")):
        raise SystemExit("this torch has no oneDNN CPU kernels: nothing to compare")
    model, tokenizer, _ = common.load_embedded(args.threads)
    start = time.perf_counter()
    auto = kernels.measured_choice([layer.mlp.gate_proj.weight for layer in decoder_layers(model)])
    rows = matmul_rows(model, args.reps) + engine_rows(model, tokenizer, args.reps)
    common.write_table(f"Bench 12: linear kernels, SmolLM2-135M-Instruct {model.dtype}, {common.machine()}, "
                       f"auto picks {auto}, {args.reps} reps (medians; {time.perf_counter() - start:.0f} s)",
                       HEADER, rows)


if __name__ == "__main__":
    main()

"""Bench 4: peak memory of a generation and DART state bytes per sequence on SmolLM2 (measured), and
the same figures computed for Llama-3.1-8B's shape.

    python -m bench.memory [--tokens 32 --prompt-tokens 512]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import common
from dart.config import DartConfig, GenerationConfig
from dart.engine import DartEngine
from dart.accounting import ModelShape
from dart.state import SequenceState

MIB = 2 ** 20


@dataclass(frozen=True)
class Shape:
    """What the memory figures need of a Llama-family config."""

    name: str
    layers: int
    hidden: int
    width: int
    vocab: int
    kv_heads: int
    head_dim: int
    weight_bytes: int
    tied: bool

    @classmethod
    def of(cls, name: str, config, weight_bytes: int) -> "Shape":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(name, config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.vocab_size,
                   config.num_key_value_heads, head_dim, weight_bytes, bool(config.tie_word_embeddings))


LLAMA31_8B = Shape("Llama-3.1-8B (bf16)", 32, 4096, 14336, 128256, 8, 128, 2, False)


def state_bytes(shape: Shape, keep_ratio: float, prompt_tokens: int) -> int:
    """Peak DART state of one sequence: scores, kept ids, the prompt's drift windows (mask step 0),
    computed with the engine's own state object on an empty model of this shape."""
    cfg = DartConfig(method="dart", budget="uniform", keep_ratio=keep_ratio, mask_step=0)
    state = SequenceState(cfg, ModelShape(shape.layers, shape.width, shape.hidden, shape.weight_bytes), None, None,
                          torch.device("cpu"))
    state.kept = [torch.arange(int(keep_ratio * shape.width))] * shape.layers
    state.signal.add(torch.zeros(prompt_tokens, shape.hidden))
    return state.state_bytes()


def computed_rows(shape: Shape, keep_ratio: float, context: int, prompt_tokens: int) -> list[list[str]]:
    ffn = 3 * shape.hidden * shape.width * shape.layers * shape.weight_bytes
    kv = 2 * shape.layers * shape.kv_heads * shape.head_dim * shape.weight_bytes * context
    gathered = int(keep_ratio * ffn)
    proxies = 2 * shape.layers * shape.width * 4
    name = shape.name
    return [[name, "FFN weights (shared)", f"{ffn / MIB:.1f}"],
            [name, f"KV cache per sequence at {context} tokens", f"{kv / MIB:.2f}"],
            [name, f"DART state per sequence (prompt {prompt_tokens}, keep {keep_ratio})",
             f"{state_bytes(shape, keep_ratio, prompt_tokens) / MIB:.2f}"],
            [name, f"gathered FFN weights per mask set (keep {keep_ratio}, compact path)", f"{gathered / MIB:.1f}"],
            [name, "forward proxies per model (float32)", f"{proxies / MIB:.2f}"]]


class PeakMemory:
    """Peak bytes above the start: CUDA allocator peak, else the process's peak RSS (VmHWM, reset
    through /proc/self/clear_refs)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def _rss_peak(self) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self.start = self._rss_peak()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.peak = self._rss_peak() - self.start


def memory_configs(keep: float) -> dict[str, DartConfig]:
    return {"dense": DartConfig(method="dense"),
               f"dart masked keep {keep}": DartConfig(method="dart", budget="uniform", keep_ratio=keep, mask_step=0,
                                                      ffn_path="masked"),
               f"dart auto keep {keep}": DartConfig(method="dart", budget="uniform", keep_ratio=keep, mask_step=0)}


def measure(model, tokenizer, proxies, cfg: DartConfig, prompts: list[list[int]], tokens: int) -> tuple[int, int]:
    """(peak bytes above the start of one generate, peak DART state bytes of a sequence)."""
    engine = DartEngine(model, tokenizer, cfg, proxies=proxies)
    try:
        with PeakMemory(model.get_input_embeddings().weight.device) as peak:
            results = engine.generate(prompts, GenerationConfig(max_new_tokens=tokens, stop_on_eos=False))
    finally:
        engine.close()
    return peak.peak, max(r.telemetry.dart_state_bytes for r in results)


def measured_rows(model, tokenizer, proxies, prompts_of, batches: list[int], tokens: int, keep: float) -> list[list[str]]:
    """In this process: for CUDA, whose allocator reports exact peaks."""
    rows = []
    for batch in batches:
        for name, cfg in memory_configs(keep).items():
            peak, state = measure(model, tokenizer, proxies, cfg, prompts_of(batch), tokens)
            rows.append([str(batch), name, f"{peak / MIB:.1f}", f"{state / MIB:.3f}"])
    return rows


def child_rows(args) -> list[list[str]]:
    """On CPU the process's peak RSS depends on what ran before in it (freed heap is reused), so each
    measurement runs in a fresh process: load, then one generate."""
    rows = []
    for batch in (1, 8):
        for name in memory_configs(args.keep):
            command = [sys.executable, "-m", "bench.memory", "--child", name, "--batch", str(batch),
                       "--tokens", str(args.tokens), "--prompt-tokens", str(args.prompt_tokens),
                       "--keep", str(args.keep), "--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            peak, state = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append([str(batch), name, f"{peak / MIB:.1f}", f"{state / MIB:.3f}"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    model, tokenizer, proxies = common.load_embedded(args.threads, "cpu")
    if args.child:
        prompts = common.document_prompts(tokenizer, args.batch, args.prompt_tokens)
        cfg = memory_configs(args.keep)[args.child]
        sys.stdout.write(json.dumps(measure(model, tokenizer, proxies, cfg, prompts, args.tokens)) + "\n")
        return
    rows = child_rows(args)
    common.write_table(f"Bench 4a: measured peak memory (RSS, a fresh process each) above the loaded model "
                       f"during generate (prompt "
                       f"{args.prompt_tokens}, {args.tokens} new tokens), SmolLM2-135M-Instruct {model.dtype}, "
                       f"{common.machine()}", ["batch", "variant", "peak MiB", "DART state MiB per sequence"], rows)
    smol = Shape.of("SmolLM2-135M (fp32)", model.config, model.get_input_embeddings().weight.element_size())
    computed = [row for shape in (smol, LLAMA31_8B)
                for row in computed_rows(shape, args.keep, args.prompt_tokens + args.tokens, args.prompt_tokens)]
    common.write_table("Bench 4b: computed memory figures", ["model", "figure", "MiB"], computed)


if __name__ == "__main__":
    main()

"""Try DART on one prompt or a file of prompts: `python -m dart "Summarize: ..." --method dart`.

Prints each generated text and its telemetry (DART_SPEC section 8). Settings are DartConfig and
GenerationConfig fields, given as `--set key=value` (e.g. `--set budget=uniform --set keep_ratio=0.3`).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from .config import DartConfig, GenerationConfig
from .engine import DartEngine
from .host_memory import keep_freed_memory
from .loading import load_model, model_fingerprint
from .model_config import EMBEDDED_MODEL, ModelConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dart", description=__doc__.split("\n\n")[0])
    parser.add_argument("prompt", nargs="?", help="the prompt text (or use --prompts-file)")
    parser.add_argument("--prompts-file", type=Path, help="one prompt per line, or a .jsonl with a 'prompt' field")
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="model dir, .gguf file, hub id or the embedded default")
    parser.add_argument("--method", default="dart", help="dense | static | griffin | dart")
    parser.add_argument("--keep-ratio", type=float, default=0.5, help="kept fraction of FFN neurons")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--raw", action="store_true", help="do not apply the model's chat template")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any DartConfig field (drift.window=8) or generation field (gen.temperature=0.7)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    args = parser.parse_args(argv)
    if (args.prompt is None) == (args.prompts_file is None):
        parser.error("give a prompt or --prompts-file (exactly one)")
    return args


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt is not None:
        return [args.prompt]
    lines = [line for line in args.prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if args.prompts_file.suffix == ".jsonl":
        return [json.loads(line)["prompt"] for line in lines]
    return lines


def build_configs(args: argparse.Namespace) -> tuple[DartConfig, GenerationConfig]:
    dart_fields: dict = {"method": args.method, "keep_ratio": args.keep_ratio}
    gen_fields: dict = {"max_new_tokens": args.max_new_tokens}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r} is not KEY=VALUE")
        target, key = (gen_fields, key[4:]) if key.startswith("gen.") else (dart_fields, key)
        *parents, leaf = key.split(".")
        node = target
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    return DartConfig(**dart_fields), GenerationConfig(**gen_fields)


def encode(tokenizer, text: str, raw: bool) -> list[int]:
    if not raw and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def format_result(text: str, telemetry: dict) -> str:
    keep = ", ".join(f"{k:.2f}" for k in telemetry["kept_fraction_per_layer"])
    return (f"{text}\n"
            f"  tokens: prompt {telemetry['prompt_tokens']}, generated {telemetry['generated_tokens']}\n"
            f"  applied FFN sparsity per generated token: {telemetry['applied_sparsity']:.3f}\n"
            f"  drift events: {telemetry['drift_events']} at {telemetry['drift_positions']}\n"
            f"  final kept fraction per layer: [{keep}]\n"
            f"  FFN FLOPs executed/dense: {telemetry['ffn_flops_executed'] / max(1, telemetry['ffn_flops_dense']):.3f}"
            f" (kept/dense {telemetry['ffn_flops_kept'] / max(1, telemetry['ffn_flops_dense']):.3f})\n"
            f"  DART state: {telemetry['dart_state_bytes'] / 1024:.1f} KiB; prefill {telemetry['prefill_seconds']:.2f}s,"
            f" decode {telemetry['decode_seconds']:.2f}s\n")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        dart_cfg, gen_cfg = build_configs(args)
        texts = read_prompts(args)
        model, tokenizer = load_model(ModelConfig(source=args.model, device=args.device, dtype=args.dtype))
        if model.device.type == "cpu":
            keep_freed_memory()
        engine = DartEngine(model, tokenizer, dart_cfg, fingerprint=model_fingerprint(model))
        prompts = [encode(tokenizer, text, args.raw) for text in texts]
        results = engine.generate(prompts, gen_cfg)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    for text, result in zip(texts, results):
        output = tokenizer.decode(result.token_ids, skip_special_tokens=True)
        telemetry = result.telemetry.to_dict()
        if args.json:
            sys.stdout.write(json.dumps({"prompt": text, "output": output, "telemetry": telemetry}) + "\n")
        else:
            sys.stdout.write(format_result(output, telemetry))
    return 0


if __name__ == "__main__":
    sys.exit(main())

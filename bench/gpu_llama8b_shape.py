"""Benches 1, 2 and 4 on a random-weight model with Llama-3.1-8B's shape (bf16, CUDA): decode speed of
`dense` / `dart` masked / `dart` auto at 30/50/70% sparsity (batch 1 and 8), bookkeeping overhead at
keep ratio 1.0, and memory. One command, under 8 minutes on one GPU:

    python -m bench.gpu_llama8b_shape
    python -m bench.gpu_llama8b_shape --smoke      # tiny shape on CPU, seconds (what the tests run)

Random weights give the real matmul shapes and byte counts; token choices are meaningless.
"""
from __future__ import annotations

import argparse
import logging
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from bench import common, decode, memory, overhead

log = logging.getLogger(__name__)

EIGHT_B = dict(layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=128256)
SMOKE = dict(layers=2, hidden=64, intermediate=224, heads=4, kv_heads=2, vocab=512)


def build(layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, vocab: int,
          device: torch.device, dtype: torch.dtype):
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shape on CPU, a few tokens (tests)")
    parser.add_argument("--layers", type=int, help="decoder layers (default 32; the smoke shape has 2)")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    shape = dict(SMOKE if args.smoke else EIGHT_B)
    if args.smoke:
        args.tokens, args.reps, args.prompt_tokens, args.device = min(args.tokens, 4), 1, 16, "cpu"
    if args.layers:
        shape["layers"] = args.layers
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    start = time.perf_counter()
    model = build(**shape, device=device, dtype=dtype)
    tokenizer = common.null_tokenizer()
    proxies = common.engine_proxies(model, None)
    log.info("built %s in %.0f s", shape, time.perf_counter() - start)
    label = f"random Llama-3.1-8B shape {shape} {dtype}, {common.machine()}"
    prompts_of = lambda b: common.random_prompts(shape["vocab"], b, args.prompt_tokens)   # noqa: E731
    args.batch, args.sparsity = [1, 8], [0.3, 0.5, 0.7]
    rows = decode.run(model, tokenizer, prompts_of, args, proxies, device, common.engine_kernel(model))
    common.write_table(f"Bench 1 (GPU script): decode speed, {label}, {args.tokens} tokens x {args.reps} reps",
                       decode.HEADER, rows)
    args.reps *= 2
    rows = overhead.run(model, tokenizer, prompts_of(1), args, proxies, device)
    common.write_table(f"Bench 2 (GPU script): bookkeeping overhead, batch 1, {label}", overhead.HEADER, rows)
    rows = memory.measured_rows(model, tokenizer, proxies, prompts_of, [1, 8], args.tokens, 0.5)
    common.write_table(f"Bench 4a (GPU script): peak memory above the loaded model, {label}",
                       ["batch", "variant", "peak MiB", "DART state MiB per sequence"], rows)
    computed = memory.computed_rows(memory.Shape.of("this model", model.config, model.dtype.itemsize), 0.5,
                                    args.prompt_tokens + args.tokens, args.prompt_tokens)
    common.write_table("Bench 4b (GPU script): computed memory figures", ["model", "figure", "MiB"], computed)
    log.info("total %.0f s", time.perf_counter() - start)


if __name__ == "__main__":
    main()

"""Bench 19: glibc's default heap against `dart.host_memory.keep_freed_memory`, dense and block-wise
DART at 50% (bf16 by default): 4-row 512-token prefills and 48 decode steps at batch 4, in a child
process per setting (the setting is process-wide), the children alternating A B, B A, ...

    python -m bench.host_memory [--reps 4 --dtype native]

Per setting and variant: median seconds of a prefill and of the decode steps, their page faults (minor,
getrusage), and the speed of `keep` against `default` (median of the per-repetition ratios).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from bench import common

SETTINGS = ("default", "keep")


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def child(setting: str, dtype: str) -> dict:
    """One process: {variant: {prefill_s, prefill_faults, decode_s, decode_faults}} (medians of 3)."""
    import torch

    from bench.prefill import prefill_once
    from dart.config import DartConfig, PrefillConfig
    from dart.host_memory import keep_freed_memory

    if setting == "keep" and not keep_freed_memory():
        raise SystemExit("not glibc: nothing to compare")
    model, tokenizer, proxies = common.load_embedded(1, dtype=dtype, keep_heap=False)
    kernel = common.engine_kernel(model)
    blocks = PrefillConfig(mode="blockwise", first_block_tokens=48, block_tokens=224)
    configs = {"dense": DartConfig(method="dense", linear_kernel=kernel),
               "dart blockwise 50%": DartConfig(method="dart", budget="uniform", keep_ratio=0.5, mask_step=1,
                                                linear_kernel=kernel, prefill=blocks)}
    decoders = common.engines(model, tokenizer, configs, proxies)
    prompts = common.document_prompts(tokenizer, 4, 512)
    out = {}
    for name, decoder in decoders.items():
        runs = []
        for _ in range(4):                                  # the first warms up
            before = faults()
            seconds, _ = prefill_once(decoder.engine, prompts, torch.device("cpu"))
            prefill = (seconds, faults() - before)
            decoder.start(prompts)
            before, start = faults(), time.perf_counter()
            for _ in range(48):
                decoder.step()
            runs.append((*prefill, time.perf_counter() - start, faults() - before))
        columns = list(zip(*runs[1:]))
        out[name] = dict(zip(["prefill_s", "prefill_faults", "decode_s", "decode_faults"],
                             [statistics.median(c) for c in columns]))
    common.close(decoders)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4, help="child processes per setting")
    common.dtype_argument(parser)
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.dtype)))
        return
    common.set_threads(1)               # as the children: the title names the parent's threads
    results: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for rep in range(args.reps):
        for setting in SETTINGS if rep % 2 == 0 else SETTINGS[::-1]:
            done = subprocess.run([sys.executable, "-m", "bench.host_memory", "--child", setting, "--dtype", args.dtype],
                                  check=True, capture_output=True, text=True)
            results[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = []
    for variant in results["default"][0]:
        for step in ("prefill", "decode"):
            default = [r[variant][f"{step}_s"] for r in results["default"]]
            keep = [r[variant][f"{step}_s"] for r in results["keep"]]
            rows.append([variant, step, f"{statistics.median(default):.3f}", f"{statistics.median(keep):.3f}",
                         f"{statistics.median(d / k for d, k in zip(default, keep)):.3f}",
                         f"{statistics.median(r[variant][f'{step}_faults'] for r in results['default']):.0f}",
                         f"{statistics.median(r[variant][f'{step}_faults'] for r in results['keep']):.0f}"])
    common.write_table(f"Bench 19: the heap, batch 4, 512-token prompts, 48 decode steps, dtype {args.dtype}, "
                       f"{common.machine()}", ["variant", "step", "default s", "keep s", "keep speed vs default",
                                               "default faults", "keep faults"], rows)


if __name__ == "__main__":
    main()

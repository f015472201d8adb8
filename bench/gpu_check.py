"""The GPU check: the summarize job on a local Ray with one GPU per actor at the native dtype (dense,
then DART 50% block-wise: documents/s, tokens, telemetry), then the engine benches on a random model
of Llama-3.1-8B's shape (bench.gpu_llama8b_shape). One command, under 8 minutes on one GPU:

    python -m bench.gpu_check
    python -m bench.gpu_check --smoke      # on CPU, a tiny job and shape, seconds (what the tests run)

`--documents`, `--config` and key=value overrides go to the job.
"""
from __future__ import annotations

import argparse
import logging
import time

import torch

from bench import common, gpu_llama8b_shape, job_speed

log = logging.getLogger(__name__)

SIDES = {"dense": ["dart.method=dense"], "DART 50% block-wise": ["dart.keep_ratio=0.5"]}
GPU = ["model.device=cuda", "pool.num_gpus_per_actor=1", "pool.num_actors=1", "pool.batch_size=16"]
SMOKE = ["model.device=cpu", "pool.num_gpus_per_actor=0", "pool.num_actors=1", "generation.max_new_tokens=4",
         "dart.prefill.first_block_tokens=8", "dart.prefill.block_tokens=16"]


def job_rows(config: str, documents: int, overrides: list[str]) -> list[list[str]]:
    runs = {name: job_speed.one_job(config, [*job_speed.DATA, f"input.limit={documents}", *overrides, *side])
            for name, side in SIDES.items()}
    first = runs["dense"]
    base = {"window": first["rows"] / first["window_seconds"], "whole": first["rows"] / first["wall_seconds"]}
    rows = []
    for name, summary in runs.items():
        row = job_speed.side_row(name, [summary], base)
        rows.append(row + [str(summary.get("generated_tokens", "-")), f"{summary.get('mean_applied_sparsity') or 0:.3f}",
                           str(summary.get("error_rows", "-"))])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="on CPU, a tiny job and shape (tests)")
    parser.add_argument("--config", default="conf/summarize.yaml")
    parser.add_argument("--documents", type=int, default=48)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the job")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    documents = 2 if args.smoke else args.documents
    rows = job_rows(args.config, documents, [*(SMOKE if args.smoke else GPU), *args.overrides])
    common.write_table(f"GPU check: summarize job, {documents} documents, {common.machine()}",
                       [*job_speed.HEADER, "generated tokens", "applied sparsity", "error rows"], rows)
    gpu_llama8b_shape.main(["--smoke"] if args.smoke or not torch.cuda.is_available() else [])
    log.info("GPU check done in %.0f s", time.perf_counter() - start)


if __name__ == "__main__":
    main()

"""Bench 7: the summarize job end to end with block-wise DART prefill against decode-only DART (the
prompt dense), everything else equal, the two run alternately in one process (A B, then B A):
documents/s of each and their ratio, FFN FLOPs executed against dense over the whole job (prompt and
generated tokens), the sparsity applied to prompt tokens, and ROUGE-L.

    python -m bench.job_prefill [--config conf/summarize.yaml] [--reps 1] [--blockwise-set key=value] [key=value ...]

The block-wise side runs the rest of the config's prefill section (block sizes, `drift_in_prompt`).
`--blockwise-set` overrides apply to it only, e.g. `dart.keep_ratio=0.7` to set block-wise DART at
30% against decode-only DART at 50% (`dart.keep_ratio=0.5`, both sides).

Both sides start their actors and load the model per job, as a user's job does.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile

from bench import common
from pipeline.config import load_config
from pipeline.driver import run_job

BLOCKWISE = ["dart.prefill.mode=blockwise"]     # the other prefill knobs: the config's


def sides(blockwise_set: list[str]) -> dict[str, list[str]]:
    """Side -> its overrides; `blockwise_set` goes to the block-wise side alone."""
    return {"decode-only DART (dense prompt)": ["dart.prefill.mode=dense"],
            "block-wise DART prefill": [*BLOCKWISE, *blockwise_set]}


def one_job(config_path: str, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        config = load_config(config_path, [*overrides, "control.progress=false", f"output.dir={out}"],
                             task="summarize")
        return run_job(config)


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="conf/summarize.yaml")
    parser.add_argument("--reps", type=int, default=1, help="pairs of runs (each pair alternates the order)")
    parser.add_argument("--blockwise-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of the block-wise side only (repeatable)")
    common.dtype_argument(parser)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the job config (both sides)")
    args = parser.parse_args(argv)
    args.overrides = [f"model.dtype={args.dtype}", *args.overrides]
    plan = sides(args.blockwise_set)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    runs: dict[str, list[dict]] = {side: [] for side in plan}
    for rep in range(2 * args.reps):
        order = list(plan) if rep % 2 == 0 else list(reversed(plan))
        for side in order:
            runs[side].append(one_job(args.config, [*args.overrides, *plan[side]]))
    base = statistics.fmean(r["rows"] / r["wall_seconds"] for r in runs[next(iter(plan))])
    rows = []
    for side, summaries in runs.items():
        rate = statistics.fmean(r["rows"] / r["wall_seconds"] for r in summaries)
        last = summaries[-1]
        rows.append([side, f"{rate:.3f}", f"{rate / base:.3f}", fmt(last["ffn_flops_executed_fraction"], ".3f"),
                     fmt(last["prompt_applied_sparsity"], ".3f"), fmt(last["mean_applied_sparsity"], ".3f"),
                     fmt(last["rouge_l"], ".3f")])
    config = load_config(args.config, args.overrides, task="summarize")
    common.write_table(
        f"Bench 7: summarize job end to end, {config.input.paths}, {config.dart.method} keep "
        f"{config.dart.keep_ratio} (block-wise side also {args.blockwise_set or 'as configured'}), "
        f"{config.pool.num_actors} actors, {2 * args.reps} runs per side, model dtype {args.dtype} "
        f"(ran {runs[next(iter(plan))][-1].get('model_dtype', '?')}), {common.machine()}",
        ["side", "documents/s", "vs decode-only", "FFN FLOPs executed / dense", "prompt sparsity",
         "generated sparsity", "ROUGE-L"], rows)


if __name__ == "__main__":
    main()

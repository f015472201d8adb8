"""What the native dtype costs in quality: conf/study_dtype.yaml's runs paired item by item, bfloat16
against float32, for each variant (dense, the main job's DART): ROUGE-L and agreement with the same
dtype's dense output, each a paired difference with a bootstrap interval; applied sparsity and FFN
FLOPs beside them. Reads the runs' parts as they are, so a study still running gives its items so far.

    python -m bench.dtype_quality [--config conf/study_dtype.yaml] [--out docs/studies/dtype/report.md]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from bench import common
from pipeline.run import Job
from pipeline.study.config import expand, load_study
from pipeline.study.stats import bootstrap_mean, paired_difference
from pipeline.tasks import rouge_l

PAIRS = ("xsum_float32", "xsum_bfloat16")


def read_runs(config: str) -> pd.DataFrame:
    """Every finished row of the study's runs, labelled by dataset (dtype) and variant."""
    frames = []
    for run in expand(load_study(config)):
        parts = Path(str(Job.open(run.config).run.root)) / "parts"
        if not parts.is_dir() or not any(parts.glob("*.parquet")):
            continue
        frame = pq.read_table(parts, columns=["id", "status", "output", "rouge_l", "applied_sparsity",
                                              "ffn_flops_executed", "ffn_flops_dense"]).to_pandas()
        frames.append(frame.assign(dataset=run.dataset, variant=run.variant))
    return pd.concat(frames) if frames else pd.DataFrame()


def with_agreement(rows: pd.DataFrame) -> pd.DataFrame:
    """ROUGE-L of each output against the same dtype's dense output of the item."""
    dense = rows[rows.variant == "dense"].set_index(["dataset", "id"])["output"].to_dict()
    agree = [rouge_l(out, dense[(ds, i)]) if (ds, i) in dense and isinstance(out, str) else float("nan")
             for ds, i, out in zip(rows.dataset, rows.id, rows.output)]
    return rows.assign(agreement=agree)


def table(rows: pd.DataFrame, samples: int) -> list[list[str]]:
    ok = with_agreement(rows[rows.status == "ok"])
    out = []
    for variant in ok.variant.unique():
        sides = {ds: ok[(ok.variant == variant) & (ok.dataset == ds)].set_index("id") for ds in PAIRS}
        ids = sorted(set(sides[PAIRS[0]].index) & set(sides[PAIRS[1]].index))
        if not ids:
            continue
        f32, bf16 = (sides[ds].loc[ids] for ds in PAIRS)
        rouge = paired_difference(bf16["rouge_l"].to_numpy(), f32["rouge_l"].to_numpy(), samples)
        flops = [s.ffn_flops_executed.sum() / s.ffn_flops_dense.sum() for s in (f32, bf16)]
        row = [variant, str(len(ids)), bootstrap_mean(f32["rouge_l"], samples).format(),
               bootstrap_mean(bf16["rouge_l"], samples).format(), rouge.format("{:+.4f}"),
               "bf16 worse" if rouge.high < 0 else "bf16 better" if rouge.low > 0 else "not shown to differ"]
        if variant != "dense":
            row += [bootstrap_mean(f32["agreement"], samples).format(), bootstrap_mean(bf16["agreement"], samples).format(),
                    f"{f32.applied_sparsity.mean():.3f} / {bf16.applied_sparsity.mean():.3f}",
                    f"{flops[0]:.3f} / {flops[1]:.3f}"]
        else:
            row += ["-", "-", "-", "-"]
        out.append(row)
    return out


HEADER = ["variant", "items", "ROUGE-L float32", "ROUGE-L bfloat16", "bfloat16 - float32 (paired)", "verdict",
          "agreement with dense, float32", "agreement with dense, bfloat16", "applied sparsity f32 / bf16",
          "FFN FLOPs vs dense f32 / bf16"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="conf/study_dtype.yaml")
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args(argv)
    rows = table(read_runs(args.config), args.samples)
    common.write_table(f"Native dtype and quality: {args.config}, paired over the items both dtypes finished "
                       f"(95% bootstrap intervals, {args.samples} resamples)", HEADER, rows)


if __name__ == "__main__":
    main()

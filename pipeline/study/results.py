"""A study's per-item results: every run's output rows with the study's labels and derived columns.

results.parquet has one row per item x config. A config's rows are told apart by `panel`: the dataset,
or in a study with a models axis `<dataset>_<model>` (`model_name` the axis's name, "-" without one).
The report reads only this table: quality from the
task's metrics (the task registry), sparsity from telemetry, agreement against the baseline's output
of the same item, and the end-to-end cost: `executed_flops_ratio`, the FFN FLOPs the item's sequence
executed over the prompt and the generated tokens against a dense run of the same tokens.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..run import write_atomic_bytes
from ..tasks import TASKS, rouge_l, word_match
from .config import StudyRun


def quality_metrics(task: str) -> list[tuple[str, str]]:
    """The task's quality metrics as (column, title), the primary metric first."""
    return list(TASKS[task].quality_metrics)


def panel_name(dataset: str, model: str | None) -> str:
    """The report's unit: a dataset, or one model's dataset in a study with a models axis."""
    return dataset if model in (None, "-") else f"{dataset}_{model}"


def run_table(run: StudyRun, summary: dict[str, Any]) -> pd.DataFrame | None:
    """The run's output rows with the study's labels; None when it has no parts yet."""
    parts = Path(summary["run_dir"]) / "parts"
    if not parts.is_dir() or not any(parts.glob("*.parquet")):
        return None
    frame = pq.read_table(parts).to_pandas()
    dart = run.config.dart
    labels = {"panel": panel_name(run.dataset, run.model), "model_name": run.model or "-",
              "dataset": run.dataset, "task": run.config.task, "variant": run.variant,
              "budget": run.budget or "-", "config": run.label, "method": dart.method,
              "budget_kind": dart.budget if dart.prunes else "-", "prefill_mode": dart.prefill.mode,
              "target_sparsity": dart.target_sparsity if dart.prunes else 0.0, "run_dir": summary["run_dir"]}
    return pd.concat([pd.DataFrame({k: [v] * len(frame) for k, v in labels.items()}, index=frame.index), frame],
                     axis=1)


def agreement(frame: pd.DataFrame, ok: pd.Series, baseline: str) -> tuple[list[float], list[float], list[float]]:
    """Per row: ROUGE-L, word match and identity of the output against the baseline's output of the
    same item in the same panel (NaN for error rows and items the baseline lacks)."""
    reference = frame[ok & (frame["variant"] == baseline)].set_index(["panel", "id"])["output"]
    lookup = reference.to_dict()
    agree_rouge, agree_words, agree_exact = [], [], []
    for panel, row_id, output, good in zip(frame["panel"], frame["id"], frame["output"], ok):
        base = lookup.get((panel, row_id))
        if not good or base is None or output is None:
            agree_rouge.append(np.nan), agree_words.append(np.nan), agree_exact.append(np.nan)
            continue
        agree_rouge.append(1.0 if output == base else rouge_l(output, base))
        agree_words.append(word_match(output, base))
        agree_exact.append(float(output == base))
    return agree_rouge, agree_words, agree_exact


def derive(frame: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per-item columns the report reads: primary quality, speed, FLOP ratios, agreement with baseline."""
    out = frame.copy()
    if "panel" not in out:     # rows labelled before the models axis: one model, a panel per dataset
        out.insert(0, "model_name", "-")
        out.insert(0, "panel", out["dataset"])
    ok = out["status"] == "ok"
    out["quality"] = np.nan
    for task in out.loc[ok, "task"].unique():
        rows = ok & (out["task"] == task)
        primary = quality_metrics(task)[0][0]
        if primary in out:
            out.loc[rows, "quality"] = out.loc[rows, primary].astype(float)
    seconds = out["prefill_seconds"].astype(float) + out["decode_seconds"].astype(float)
    out["tokens_per_second"] = np.where(ok & (seconds > 0), out["generated_tokens"] / seconds.where(seconds > 0), np.nan)
    dense_flops = out["ffn_flops_dense"].astype(float).where(out["ffn_flops_dense"] > 0)
    out["executed_flops_ratio"] = out["ffn_flops_executed"] / dense_flops
    out["kept_flops_ratio"] = out["ffn_flops_kept"] / dense_flops
    out["dense_rouge_l"], out["dense_word_match"], out["dense_exact"] = agreement(out, ok, baseline)
    return out


def collect(runs: list[StudyRun], summaries: list[dict[str, Any]], baseline: str) -> pd.DataFrame:
    """results: one row per item x config, with derived columns."""
    tables = [t for t in (run_table(r, s) for r, s in zip(runs, summaries)) if t is not None]
    if not tables:
        raise ValueError("no run of the study has any output rows yet; run it first")
    return derive(pd.concat(tables, ignore_index=True), baseline)


def write_results(frame: pd.DataFrame, path: Path) -> None:
    """results.parquet, written atomically."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomic_bytes(path, sink.getvalue().to_pybytes())

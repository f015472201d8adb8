"""Efficiency studies: a sweep of DART variants x budgets x datasets, each cell one pipeline job.

A study YAML names a `base` job config (model, generation, pool, ...), `variants` (a name plus a
partial `dart:` override), `budgets` (a name plus a partial `dart:` override) and `datasets` (a
name plus the job sections that read it). Each (dataset x variant x budget) expands to one validated
JobConfig run by `pipeline.driver.run_job`: the same plan gives every config the same items, the
config fingerprint keeps runs apart, and a rerun resumes. A dense variant runs once per dataset.
Runs live beside the studies, so studies under one output folder share identical configs' runs.

    <study.output>/runs/<task>-<fp>/    one pipeline run per config (parts, markers, summary.json)
    <study.output>/<study.name>/
        study.yaml                the resolved study config
        runs.json                 config label -> run directory and run summary
        results.parquet           one row per item x config, with study labels and derived metrics
        summary.csv  report.md  *.png    (pipeline.report)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .config import JobConfig, apply_overrides, parse_config

logger = logging.getLogger(__name__)

NAME = r"^[A-Za-z0-9_.+-]+$"
# Primary quality metric (first) and the others, per task: (column, title).
QUALITY_METRICS: dict[str, list[tuple[str, str]]] = {
    "summarize": [("rouge_l", "ROUGE-L"), ("rouge_1", "ROUGE-1"), ("rouge_2", "ROUGE-2")],
    "qa": [("f1", "token F1"), ("exact_match", "EM")],
    "label": [("correct", "accuracy")],
}


class FrozenModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VariantConfig(FrozenModel):
    name: str = Field(pattern=NAME, description="Variant name in tables and plots (e.g. dart, static, dart_recal4).")
    dart: dict[str, Any] = Field(default_factory=dict, description="Partial `dart:` override, e.g. "
                                 "{method: dart, drift: {recalibration_tokens: 4}}.")
    budgets: list[str] | None = Field(None, description="Budget names this variant runs at (null: all). "
                                      "A variant whose method is dense runs once, without a budget.")


class BudgetConfig(FrozenModel):
    name: str = Field(pattern=NAME, description="Budget name in tables and plots (e.g. auto50).")
    dart: dict[str, Any] = Field(description="Partial `dart:` override, e.g. {budget: auto, keep_ratio: 0.5}.")


class DatasetConfig(FrozenModel):
    name: str = Field(pattern=NAME, description="Dataset name in tables and plots (e.g. xsum).")
    job: dict[str, Any] = Field(description="Job sections for this dataset, merged over `base`: task, "
                                "input (paths, columns), and e.g. generation or summarize/qa settings.")


class StudySettings(FrozenModel):
    name: str = Field(pattern=NAME, description="Study name; its directory is <output>/<name>.")
    output: str = Field("outputs/studies", description="Root of study directories (relative to the working directory).")
    limit: int | None = Field(None, ge=1, description="Rows per dataset: sets input.limit of every dataset (null: as given).")
    baseline: str = Field("dense", description="Variant whose outputs are the agreement reference and the "
                          "denominator of quality retained.")
    compare: list[tuple[str, str]] = Field(default_factory=lambda: [("dart", "static")], description=
                                           "Variant pairs (a, b) compared item by item at each budget: a - b.")
    bootstrap_samples: int = Field(2000, ge=100, description="Bootstrap resamples of the items.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the percentile intervals.")
    seed: int = Field(0, description="Seed of the bootstrap.")
    equal_sparsity_tolerance: float = Field(0.02, ge=0, description="Two configs apply equal sparsity when "
                                            "their token-weighted applied sparsities differ by at most this.")


class StudyConfig(FrozenModel):
    """One study: what to sweep, on which data, with which shared job settings."""

    study: StudySettings = Field(description="Name, output and statistics of the study.")
    base: dict[str, Any] = Field(default_factory=dict, description="Job config shared by every run (model, "
                                 "generation, pool, control, ...); datasets, budgets and variants override it.")
    variants: list[VariantConfig] = Field(min_length=1, description="Methods and their variants.")
    budgets: list[BudgetConfig] = Field(min_length=1, description="Sparsity budgets.")
    datasets: list[DatasetConfig] = Field(min_length=1, description="Datasets, each with its task.")

    @model_validator(mode="after")
    def _names(self) -> "StudyConfig":
        for kind in ("variants", "budgets", "datasets"):
            names = [x.name for x in getattr(self, kind)]
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} names must be unique, got {names}")
        variants, budgets = {v.name for v in self.variants}, {b.name for b in self.budgets}
        for v in self.variants:
            unknown = set(v.budgets or []) - budgets
            if unknown:
                raise ValueError(f"variant {v.name} names unknown budget(s) {sorted(unknown)}; budgets: {sorted(budgets)}")
        named = {self.study.baseline, *(n for pair in self.study.compare for n in pair)}
        if named - variants:
            raise ValueError(f"study.baseline/compare name unknown variant(s) {sorted(named - variants)}; "
                             f"variants: {sorted(variants)}")
        return self

    @property
    def directory(self) -> Path:
        return Path(self.study.output) / self.study.name


@dataclass(frozen=True)
class StudyRun:
    """One cell of the sweep."""

    dataset: str
    variant: str
    budget: str | None          # None for a dense variant
    config: JobConfig

    @property
    def label(self) -> str:
        return self.variant if self.budget is None else f"{self.variant}@{self.budget}"


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of plain data: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def expand(study: StudyConfig) -> list[StudyRun]:
    """Every (dataset x variant x budget) as a validated JobConfig, in a fixed order."""
    runs = []
    for ds in study.datasets:
        data = merge(study.base, ds.job)
        data = merge(data, {"output": {"dir": str(study.directory.parent / "runs")}})
        if study.study.limit is not None:
            data = merge(data, {"input": {"limit": study.study.limit}})
        for variant in study.variants:
            dense = merge(data.get("dart", {}), variant.dart).get("method", "dart") == "dense"
            budgets = [None] if dense else [b for b in study.budgets if variant.budgets is None or b.name in variant.budgets]
            for budget in budgets:
                dart = merge(data.get("dart", {}), {} if budget is None else budget.dart)
                cell = merge(data, {"dart": merge(dart, variant.dart)})
                label = variant.name if budget is None else f"{variant.name}@{budget.name}"
                try:
                    config = parse_config(cell)
                except ValueError as err:
                    raise ValueError(f"study config {label} on dataset {ds.name}: {err}") from None
                runs.append(StudyRun(ds.name, variant.name, None if budget is None else budget.name, config))
    return runs


def load_study(path: str | Path, overrides: list[str] = ()) -> StudyConfig:
    """Read a study YAML, apply `key=value` overrides (e.g. study.limit=16), validate every run."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    data = apply_overrides(data, list(overrides))
    try:
        study = StudyConfig.model_validate(data)
    except ValidationError as err:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '<study>'}: {e['msg']}" for e in err.errors()]
        raise ValueError("invalid study config:\n  " + "\n  ".join(lines)) from None
    expand(study)   # every cell validates before anything runs
    return study


def _run_table(run: StudyRun, summary: dict[str, Any]):
    """The run's output rows (pandas) with the study's labels; None when it has no parts yet."""
    import pandas as pd
    import pyarrow.parquet as pq

    parts = Path(summary["run_dir"]) / "parts"
    if not parts.is_dir() or not any(parts.glob("*.parquet")):
        return None
    frame = pq.read_table(parts).to_pandas()
    dart = run.config.dart
    labels = {"dataset": run.dataset, "task": run.config.task, "variant": run.variant,
              "budget": run.budget or "-", "config": run.label, "method": dart.method,
              "budget_kind": dart.budget if dart.prunes else "-",
              "target_sparsity": dart.target_sparsity if dart.prunes else 0.0, "run_dir": summary["run_dir"]}
    return pd.concat([pd.DataFrame({k: [v] * len(frame) for k, v in labels.items()}, index=frame.index), frame],
                     axis=1)


def derive(frame, baseline: str):
    """Per-item columns the report reads: primary quality, speed, FLOP ratios, agreement with baseline."""
    import numpy as np

    from .metrics import rouge_l, word_match

    out = frame.copy()
    ok = out["status"] == "ok"
    out["quality"] = np.nan
    for task, metrics in QUALITY_METRICS.items():
        rows = ok & (out["task"] == task)
        if rows.any() and metrics[0][0] in out:
            out.loc[rows, "quality"] = out.loc[rows, metrics[0][0]].astype(float)
    seconds = out["prefill_seconds"].astype(float) + out["decode_seconds"].astype(float)
    out["tokens_per_second"] = np.where(ok & (seconds > 0), out["generated_tokens"] / seconds.where(seconds > 0), np.nan)
    dense_flops = out["ffn_flops_dense"].astype(float).where(out["ffn_flops_dense"] > 0)
    out["executed_flops_ratio"] = out["ffn_flops_executed"] / dense_flops
    out["kept_flops_ratio"] = out["ffn_flops_kept"] / dense_flops
    reference = out[ok & (out["variant"] == baseline)].set_index(["dataset", "id"])["output"]
    lookup = reference.to_dict()
    agree_rouge, agree_words, agree_exact = [], [], []
    for dataset, row_id, output, good in zip(out["dataset"], out["id"], out["output"], ok):
        base = lookup.get((dataset, row_id))
        if not good or base is None or output is None:
            agree_rouge.append(np.nan), agree_words.append(np.nan), agree_exact.append(np.nan)
            continue
        agree_rouge.append(1.0 if output == base else rouge_l(output, base))
        agree_words.append(word_match(output, base))
        agree_exact.append(float(output == base))
    out["dense_rouge_l"], out["dense_word_match"], out["dense_exact"] = agree_rouge, agree_words, agree_exact
    return out


def collect(runs: list[StudyRun], summaries: list[dict[str, Any]], baseline: str):
    """results: one row per item x config (pandas), with derived columns."""
    import pandas as pd

    tables = [t for t in (_run_table(r, s) for r, s in zip(runs, summaries)) if t is not None]
    if not tables:
        raise ValueError("no run of the study has any output rows yet; run it first")
    return derive(pd.concat(tables, ignore_index=True), baseline)


def write_results(frame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .store import write_atomic_bytes

    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomic_bytes(path, sink.getvalue().to_pybytes())


def run_study(study: StudyConfig, report_only: bool = False) -> dict[str, Any]:
    """Run (or resume) every cell, collect the results, write the report. Returns what was written."""
    import time

    from .driver import run_job
    from .prepare import prepare
    from .report import write_report
    from .store import write_atomic_bytes, write_json

    began = time.perf_counter()
    runs = expand(study)
    root = study.directory
    root.mkdir(parents=True, exist_ok=True)
    write_atomic_bytes(root / "study.yaml", yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False).encode())
    summaries = []
    for k, run in enumerate(runs):
        logger.info("study %s: config %d/%d %s on %s", study.study.name, k + 1, len(runs), run.label, run.dataset)
        if report_only:
            prep = prepare(run.config)
            done = sum(prep.run.is_done(it) for it in prep.plan)
            summaries.append({"run_dir": str(prep.run.root), "config_fingerprint": prep.fingerprint,
                              "planned_items": len(prep.plan), "done_items": done, "complete": done == len(prep.plan)})
        else:
            summaries.append(run_job(run.config))
    write_json(root / "runs.json", [{"dataset": r.dataset, "config": r.label, **s} for r, s in zip(runs, summaries)])
    results = collect(runs, summaries, study.study.baseline)
    write_results(results, root / "results.parquet")
    written = write_report(results, study, root)
    wall = time.perf_counter() - began
    logger.info("study %s written to %s in %.0f s", study.study.name, root, wall)
    return {"study_dir": str(root), "configs": len(runs), "complete": all(s.get("complete", False) for s in summaries),
            "wall_seconds": wall, **written}

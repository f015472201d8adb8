"""A study's configuration, and the sweep cells it expands to: one validated JobConfig per cell.

A study YAML names a `base` job config (model, generation, pool, ...), `variants` (a name plus a
partial `dart:` override), `budgets` (a name plus a partial `dart:` override), `datasets` (a
name plus the job sections that read it) and, optionally, `models` (a name plus a partial `model:`
override: model size as an axis). Each (model x dataset x variant x budget) expands to one validated
JobConfig: the same plan gives every config the same items, the config fingerprint keeps runs apart,
and a rerun resumes. A dense variant runs once per model and dataset. Without `models` the cells are
exactly those of a study without the axis (same configs, same runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from dart.config import FrozenModel

from ..config import JobConfig, apply_overrides, parse_config, read_yaml, validation_message

NAME = r"^[A-Za-z0-9_.+-]+$"


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


class ModelAxisConfig(FrozenModel):
    name: str = Field(pattern=NAME, description="Model name in tables and plots (e.g. qwen-1.5b).")
    model: dict[str, Any] = Field(min_length=1, description="Partial `model:` override merged over `base` and "
                                  "the dataset's job, e.g. {source: qwen2.5-coder-1.5b-instruct}. It may not "
                                  "set a key a dataset sets.")


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
    equal_flops_tolerance: float = Field(0.02, ge=0, description="Two configs cost the same when their end-to-end "
                                         "executed FFN FLOPs over dense (prompt and generated tokens) differ by "
                                         "at most this.")


class StudyConfig(FrozenModel):
    """One study: what to sweep, on which data, with which shared job settings."""

    study: StudySettings = Field(description="Name, output and statistics of the study.")
    base: dict[str, Any] = Field(default_factory=dict, description="Job config shared by every run (model, "
                                 "generation, pool, control, ...); datasets, budgets and variants override it.")
    variants: list[VariantConfig] = Field(min_length=1, description="Methods and their variants.")
    budgets: list[BudgetConfig] = Field(min_length=1, description="Sparsity budgets.")
    datasets: list[DatasetConfig] = Field(min_length=1, description="Datasets, each with its task.")
    models: list[ModelAxisConfig] = Field(default_factory=list, description="Models, listed smallest first: the "
                                          "report reads the trend with size in this order and runs them in it "
                                          "(empty: the one model of `base` and the datasets, no model axis).")

    @model_validator(mode="after")
    def _names(self) -> "StudyConfig":
        for kind in ("variants", "budgets", "datasets", "models"):
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
        for ds in self.datasets:
            for model in self.models:
                clash = sorted(set(ds.job.get("model") or {}) & set(model.model))
                if clash:
                    raise ValueError(f"model {model.name} and dataset {ds.name} both set model.{clash[0]}: "
                                     "set it in one place")
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
    model: str | None = None    # the models axis's name; None in a study without one

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
    """Every (model x dataset x variant x budget) as a validated JobConfig, in a fixed order: models
    as listed (the smallest first), so the sweep finishes every cell of one model before the next."""
    runs = []
    for model in study.models or [None]:
        for ds in study.datasets:
            data = merge(study.base, ds.job)
            data = merge(data, {"output": {"dir": str(study.directory.parent / "runs")}})
            if study.study.limit is not None:
                data = merge(data, {"input": {"limit": study.study.limit}})
            if model is not None:
                data = merge(data, {"model": model.model})
            runs += dataset_cells(study, data, ds.name, None if model is None else model.name)
    return runs


def dataset_cells(study: StudyConfig, data: dict[str, Any], dataset: str, model: str | None) -> list[StudyRun]:
    """The variant x budget cells of one dataset (and model) over its merged job data."""
    runs = []
    for variant in study.variants:
        dense = merge(data.get("dart", {}), variant.dart).get("method", "dart") == "dense"
        budgets = [None] if dense else [b for b in study.budgets if variant.budgets is None or b.name in variant.budgets]
        for budget in budgets:
            dart = merge(data.get("dart", {}), {} if budget is None else budget.dart)
            cell = merge(data, {"dart": merge(dart, variant.dart)})
            label = variant.name if budget is None else f"{variant.name}@{budget.name}"
            where = f"dataset {dataset}" + ("" if model is None else f", model {model}")
            try:
                config = parse_config(cell)
            except ValueError as err:
                raise ValueError(f"study config {label} on {where}: {err}") from None
            runs.append(StudyRun(dataset, variant.name, None if budget is None else budget.name, config, model))
    return runs


def load_study(path: str | Path, overrides: list[str] = ()) -> StudyConfig:
    """Read a study YAML, apply `key=value` overrides (e.g. study.limit=16), validate every run."""
    data = apply_overrides(read_yaml(path), list(overrides))
    try:
        study = StudyConfig.model_validate(data)
    except ValidationError as err:
        raise ValueError(validation_message("study config", err, StudyConfig)) from None
    expand(study)   # every cell validates before anything runs
    return study

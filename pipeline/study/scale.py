"""The models axis of a study: what pruning costs at each model size, whether that cost falls as the
model grows, and the setting to recommend for each size.

Per dataset and pruned config, each model's quality retained (its mean quality over its own dense
mean on the same items) against its end-to-end executed FFN FLOPs. The trend compares two models on
the items both ran: retained(larger) - retained(smaller), items resampled with all four of their
values (each model's config and dense), so the interval is paired by item. A model's recommended
setting is its cheapest config (executed FLOPs) that retains at least RETAIN_TARGET of its dense
quality by the point estimate; dense when none does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .answer import COST, aligned, item_values, put_estimate
from .plots import MARKERS, SPARE_COLORS, error_bars, pyplot
from .results import panel_name, quality_metrics
from .stats import EMPTY, Estimate, paired_difference, paired_ratio_difference

RETAIN_TARGET = 0.9     # the share of its own dense quality a recommended setting keeps


def model_order(study, summary: pd.DataFrame) -> list[str]:
    """The axis's models in the study's order (smallest first) that have rows."""
    present = set(summary["model_name"])
    return [m.name for m in study.models if m.name in present]


def pruned_configs(summary: pd.DataFrame, dataset: str, baseline: str) -> list[str]:
    """The configs of a dataset other than the baseline, in sweep order."""
    rows = summary[(summary["dataset"] == dataset) & (summary["variant"] != baseline)]
    return list(dict.fromkeys(rows["config"]))


def trend(results: pd.DataFrame, dataset: str, config: str, small: str, large: str, baseline: str,
          boot: dict[str, Any]) -> dict[str, Estimate]:
    """large - small on the items both models ran in config and in the baseline: quality retained
    (a difference of ratios of sums) and agreement with the model's own baseline output."""
    panels = [panel_name(dataset, m) for m in (large, small)]
    quality = aligned(*[item_values(results, p, c, "quality") for p in panels for c in (config, baseline)])
    agree = aligned(*[item_values(results, p, config, "dense_rouge_l") for p in panels])
    return {"retained": paired_ratio_difference(*quality, **boot) if len(quality[0]) else EMPTY,
            "agreement": paired_difference(*agree, **boot) if len(agree[0]) else EMPTY}


def model_pairs(models: list[str]) -> list[tuple[str, str]]:
    """Each model against the next larger one, and the smallest against the largest when they differ."""
    pairs = list(zip(models, models[1:]))
    return pairs + ([(models[0], models[-1])] if len(models) > 2 else [])


def trend_frame(results: pd.DataFrame, summary: pd.DataFrame, study, boot: dict[str, Any]) -> pd.DataFrame:
    """One row per (dataset, pruned config, model pair): retained and agreement, larger - smaller."""
    models, rows = model_order(study, summary), []
    for dataset in dict.fromkeys(summary["dataset"]):
        for config in pruned_configs(summary, dataset, study.study.baseline):
            for small, large in model_pairs(models):
                diffs = trend(results, dataset, config, small, large, study.study.baseline, boot)
                row = {"dataset": dataset, "config": config, "smaller": small, "larger": large,
                       "paired_items": diffs["retained"].n}
                put_estimate(row, "retained_diff", diffs["retained"])
                put_estimate(row, "agreement_diff", diffs["agreement"])
                rows.append(row)
    return pd.DataFrame(rows)


def recommended(in_panel: pd.DataFrame, baseline: str) -> pd.Series:
    """The cheapest config retaining at least RETAIN_TARGET of the baseline's quality; the baseline if none."""
    fine = in_panel[(in_panel["variant"] != baseline) & (in_panel["retained"] >= RETAIN_TARGET)]
    if len(fine):
        return fine.sort_values(COST).iloc[0]
    return in_panel[in_panel["variant"] == baseline].iloc[0]


def _est(row: pd.Series, name: str, n: str = "ok_items") -> Estimate:
    if pd.isna(row.get(name, np.nan)):
        return EMPTY
    return Estimate(float(row[name]), float(row[f"{name}_low"]), float(row[f"{name}_high"]), int(row[n]))


def direction(diff: Estimate, small: str, large: str) -> str:
    """Whether the cost of pruning falls from small to large, read from the retained difference."""
    if diff.n == 0:
        return f"{small} and {large} share no scored item"
    shown = f"{large} - {small} retained {diff.format('{:+.3f}')} of dense, {diff.n} items"
    if diff.low > 0:
        return f"falls from {small} to {large} ({shown})"
    if diff.high < 0:
        return f"rises from {small} to {large} ({shown})"
    return f"not shown to change from {small} to {large} ({shown}, includes 0)"


def dataset_lines(summary: pd.DataFrame, trends: pd.DataFrame, dataset: str, study) -> list[str]:
    """The plain answer of one dataset across the models."""
    baseline, models = study.study.baseline, model_order(study, summary)
    in_ds = summary[summary["dataset"] == dataset]
    metric = quality_metrics(in_ds["task"].iloc[0])[0][1]
    lines = [f"**{dataset}** (quality = {metric}; cost = executed FFN FLOPs over prompt and generated tokens, "
             "as a fraction of dense; retained = the config's quality over the same model's dense quality):"]
    for model in models:
        here = in_ds[in_ds["model_name"] == model]
        if here.empty:
            continue
        base = here[here["variant"] == baseline]
        head = f"{baseline} {metric} {_est(base.iloc[0], 'quality').format('{:.4f}')}" if len(base) else f"no {baseline} rows"
        points = [f"{r['config']} retains {_est(r, 'retained').format('{:.1%}')} at {_est(r, COST).format()}"
                  for _, r in here[here["variant"] != baseline].iterrows()]
        lines.append(f"- {model} ({int(here['items'].max())} items): {head}" + "".join(f"; {p}" for p in points) + ".")
    for config in pruned_configs(summary, dataset, baseline):
        rows = trends[(trends["dataset"] == dataset) & (trends["config"] == config)] if len(trends) else trends
        said = [direction(_est(r, "retained_diff", "paired_items"), r["smaller"], r["larger"])
                for _, r in rows.iterrows() if r["paired_items"] > 0]
        lines.append(f"- Cost of pruning with size, {config}: " + ("; ".join(said) if said else
                     "not measured yet (no two models share a scored item of it)") + ".")
    for model in models:
        here = in_ds[in_ds["model_name"] == model].dropna(subset=[COST])
        if (here["variant"] == baseline).all():
            lines.append(f"- Recommended for {model}: not measured yet (no pruned config has rows).")
            continue
        pick = recommended(here, baseline)
        why = (f"the cheapest config keeping at least {RETAIN_TARGET:.0%} of dense {metric}: retains "
               f"{_est(pick, 'retained').format('{:.1%}')} at {pick[COST]:.3f} of dense FFN FLOPs"
               if pick["variant"] != baseline else
               f"no pruned config keeps {RETAIN_TARGET:.0%} of dense {metric} (best: "
               + best_pruned(here, baseline) + ")")
        lines.append(f"- Recommended for {model}: **{pick['config']}**, {why}.")
    return lines + [""]


def best_pruned(in_panel: pd.DataFrame, baseline: str) -> str:
    pruned = in_panel[in_panel["variant"] != baseline].dropna(subset=["retained"])
    if pruned.empty:
        return "none scored"
    top = pruned.sort_values("retained", ascending=False).iloc[0]
    return f"{top['config']}, {top['retained']:.1%} at {top[COST]:.3f} of dense FFN FLOPs"


def coverage_rows(summary: pd.DataFrame, study) -> list[list[str]]:
    """Rows done per model, dataset and config against the study's limit: complete or partial. Error rows
    (an item that failed every attempt, rerun by control.retry_failed=true) are counted apart."""
    limit = study.study.limit
    rows = []
    for _, r in summary.iterrows():
        state = "-" if limit is None else ("complete" if r["ok_items"] >= limit else "partial")
        errors = f" (+{r['error_items']} error rows)" if r["error_items"] else ""
        rows.append([r["model_name"], r["dataset"], r["config"],
                     f"{r['ok_items']}" + (f" / {limit}" if limit else "") + errors, state])
    return rows


def coverage_heading(cells: list[list[str]]) -> str:
    """What the rows-per-cell table says: every cell complete, or how many are partial and what that means."""
    partial = sum(cell[-1] == "partial" for cell in cells)
    if not partial:
        return "Rows per cell:"
    return (f"Rows per cell ({partial} of {len(cells)} partial: a partial cell's run has not finished every item; "
            "its figures cover the rows done, paired with the baseline's rows of the same items):")


def scale_lines(summary: pd.DataFrame, trends: pd.DataFrame, study) -> list[str]:
    """The report's section across model size: the plain answer per dataset (the rows per cell follow it)."""
    lines = ["## Across model size: what pruning costs as the model grows", "",
             f"Models, smallest first: {', '.join(model_order(study, summary))}. A trend is *larger - smaller* "
             "quality retained on the items both ran, items resampled in pairs (each with both models' config and "
             f"dense values); \"falls\" means the interval lies above 0. Recommended: the cheapest config (executed "
             f"FFN FLOPs) retaining at least {RETAIN_TARGET:.0%} of the same model's dense quality by its point "
             "estimate.", ""]
    for dataset in dict.fromkeys(summary["dataset"]):
        lines += dataset_lines(summary, trends, dataset, study)
    return lines


def plot_scale(summary: pd.DataFrame, dataset: str, models: list[str], path: Path, confidence: float,
               baseline: str) -> None:
    """Quality retained against end-to-end FFN FLOPs, one color per model; and retained by model size."""
    plt = pyplot()
    data = summary[(summary["dataset"] == dataset) & (summary["variant"] != baseline)].dropna(subset=[COST, "retained"])
    configs = list(dict.fromkeys(data["config"]))
    marker = {c: MARKERS[k % len(MARKERS)] for k, c in enumerate(configs)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    for k, model in enumerate(models):
        color, here = SPARE_COLORS[k % len(SPARE_COLORS)], data[data["model_name"] == model]
        for _, rows in here.groupby("variant", sort=False):   # each variant's configs through dense at (1, 1)
            line = rows.sort_values(COST)
            left.plot([*line[COST], 1.0], [*line["retained"], 1.0], color=color, lw=0.9, alpha=0.6)
        for _, row in here.iterrows():
            left.errorbar([row[COST]], [row["retained"]], xerr=error_bars(row, COST), yerr=error_bars(row, "retained"),
                          fmt=marker[row["config"]], color=color, ms=8, capsize=3, label=f"{model} {row['config']}")
    left.scatter([1.0], [1.0], color="black", marker="*", s=120, label=f"{baseline} (every model)")
    left.set(xlabel="FFN FLOPs executed / dense, prompt + generated tokens", ylabel=f"retained: quality / {baseline}",
             title="quality retained against end-to-end FFN compute")
    for config in configs:
        rows = data[data["config"] == config].set_index("model_name").reindex(models).dropna(subset=["retained"])
        x = [models.index(m) for m in rows.index]
        if len(rows):
            bars = np.hstack([error_bars(r, "retained") for _, r in rows.iterrows()])    # [2, models]
            right.errorbar(x, rows["retained"], yerr=bars, fmt=f"{marker[config]}-", ms=8, capsize=3, label=config)
    right.axhline(RETAIN_TARGET, color="gray", ls=":", lw=1, label=f"{RETAIN_TARGET:.0%} (recommendation)")
    right.set_xticks(range(len(models)), models)
    right.set(xlabel="model, smallest first", ylabel=f"retained: quality / {baseline}",
              title="quality retained by model size (higher: pruning costs less)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{dataset}: what pruning costs at each model size ({confidence:.0%} bootstrap CIs; retained "
                 "paired by item with the same model's dense run)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_scale(results: pd.DataFrame, summary: pd.DataFrame, study, root: Path,
                boot: dict[str, Any]) -> tuple[list[str], list[Path]]:
    """scale.csv (the trends) and scale_<dataset>.png in root; returns the report's lines and the plots."""
    trends = trend_frame(results, summary, study, boot)
    trends.to_csv(root / "scale.csv", index=False)
    models, plots = model_order(study, summary), []
    for dataset in dict.fromkeys(summary["dataset"]):
        plots.append(root / f"scale_{dataset}.png")
        plot_scale(summary, dataset, models, plots[-1], study.study.confidence, study.study.baseline)
    return scale_lines(summary, trends, study), plots

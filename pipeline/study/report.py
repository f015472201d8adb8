"""The study report: per-config table with bootstrap CIs, paired comparisons, written findings, plots.

Every number is read from per-item results (pipeline.study.results): quality from the task's
metrics, cost from telemetry, never from the configured budget. The main axis is the end-to-end
cost, executed FFN FLOPs over prompt and generated tokens against dense (pipeline.study.answer);
the sparsity applied per generated token is the second view.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..run import write_atomic_bytes
from .answer import answer_lines, cost_frame, paired_flops
from .config import StudyConfig
from .plots import plot_all
from .results import quality_metrics
from .scale import coverage_heading, coverage_rows, write_scale
from .stats import EMPTY, Estimate, bootstrap_mean, bootstrap_ratio, paired_difference

# Columns every task has beside its quality metrics: (column, title, lower is better).
AGREEMENT = [("dense_rouge_l", "agreement with dense (ROUGE-L)"), ("dense_word_match", "word match with dense"),
             ("dense_exact", "identical to dense"), ("reference_nll", "reference NLL / token")]


def _boot(study: StudyConfig) -> dict[str, Any]:
    s = study.study
    return {"samples": s.bootstrap_samples, "seed": s.seed, "confidence": s.confidence}


def _put(row: dict[str, Any], name: str, est: Estimate) -> None:
    row[name], row[f"{name}_low"], row[f"{name}_high"] = est.value, est.low, est.high


def _est(row: pd.Series, name: str) -> Estimate:
    value = row.get(name, np.nan)
    if value is None or pd.isna(value):
        return EMPTY
    return Estimate(float(value), float(row[f"{name}_low"]), float(row[f"{name}_high"]), int(row["ok_items"]))


def _ok(group: pd.DataFrame) -> pd.DataFrame:
    return group[group["status"] == "ok"]


def _paired(a: pd.DataFrame, b: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Values of `column` of the same items (by id) in a and b; items missing on either side dropped."""
    both = a[["id", column]].merge(b[["id", column]], on="id", suffixes=("_a", "_b")).dropna()
    return both[f"{column}_a"].to_numpy(float), both[f"{column}_b"].to_numpy(float)


def summary_frame(results: pd.DataFrame, study: StudyConfig) -> pd.DataFrame:
    """One row per (panel, config), in sweep order: counts, estimates with CIs, costs."""
    boot, rows = _boot(study), []
    for (panel, config), group in results.groupby(["panel", "config"], sort=False):
        ok, first = _ok(group), group.iloc[0]
        base = _ok(results[(results["panel"] == panel) & (results["variant"] == study.study.baseline)])
        row = {key: first[key] for key in ("panel", "model_name", "dataset", "config", "task", "variant", "budget", "method",
                                            "budget_kind", "prefill_mode", "target_sparsity")}
        row.update(items=len(group), ok_items=len(ok), error_items=len(group) - len(ok))
        _put(row, "executed_flops_ratio", bootstrap_ratio(ok["ffn_flops_executed"], ok["ffn_flops_dense"], **boot))
        tokens, prompt = ok["generated_tokens"].astype(float), ok["prompt_tokens"].astype(float)
        _put(row, "applied_sparsity", bootstrap_ratio(ok["applied_sparsity"] * tokens, tokens, **boot))
        _put(row, "prompt_applied_sparsity", bootstrap_ratio(ok["prompt_applied_sparsity"] * prompt, prompt, **boot))
        row["prefill_blocks_per_item"] = ok["prefill_blocks"].mean()
        for column, _ in quality_metrics(first["task"]) + AGREEMENT:
            values = ok[column] if column in ok else pd.Series(dtype=float)
            _put(row, column, bootstrap_mean(pd.to_numeric(values, errors="coerce"), **boot))
        _put(row, "quality", bootstrap_mean(ok["quality"], **boot))
        _put(row, "retained", bootstrap_ratio(*_paired(ok, base, "quality"), **boot) if len(base) else EMPTY)
        _put(row, "tokens_per_second", bootstrap_mean(ok["tokens_per_second"], **boot))
        row["drift_events_per_item"] = ok["drift_events"].mean()
        row["items_with_drift"] = (ok["drift_events"] > 0).mean()
        row["generated_tokens_per_item"] = tokens.mean()
        dense_flops = ok["ffn_flops_dense"].sum()
        row["kept_flops_ratio"] = ok["ffn_flops_kept"].sum() / dense_flops if dense_flops else np.nan
        row["state_bytes_mean"] = ok["dart_state_bytes"].mean()
        row["state_bytes_max"] = ok["dart_state_bytes"].max()
        rows.append(row)
    return pd.DataFrame(rows)


def verdict(a: str, b: str, metric: str, diff: Estimate, sparsity_a: float, sparsity_b: float,
            tolerance: float) -> str:
    """One plain sentence: does a beat b on metric at equal applied sparsity?"""
    gap = sparsity_a - sparsity_b
    if diff.n == 0:
        return f"{a} vs {b}: no paired items."
    if abs(gap) <= tolerance:
        where = f"at equal applied sparsity ({sparsity_a:.3f} vs {sparsity_b:.3f})"
        if diff.low > 0:
            return f"{a} beats {b} {where}: {metric} {diff.value:+.4f}, CI above 0."
        if diff.high < 0:
            return f"{a} does not beat {b} {where}: it is worse, {metric} {diff.value:+.4f}, CI below 0."
        return (f"{a} does not beat {b} {where}: {metric} difference {diff.value:+.4f} "
                f"[{diff.low:+.4f}, {diff.high:+.4f}] includes 0.")
    side = "less" if gap < 0 else "more"
    head = f"{a} applies {side} sparsity than {b} ({sparsity_a:.3f} vs {sparsity_b:.3f}, not equal within {tolerance})"
    if gap > 0 and diff.low >= 0:
        return f"{head} and is at least as good ({metric} {diff.value:+.4f}, CI low {diff.low:+.4f}): {a} beats {b}."
    if gap < 0 and diff.high <= 0:
        return f"{head} and is no better ({metric} {diff.value:+.4f}): {a} does not beat {b}."
    return (f"{head}; {metric} difference {diff.value:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}]: "
            f"not a comparison at equal sparsity, so it does not show that {a} beats {b}.")


def comparisons_frame(results: pd.DataFrame, summary: pd.DataFrame, study: StudyConfig) -> pd.DataFrame:
    """Paired differences a - b (same items) at each budget both variants ran."""
    boot, rows = _boot(study), []
    for panel in summary["panel"].unique():
        in_ds = summary[summary["panel"] == panel]
        task = in_ds["task"].iloc[0]
        metric = quality_metrics(task)[0][1]
        for a, b in study.study.compare:
            for budget in in_ds.loc[in_ds["variant"] == a, "budget"]:
                sa = in_ds[(in_ds["variant"] == a) & (in_ds["budget"] == budget)]
                sb = in_ds[(in_ds["variant"] == b) & (in_ds["budget"] == budget)]
                if sb.empty:
                    continue
                pick = lambda v: _ok(results[(results["panel"] == panel) & (results["variant"] == v)  # noqa: E731
                                             & (results["budget"] == budget)])
                ra, rb = pick(a), pick(b)
                diff = paired_difference(*_paired(ra, rb, "quality"), **boot)
                agree = paired_difference(*_paired(ra, rb, "dense_rouge_l"), **boot)
                s_a, s_b = float(sa["applied_sparsity"].iloc[0]), float(sb["applied_sparsity"].iloc[0])
                row = {"panel": panel, "a": f"{a}@{budget}", "b": f"{b}@{budget}", "metric": metric,
                       "paired_items": diff.n, "executed_flops_a": float(sa["executed_flops_ratio"].iloc[0]),
                       "executed_flops_b": float(sb["executed_flops_ratio"].iloc[0]),
                       "applied_sparsity_a": s_a, "applied_sparsity_b": s_b,
                       "equal_sparsity": abs(s_a - s_b) <= study.study.equal_sparsity_tolerance,
                       "verdict": verdict(f"{a}@{budget}", f"{b}@{budget}", metric, diff, s_a, s_b,
                                          study.study.equal_sparsity_tolerance)}
                _put(row, "quality_diff", diff)
                _put(row, "agreement_diff", agree)
                _put(row, "flops_diff", paired_flops(results, panel, f"{a}@{budget}", f"{b}@{budget}", boot))
                rows.append(row)
    return pd.DataFrame(rows)


def findings(summary: pd.DataFrame, comparisons: pd.DataFrame, study: StudyConfig) -> list[str]:
    """Plain-language lines per panel: quality retained at its end-to-end cost and applied sparsity, then
    the verdicts at equal applied sparsity."""
    lines = []
    for panel in summary["panel"].unique():
        in_ds = summary[summary["panel"] == panel]
        metric = quality_metrics(in_ds["task"].iloc[0])[0][1]
        lines.append(f"**{panel}** ({int(in_ds['items'].max())} items, quality = {metric}):")
        for _, row in in_ds.iterrows():
            if row["variant"] == study.study.baseline:
                lines.append(f"- {row['config']} (baseline): {metric} {_est(row, 'quality').format()} at "
                             f"{row['executed_flops_ratio']:.3f} of dense FFN FLOPs, applied sparsity "
                             f"{row['applied_sparsity']:.3f}.")
                continue
            lines.append(
                f"- {row['config']}: retains {_est(row, 'retained').format('{:.1%}')} of {study.study.baseline} "
                f"{metric} ({row['quality']:.4f}) at {_est(row, 'executed_flops_ratio').format()} of dense FFN "
                f"FLOPs end to end ({row['prefill_mode']} prefill, prompt sparsity {row['prompt_applied_sparsity']:.3f}), "
                f"applied FFN sparsity {row['applied_sparsity']:.3f} per generated token "
                f"(target {row['target_sparsity']:.2f}); output agreement with {study.study.baseline} "
                f"(ROUGE-L) {row['dense_rouge_l']:.3f}; {row['drift_events_per_item']:.2f} drift events per item.")
        for _, row in comparisons[comparisons["panel"] == panel].iterrows() if len(comparisons) else []:
            lines.append(f"- **Verdict:** {row['verdict']}")
        lines.append("")
    return lines


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _f(value: Any, fmt: str = "{:.3f}") -> str:
    return "-" if value is None or pd.isna(value) else fmt.format(value)


def panel_title(frame: pd.DataFrame) -> str:
    """The tables' first header: a panel is a dataset, or `<dataset>_<model>` in a study with a models axis."""
    return "dataset" if "model_name" not in frame or (frame["model_name"] == "-").all() else "dataset_model"


def results_table(summary: pd.DataFrame) -> str:
    """The main table: one line per config."""
    headers = [panel_title(summary), "config", "items (errors)", "executed FFN FLOPs vs dense [95% CI]", "quality [CI]",
               "retained vs dense [CI]", "agreement w/ dense ROUGE-L [CI]", "target sparsity",
               "applied sparsity, generated [CI]", "prompt sparsity", "prefill blocks/item", "ref. NLL/token [CI]",
               "drift events/item", "tokens/s/seq", "kept FLOPs", "state KiB"]
    rows = []
    for _, r in summary.iterrows():
        rows.append([r["panel"], r["config"], f"{r['items']} ({r['error_items']})",
                     _est(r, "executed_flops_ratio").format(), _est(r, "quality").format("{:.4f}"),
                     _est(r, "retained").format("{:.1%}"), _est(r, "dense_rouge_l").format(),
                     _f(r["target_sparsity"], "{:.2f}"), _est(r, "applied_sparsity").format(),
                     _f(r["prompt_applied_sparsity"]), _f(r["prefill_blocks_per_item"], "{:.1f}"),
                     _est(r, "reference_nll").format(), _f(r["drift_events_per_item"], "{:.2f}"),
                     _f(r["tokens_per_second"], "{:.1f}"), _f(r["kept_flops_ratio"]),
                     _f(r["state_bytes_mean"] / 1024, "{:.1f}")])
    return markdown_table(headers, rows)


def metrics_table(summary: pd.DataFrame) -> str:
    """Every quality metric of each config (means with CIs)."""
    rows = []
    for _, r in summary.iterrows():
        cells = [f"{title} {_est(r, column).format()}" for column, title in quality_metrics(r["task"]) + AGREEMENT
                 if not pd.isna(r.get(column, np.nan))]
        rows.append([r["panel"], r["config"], "; ".join(cells)])
    return markdown_table([panel_title(summary), "config", "metrics (mean [CI])"], rows)


def comparisons_table(comparisons: pd.DataFrame, title: str = "dataset") -> str:
    if comparisons.empty:
        return "No paired comparison applies (study.compare names no pair that ran at a common budget)."
    rows = [[r["panel"], f"{r['a']} - {r['b']}", str(r["paired_items"]),
             f"{r['executed_flops_a']:.3f} / {r['executed_flops_b']:.3f}",
             _est(r.rename({"paired_items": "ok_items"}), "flops_diff").format("{:+.3f}"),
             f"{r['applied_sparsity_a']:.3f} / {r['applied_sparsity_b']:.3f}", "yes" if r["equal_sparsity"] else "no",
             _est(r.rename({"paired_items": "ok_items"}), "quality_diff").format("{:+.4f}"),
             _est(r.rename({"paired_items": "ok_items"}), "agreement_diff").format("{:+.4f}")]
            for _, r in comparisons.iterrows()]
    return markdown_table([title, "a - b", "paired items", "executed FLOPs a / b", "FLOPs diff [CI]",
                           "applied sparsity a / b", "equal sparsity (tol.)", "quality diff [CI]",
                           "agreement diff [CI]"], rows)


def scope(results: pd.DataFrame, summary: pd.DataFrame, study: StudyConfig) -> str:
    """The report's first line: which models and datasets, how many configs and items."""
    s = study.study
    if study.models:
        sources = results.drop_duplicates("model_name").set_index("model_name")["model"]
        model = "Models " + ", ".join(f"{m} (`{sources[m]}`)" for m in sources.index)
    else:
        model = f"Model `{results['model'].dropna().iloc[0] if results['model'].notna().any() else '?'}`"
    return (f"{model}; datasets {', '.join(summary['dataset'].unique())}; {len(summary)} configs; "
            f"{int(summary['items'].max())} items per config at most. Intervals: {s.confidence:.0%} percentile "
            f"bootstrap over items ({s.bootstrap_samples} resamples, seed {s.seed}); differences are paired by item.")


def markdown_report(results: pd.DataFrame, summary: pd.DataFrame, comparisons: pd.DataFrame, answer: list[str],
                    lines: list[str], plots: list[Path], study: StudyConfig, across: list[str] = ()) -> str:
    s = study.study
    cells = coverage_rows(summary, study)
    coverage = [coverage_heading(cells), "",
                markdown_table(["model", "dataset", "config", "rows done", "state"], cells), ""]
    parts = [
        f"# Study `{s.name}`", "", scope(results, summary, study), "", *across, *(coverage if study.models else []),
        "## Plain answer: quality against end-to-end FFN FLOPs", "", *answer,
        "## Findings", "", *lines,
        "## Results", "", results_table(summary), "",
        "## All quality metrics", "", metrics_table(summary), "",
        "## Paired comparisons (same items)", "", comparisons_table(comparisons, panel_title(summary)), "",
        "## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], "",
        "## How to read this", "",
        "- *Executed FFN FLOPs vs dense* (the cost, the main axis): FFN FLOPs computed over the prompt and the "
        "generated tokens, summed over items, over those of a dense run of the same tokens; with the prompt run "
        "dense it stays near 1 whatever the decode sparsity. Its interval resamples items like the quality's.",
        f"- *Equal cost* means within {s.equal_flops_tolerance} of dense FLOPs. *Interpolated*: a variant's quality "
        f"at another config's cost, linear in cost between the variant's two configs around it ({s.baseline} "
        "counting as every variant at cost 1), weights from the cost point estimates, items paired; an estimate "
        "between measured points, not a measurement.",
        "- *Applied sparsity*: the FFN sparsity actually applied to produce each generated token, from the "
        "engine's telemetry, token-weighted over all generated tokens. Dense calibration forwards (the prefill, "
        "and the first forward of each new epoch after a drift event) count as 0. *Target*: the configured budget.",
        f"- *Retained*: the config's mean quality over the {s.baseline} mean on the same items.",
        f"- *Agreement with dense*: ROUGE-L of each output against the {s.baseline} output of the same item.",
        "- *Reference NLL*: teacher-forced mean negative log-likelihood per reference token after the prompt, "
        "under the masks formed from the prompt (no drift inside the reference, so static and DART at one budget "
        "score the same); lower is better.",
        "- *kept FLOPs*: FFN FLOPs of kept neurons over dense (prompt and generated tokens); executed FLOPs differ "
        "because masked forwards compute every neuron and only the gathered paths (compact, union, rowwise prompt "
        "blocks) save. *Prompt sparsity*: FFN sparsity applied to prompt tokens (0 with a dense prefill).",
        "- *tokens/s/seq*: generated tokens over the sequence's prefill + decode time inside its batch; machines "
        "shared with other work make it noisy.",
        f"- Equal applied sparsity means within {s.equal_sparsity_tolerance}.",
        "- Why applied, not configured: the published DART code runs all but its last FFN layer dense after its "
        "first drift event (DART_SPEC.md, defects 2-3), so its configured 50% can mean about 15% applied. This "
        "engine re-masks every layer after a drift event; the applied sparsity shows what each run really did.", ""]
    return "\n".join(parts)


def write_report(results: pd.DataFrame, study: StudyConfig, root: Path) -> dict[str, Any]:
    """summary.csv, comparisons.csv, equal_cost.csv, the PNG plots and report.md in root; returns their paths."""
    summary = summary_frame(results, study)
    comparisons = comparisons_frame(results, summary, study)
    costs = cost_frame(results, summary, study, _boot(study))
    summary.to_csv(root / "summary.csv", index=False)
    comparisons.to_csv(root / "comparisons.csv", index=False)
    costs.to_csv(root / "equal_cost.csv", index=False)
    plots = plot_all(results, summary, study, root)
    across, scale_plots = write_scale(results, summary, study, root, _boot(study)) if study.models else ([], [])
    answer = answer_lines(summary, comparisons, costs, study)
    text = markdown_report(results, summary, comparisons, answer, findings(summary, comparisons, study),
                           scale_plots + plots, study, across)
    write_atomic_bytes(root / "report.md", text.encode())
    return {"report": str(root / "report.md"), "summary_csv": str(root / "summary.csv"),
            "plots": [str(p) for p in plots], "summary": summary, "comparisons": comparisons, "costs": costs}

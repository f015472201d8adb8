"""The plain answer of a study on cost: quality against end-to-end executed FFN FLOPs.

Each panel (a dataset; in a study with a models axis, one model's dataset) is answered on its own.
The cost of a config is `executed_flops_ratio` summed over its items: FFN FLOPs executed over the
prompt and the generated tokens against a dense run of the same tokens (pipeline.study.results).
Two questions, each answered from the per-item results with paired bootstrap intervals:

* At equal cost, which config gives better quality? Configs whose costs differ by at most
  `study.equal_flops_tolerance` are compared item by item. Where a variant runs at no cost near a
  config's, its quality there is interpolated linearly in cost between its two configs around that
  cost, the baseline counting as every variant at full cost (a keep ratio of 1 computes what dense
  computes); the interpolation weights are taken from the cost point estimates. Agreement with the
  baseline is not interpolated towards the baseline itself: it is 1 there by definition and falls
  steeply with the first changed token, so a straight line would overstate it.
* What does a change of method save, and what does it cost in quality? Every `study.compare` pair
  at a budget both ran: FLOPs saved as a fraction of dense against the quality change; and, across
  budgets, each config against the cheapest config of another variant whose quality is not shown
  worse (its paired difference's interval reaches 0 or above).
"""
from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from .results import quality_metrics
from .stats import EMPTY, Estimate, paired_difference, paired_ratio_difference

COST = "executed_flops_ratio"        # the summary's end-to-end cost column (ratio of sums over items)


def item_values(results: pd.DataFrame, panel: str, config: str, column: str) -> pd.Series:
    """One config's `column` on one panel, ok items only, indexed by item id."""
    rows = results[(results["panel"] == panel) & (results["config"] == config) & (results["status"] == "ok")]
    return pd.to_numeric(rows.set_index("id")[column], errors="coerce")


def aligned(*series: pd.Series) -> list[np.ndarray]:
    """The values of the items every series has (none missing), in one item order."""
    frame = pd.concat(series, axis=1, join="inner").dropna()
    return [frame.iloc[:, k].to_numpy(float) for k in range(len(series))]


def put_estimate(row: dict[str, Any], name: str, est: Estimate) -> None:
    row[name], row[f"{name}_low"], row[f"{name}_high"] = est.value, est.low, est.high


def paired_flops(results: pd.DataFrame, panel: str, a: str, b: str, boot: dict[str, Any]) -> Estimate:
    """Cost of config a minus cost of config b (fractions of dense), items resampled in pairs."""
    columns = [item_values(results, panel, c, k) for c in (a, b) for k in ("ffn_flops_executed", "ffn_flops_dense")]
    return paired_ratio_difference(*aligned(*columns), **boot)


def _quality_diffs(results: pd.DataFrame, panel: str, a: str, b: list[tuple[str, float]],
                   boot: dict[str, Any]) -> dict[str, Estimate]:
    """a - (weighted sum of b's configs), per item, for the primary quality and agreement with baseline."""
    out = {}
    for column in ("quality", "dense_rouge_l"):
        values = aligned(item_values(results, panel, a, column), *[item_values(results, panel, c, column) for c, _ in b])
        other = sum(w * v for (_, w), v in zip(b, values[1:]))
        out[column] = paired_difference(values[0], other, **boot) if len(values[0]) else EMPTY
    return out


def _cost_row(panel: str, kind: str, a: pd.Series, b: str, flops_b: float, diffs: dict[str, Estimate],
              metric: str, between: str = "") -> dict[str, Any]:
    row = {"panel": panel, "kind": kind, "a": a["config"], "b": b, "between": between, "metric": metric,
           "flops_a": a[COST], "flops_b": flops_b, "paired_items": diffs["quality"].n}
    put_estimate(row, "quality_diff", diffs["quality"])
    put_estimate(row, "agreement_diff", diffs["dense_rouge_l"])
    return row


def equal_cost_rows(results: pd.DataFrame, in_ds: pd.DataFrame, study, boot: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pair of configs whose costs are equal within the tolerance; a is the better one by its mean."""
    panel, metric = in_ds["panel"].iloc[0], quality_metrics(in_ds["task"].iloc[0])[0][1]
    rows = []
    for (_, x), (_, y) in combinations(in_ds.iterrows(), 2):
        if pd.isna(x[COST]) or pd.isna(y[COST]) or abs(x[COST] - y[COST]) > study.study.equal_flops_tolerance:
            continue
        a, b = (x, y) if x["quality"] >= y["quality"] else (y, x)
        row = _cost_row(panel, "equal", a, b["config"], b[COST],
                        _quality_diffs(results, panel, a["config"], [(b["config"], 1.0)], boot), metric)
        put_estimate(row, "flops_diff", paired_flops(results, panel, a["config"], b["config"], boot))
        rows.append(row)
    return rows


def curve(in_ds: pd.DataFrame, variant: str, baseline: str) -> pd.DataFrame:
    """A variant's configs and the baseline (the variant at full cost), by cost."""
    points = in_ds[(in_ds["variant"] == variant) | (in_ds["variant"] == baseline)].dropna(subset=[COST, "quality"])
    return points.sort_values(COST)


def bracket(points: pd.DataFrame, cost: float) -> list[tuple[str, float]] | None:
    """The two configs of a curve around `cost` with their linear weights; None outside its range."""
    costs = points[COST].to_numpy(float)
    if len(costs) < 2 or not costs[0] < cost < costs[-1]:
        return None
    hi = int(np.searchsorted(costs, cost))
    lo = hi - 1
    w = (costs[hi] - cost) / (costs[hi] - costs[lo])
    return [(points["config"].iloc[lo], float(w)), (points["config"].iloc[hi], float(1.0 - w))]


def interpolated_rows(results: pd.DataFrame, in_ds: pd.DataFrame, study, boot: dict[str, Any]) -> list[dict[str, Any]]:
    """Each config against every other variant's curve at the config's own cost, where that variant has
    no config at equal cost but runs on both sides of it."""
    panel, metric = in_ds["panel"].iloc[0], quality_metrics(in_ds["task"].iloc[0])[0][1]
    baseline, tolerance, rows = study.study.baseline, study.study.equal_flops_tolerance, []
    for _, a in in_ds[in_ds["variant"] != baseline].iterrows():
        for variant in dict.fromkeys(in_ds["variant"]):
            if variant in (a["variant"], baseline) or pd.isna(a[COST]):
                continue
            points = curve(in_ds, variant, baseline)
            near = points[(points[COST] - a[COST]).abs() <= tolerance]
            weights = bracket(points, float(a[COST]))
            if weights is None or not near.empty:
                continue
            between = " and ".join(f"{c} at {points.set_index('config').loc[c, COST]:.3f}" for c, _ in weights)
            diffs = _quality_diffs(results, panel, a["config"], weights, boot)
            if baseline in (c for c, _ in weights):   # its agreement with itself is 1: no line to draw through
                diffs["dense_rouge_l"] = EMPTY
            rows.append(_cost_row(panel, "interpolated", a, variant, float(a[COST]), diffs, metric, between))
    return rows


def matched_rows(results: pd.DataFrame, in_ds: pd.DataFrame, study, boot: dict[str, Any]) -> list[dict[str, Any]]:
    """Each config b against the cheapest config a of another variant (the baseline aside) that costs
    less by more than the tolerance and whose quality is not shown worse than b's."""
    panel, metric = in_ds["panel"].iloc[0], quality_metrics(in_ds["task"].iloc[0])[0][1]
    points = in_ds[in_ds["variant"] != study.study.baseline].dropna(subset=[COST, "quality"]).sort_values(COST)
    rows = []
    for _, b in points.iterrows():
        cheaper = points[(points["variant"] != b["variant"]) & (points[COST] < b[COST] - study.study.equal_flops_tolerance)]
        for _, a in cheaper.iterrows():
            diffs = _quality_diffs(results, panel, a["config"], [(b["config"], 1.0)], boot)
            if diffs["quality"].n and diffs["quality"].high >= 0:
                row = _cost_row(panel, "matched", a, b["config"], b[COST], diffs, metric)
                put_estimate(row, "flops_diff", paired_flops(results, panel, a["config"], b["config"], boot))
                rows.append(row)
                break
    return rows


def cost_frame(results: pd.DataFrame, summary: pd.DataFrame, study, boot: dict[str, Any]) -> pd.DataFrame:
    """Quality differences at equal end-to-end cost (measured pairs, then interpolated ones), and the
    cheaper configs of another variant whose quality is not shown worse."""
    rows = []
    for panel in summary["panel"].unique():
        in_ds = summary[summary["panel"] == panel]
        rows += (equal_cost_rows(results, in_ds, study, boot) + interpolated_rows(results, in_ds, study, boot)
                 + matched_rows(results, in_ds, study, boot))
    return pd.DataFrame(rows)


def frontier(in_ds: pd.DataFrame) -> list[str]:
    """Configs no other config beats on both cost (lower) and quality (higher), by point estimates, by cost."""
    points = in_ds.dropna(subset=[COST, "quality"]).sort_values([COST, "quality"], ascending=[True, False])
    best, kept = -np.inf, []
    for _, row in points.iterrows():
        if row["quality"] > best:
            best = row["quality"]
            kept.append(row["config"])
    return kept


def dominated(in_ds: pd.DataFrame) -> dict[str, str]:
    """Each config off the frontier, with the best-quality config that costs no more and scores no less."""
    points = in_ds.dropna(subset=[COST, "quality"])
    on = set(frontier(in_ds))
    out = {}
    for _, row in points[~points["config"].isin(on)].iterrows():
        better_ones = points[(points[COST] <= row[COST]) & (points["quality"] >= row["quality"])
                             & (points["config"] != row["config"])]
        out[row["config"]] = better_ones.sort_values(["quality", COST], ascending=[False, True])["config"].iloc[0]
    return out


# ---- written answer ------------------------------------------------------------------------------
def _interval(est: Estimate) -> str:
    return f"{est.value:+.4f} [{est.low:+.4f}, {est.high:+.4f}]"


def _row_est(row: pd.Series, name: str) -> Estimate:
    if pd.isna(row.get(name, np.nan)):
        return EMPTY
    return Estimate(float(row[name]), float(row[f"{name}_low"]), float(row[f"{name}_high"]), int(row["paired_items"]))


def better(a: str, b: str, metric: str, diff: Estimate) -> str:
    """Which of a and b has the better metric, from the paired difference a - b and its interval."""
    if diff.n == 0:
        return f"no item was scored by both {a} and {b}"
    if diff.low > 0:
        return f"{a} has the better {metric}, by {_interval(diff)}"
    if diff.high < 0:
        return f"{b} has the better {metric}: {a} - {b} = {_interval(diff)}"
    return f"neither has a better {metric} shown: {a} - {b} = {_interval(diff)} includes 0"


def cost_sentence(row: pd.Series, baseline: str) -> str:
    """One plain sentence of a cost_frame row."""
    quality, agree = _row_est(row, "quality_diff"), _row_est(row, "agreement_diff")
    tail = f"; agreement with {baseline} (ROUGE-L) {_interval(agree)}." if agree.n else "."
    if row["kind"] == "equal":
        flops = _row_est(row, "flops_diff")
        return (f"{row['a']} and {row['b']} cost the same ({row['flops_a']:.3f} and {row['flops_b']:.3f} of dense "
                f"FLOPs, difference {_interval(flops)}): {better(row['a'], row['b'], row['metric'], quality)}{tail}")
    return (f"at {row['a']}'s cost ({row['flops_a']:.3f} of dense FLOPs), against {row['b']} interpolated there "
            f"(between {row['between']}): {better(row['a'], row['b'], row['metric'], quality)}{tail}")


def matched_sentence(row: pd.Series, baseline: str) -> str:
    """One plain sentence of a `matched` cost_frame row: a cheaper config at a quality not shown worse."""
    flops, quality, agree = _row_est(row, "flops_diff"), _row_est(row, "quality_diff"), _row_est(row, "agreement_diff")
    tail = f"; agreement with {baseline} (ROUGE-L) {_interval(agree)}." if agree.n else "."
    return (f"{row['a']} ({row['flops_a']:.3f} of dense FFN FLOPs) against {row['b']} ({row['flops_b']:.3f}): saves "
            f"{-flops.value:.3f} [{-flops.high:.3f}, {-flops.low:.3f}] of dense FFN FLOPs, {row['metric']} "
            f"{row['a']} - {row['b']} = {_interval(quality)}{tail}")


def saving_sentence(row: pd.Series, summary: pd.DataFrame, tolerance: float) -> str:
    """What config a saves against config b (a study.compare pair at one budget), and what it costs."""
    by = summary[summary["panel"] == row["panel"]].set_index("config")
    a, b, flops = by.loc[row["a"]], by.loc[row["b"]], _row_est(row, "flops_diff")
    modes = f" ({a['prefill_mode']} prefill against {b['prefill_mode']})" if a["prefill_mode"] != b["prefill_mode"] else ""
    if flops.n == 0:
        return f"{row['a']} against {row['b']}: no paired items."
    if abs(flops.value) <= tolerance:
        spend = f"costs the same as {row['b']} ({a[COST]:.3f} vs {b[COST]:.3f} of dense FFN FLOPs)"
    else:
        saves = flops.value < 0
        size = (-flops.value, -flops.high, -flops.low) if saves else (flops.value, flops.low, flops.high)
        spend = (f"{'saves' if saves else 'spends'} {size[0]:.3f} [{size[1]:.3f}, {size[2]:.3f}] of dense FFN FLOPs "
                 f"against {row['b']} ({a[COST]:.3f} vs {b[COST]:.3f} of dense)")
    quality, agree = _row_est(row, "quality_diff"), _row_est(row, "agreement_diff")
    retained = (f" (retained {a['retained']:.1%} vs {b['retained']:.1%} of the baseline's)"
                if not pd.isna(a.get("retained", np.nan)) and not pd.isna(b.get("retained", np.nan)) else "")
    return (f"{row['a']}{modes} {spend}, for a {row['metric']} change of {_interval(quality)}{retained} and an "
            f"agreement change of {_interval(agree)}.")


def of_kind(costs: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The cost_frame rows of one kind (equal, interpolated, matched); an empty frame has no columns."""
    return costs[costs["kind"] == kind] if len(costs) else costs


def answer_lines(summary: pd.DataFrame, comparisons: pd.DataFrame, costs: pd.DataFrame, study) -> list[str]:
    """The report's plain answer, per panel, written from the frames."""
    s, lines = study.study, []
    for panel in summary["panel"].unique():
        in_ds = summary[summary["panel"] == panel]
        metric = quality_metrics(in_ds["task"].iloc[0])[0][1]
        ranges = [f"{v} {g[COST].min():.3f}" + (f"-{g[COST].max():.3f}" if len(g) > 1 else "")
                  for v, g in in_ds.dropna(subset=[COST]).groupby("variant", sort=False)]
        points = in_ds.set_index("config")
        lines += [f"**{panel}** (quality = {metric}; cost = executed FFN FLOPs over prompt and generated tokens, "
                  "as a fraction of dense):", f"- Cost by variant: {'; '.join(ranges)}.",
                  "- Frontier (no other config is both cheaper and better, by point estimates; cost, quality): "
                  + ", ".join(f"{c} ({points.loc[c, COST]:.3f}, {points.loc[c, 'quality']:.4f})" for c in frontier(in_ds))
                  + ". Off it, each with a config that costs no more and scores no less: "
                  + (", ".join(f"{c} (by {d})" for c, d in dominated(in_ds).items()) or "none") + "."]
        here = costs[costs["panel"] == panel] if len(costs) else costs
        equal = of_kind(here, "equal")
        if len(equal):
            lines += [f"- At equal cost (within {s.equal_flops_tolerance}): {cost_sentence(r, s.baseline)}"
                      for _, r in equal.iterrows()]
        else:
            lines.append(f"- No two configs run at equal end-to-end FLOPs (within {s.equal_flops_tolerance}).")
        interpolated = of_kind(here, "interpolated")
        lines += [f"- Interpolated (an estimate between measured configs): {cost_sentence(r, s.baseline)}"
                  for _, r in interpolated.iterrows()]
        matched = of_kind(here, "matched")
        lines += [f"- Cheaper, quality not shown worse (the cheapest such config of another variant): "
                  f"{matched_sentence(r, s.baseline)}" for _, r in matched.iterrows()]
        if not len(matched):
            lines.append("- No config of one variant is cheaper than a config of another at a quality not shown worse.")
        mine = comparisons[comparisons["panel"] == panel] if len(comparisons) else comparisons
        lines += [f"- At the same budget: {saving_sentence(r, summary, s.equal_flops_tolerance)}"
                  for _, r in mine.iterrows()]
        lines.append("")
    return lines

"""PNG plots of a study (matplotlib, Agg): quality against end-to-end FFN FLOPs (the main view) and
against applied sparsity, drift positions, per-layer keep ratios, cost.

One file per plot and panel (a dataset; in a study with a models axis, one model's dataset,
`<dataset>_<model>`), named `<plot>_<panel>.png`. Every figure says in its title what
it shows, so a reader can follow the result from the plots alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import StudyConfig
from .results import quality_metrics

METHOD_COLORS = {"dense": "black", "static": "tab:blue", "griffin": "tab:green", "dart": "tab:red"}
SPARE_COLORS = ["tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colors(variants: list[str], methods: list[str]) -> dict[str, str]:
    """A variant named like its method gets the method's color; other variants the spare ones in order."""
    out, spare = {}, iter(SPARE_COLORS * 4)
    for variant, method in zip(variants, methods):
        if variant not in out:
            out[variant] = METHOD_COLORS[method] if variant == method else next(spare)
    return out


def _ok_items(results: pd.DataFrame, panel: str, config: str) -> pd.DataFrame:
    """The rows of one config on one panel that finished without error."""
    return results[(results["panel"] == panel) & (results["config"] == config) & (results["status"] == "ok")]


def _style(summary: pd.DataFrame):
    palette = colors(list(summary["variant"]), list(summary["method"]))
    budgets = [b for b in dict.fromkeys(summary["budget"]) if b != "-"]
    markers = {b: MARKERS[i % len(MARKERS)] for i, b in enumerate(budgets)} | {"-": "*"}
    return palette, markers


def error_bars(row: pd.Series, name: str) -> list[list[float]]:
    low, high = row[f"{name}_low"], row[f"{name}_high"]
    if pd.isna(low):
        return [[0.0], [0.0]]
    return [[max(row[name] - low, 0.0)], [max(high - row[name], 0.0)]]


def cost_quality(summary: pd.DataFrame, panel: str, path: Path, confidence: float, baseline: str) -> None:
    """Quality and agreement with the baseline against executed FFN FLOPs over dense (prompt and generated
    tokens), CI bars both ways; each variant's configs joined by cost, through the baseline at full cost."""
    plt = pyplot()
    data = summary[summary["panel"] == panel]
    metric = quality_metrics(data["task"].iloc[0])[0][1]
    panels = [("quality", f"{metric} vs reference (higher is better)"),
              ("dense_rouge_l", f"agreement with {baseline} output, ROUGE-L (higher is better)")]
    palette, markers = _style(data)
    base = data[data["variant"] == baseline]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 5.2), squeeze=False)
    for ax, (column, title) in zip(axes[0], panels):
        for variant, group in data.groupby("variant", sort=False):
            line = pd.concat([group, base]) if variant != baseline else group
            line = line.dropna(subset=["executed_flops_ratio", column]).sort_values("executed_flops_ratio")
            ax.plot(line["executed_flops_ratio"], line[column], color=palette[variant], lw=0.9, alpha=0.6)
        for k, (_, row) in enumerate(data.iterrows()):
            if pd.isna(row[column]) or pd.isna(row["executed_flops_ratio"]):
                continue
            color, marker = palette[row["variant"]], markers[row["budget"]]
            ax.errorbar([row["executed_flops_ratio"]], [row[column]], xerr=error_bars(row, "executed_flops_ratio"),
                        yerr=error_bars(row, column), fmt=marker, color=color, ms=9, capsize=3, label=row["config"],
                        mfc="none" if row["prefill_mode"] == "dense" and row["variant"] != baseline else color)
            ax.annotate(row["config"], (row["executed_flops_ratio"], row[column]), textcoords="offset points",
                        xytext=(6, 6 + 11 * (k % 3)), fontsize=8, color=color)
        ax.set_xlabel("FFN FLOPs executed / dense, prompt + generated tokens (telemetry)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    n = int(data["ok_items"].max())
    fig.suptitle(f"{panel}: quality against end-to-end FFN compute ({n} items, {confidence:.0%} bootstrap CIs "
                 f"on both axes; hollow = dense prompt, filled = pruned prompt)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pareto(summary: pd.DataFrame, panel: str, path: Path, confidence: float, baseline: str) -> None:
    """Quality (and agreement, NLL) against applied sparsity, CI bars both ways; target sparsity hollow."""
    plt = pyplot()
    data = summary[summary["panel"] == panel]
    metric = quality_metrics(data["task"].iloc[0])[0][1]
    panels = [("quality", f"{metric} vs reference (higher is better)"),
              ("dense_rouge_l", f"agreement with {baseline} output, ROUGE-L (higher is better)")]
    if data["reference_nll"].notna().any():
        panels.append(("reference_nll", "reference NLL per token (lower is better)"))
    palette, markers = _style(data)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.2), squeeze=False)
    for ax, (column, title) in zip(axes[0], panels):
        for k, (_, row) in enumerate(data.iterrows()):
            if pd.isna(row[column]):
                continue
            color, marker = palette[row["variant"]], markers[row["budget"]]
            if row["variant"] == baseline:
                ax.axhline(row[column], color=color, ls="--", lw=0.8, alpha=0.6)
            if row["target_sparsity"] > 0:   # configured target (hollow) -> applied (filled)
                ax.plot([row["target_sparsity"], row["applied_sparsity"]], [row[column]] * 2, color=color, lw=0.8,
                        ls=":", alpha=0.7)
                ax.scatter([row["target_sparsity"]], [row[column]], facecolors="none", edgecolors=color,
                           marker=marker, s=60, alpha=0.7)
            ax.errorbar([row["applied_sparsity"]], [row[column]], xerr=error_bars(row, "applied_sparsity"),
                        yerr=error_bars(row, column), fmt=marker, color=color, ms=9, capsize=3, label=row["config"])
            ax.annotate(row["config"], (row["applied_sparsity"], row[column]), textcoords="offset points",
                        xytext=(6, 6 + 11 * (k % 3)), fontsize=8, color=color)
        ax.set_xlabel("FFN sparsity applied per generated token (telemetry)")
        ax.set_title(title, fontsize=10)
        ax.set_xlim(-0.03, max(0.75, float(data[["applied_sparsity", "target_sparsity"]].max().max()) + 0.08))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    n = int(data["ok_items"].max())
    fig.suptitle(f"{panel}: quality against the sparsity applied per generated token ({n} items, {confidence:.0%} bootstrap "
                 f"CIs; hollow marker = configured target, filled = applied)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def drift(results: pd.DataFrame, summary: pd.DataFrame, panel: str, path: Path) -> None:
    """Where drift events fire in the generation, how many per item, and sparsity by token position."""
    plt = pyplot()
    data = summary[summary["panel"] == panel]
    palette, _ = _style(data)
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8))
    bins = np.linspace(0, 1, 11)
    pruned = data[data["method"] != "dense"].reset_index(drop=True)
    bar = 0.8 / max(len(pruned), 1)
    for _, row in data.iterrows():
        items = _ok_items(results, panel, row["config"])
        color = palette[row["variant"]]
        positions = [p / max(n, 1) for ps, n in zip(items["drift_positions"], items["generated_tokens"])
                     for p in (ps if ps is not None else [])]
        if positions:
            axes[0].hist(positions, bins=bins, weights=np.full(len(positions), 1.0 / len(items)), histtype="step",
                         lw=2, color=color, label=row["config"])
        if row["method"] != "dense" and len(items):
            k = int(pruned.index[pruned["config"] == row["config"]][0])
            counts = items["drift_events"].value_counts().sort_index()
            axes[1].bar(counts.index + (k - (len(pruned) - 1) / 2) * bar, counts.values / len(items), bar,
                        color=color, label=row["config"])
        curves = [np.asarray(s, dtype=float) for s in items["sparsity_per_token"] if s is not None and len(s)]
        if curves:
            width = max(len(c) for c in curves)
            padded = np.full((len(curves), width), np.nan)
            for i, c in enumerate(curves):
                padded[i, :len(c)] = c
            axes[2].plot(np.arange(width), np.nanmean(padded, axis=0), color=color, label=row["config"], lw=1.5)
    axes[0].set(xlabel="drift event position / generated tokens", ylabel="events per item",
                title="where drift events fire in the generation", xlim=(0, 1))
    if not axes[0].get_legend_handles_labels()[0]:
        axes[0].text(0.5, 0.5, "no drift events in any config", ha="center", va="center", transform=axes[0].transAxes)
    axes[1].xaxis.get_major_locator().set_params(integer=True)
    axes[1].set(xlabel="drift events in an item", ylabel="fraction of items", title="drift events per item")
    axes[2].set(xlabel="generated-token position", ylabel="mean applied FFN sparsity",
                title="mean sparsity applied at each generated token\n(dips: dense calibration forwards)")
    for ax in axes:
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{panel}: drift events and the sparsity they leave", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def layer_heatmap(results: pd.DataFrame, summary: pd.DataFrame, panel: str, path: Path) -> None:
    """Mean kept fraction of each layer's final FFN mask, configs x layers."""
    plt = pyplot()
    data = summary[summary["panel"] == panel]
    matrix = []
    for config in data["config"]:
        items = _ok_items(results, panel, config)
        rows = [np.asarray(k, dtype=float) for k in items["kept_fraction_per_layer"] if k is not None and len(k)]
        matrix.append(np.mean(rows, axis=0) if rows else None)
    width = max((len(m) for m in matrix if m is not None), default=1)
    grid = np.array([m if m is not None else np.full(width, np.nan) for m in matrix])
    fig, ax = plt.subplots(figsize=(max(6, 0.38 * width + 3), 0.55 * len(grid) + 1.8))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(grid)), list(data["config"]))
    ax.set_xticks(range(width))
    ax.set_xlabel("decoder layer")
    if width <= 40:
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}"[1:] if value < 1 else "1", ha="center", va="center", fontsize=6,
                        color="white" if value < 0.6 else "black")
    fig.colorbar(image, ax=ax, label="kept fraction of FFN neurons")
    ax.set_title(f"{panel}: kept fraction per layer of the final masks (mean over items; 1 = dense)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cost(summary: pd.DataFrame, panel: str, path: Path) -> None:
    """Throughput, FFN FLOPs (kept and executed) over dense, DART state bytes per sequence."""
    plt = pyplot()
    data = summary[summary["panel"] == panel].reset_index(drop=True)
    palette, _ = _style(data)
    x, bar_colors = np.arange(len(data)), [palette[v] for v in data["variant"]]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    yerr = np.array([[max(r["tokens_per_second"] - r["tokens_per_second_low"], 0) for _, r in data.iterrows()],
                     [max(r["tokens_per_second_high"] - r["tokens_per_second"], 0) for _, r in data.iterrows()]])
    axes[0].bar(x, data["tokens_per_second"], color=bar_colors, yerr=np.nan_to_num(yerr), capsize=3)
    axes[0].set(ylabel="generated tokens / s per sequence", title="speed (per sequence in its batch; shared CPU)")
    axes[1].bar(x - 0.27, 1.0 - data["applied_sparsity"], 0.27, color=bar_colors, alpha=0.55, hatch="..")
    axes[1].bar(x, data["kept_flops_ratio"], 0.27, color=bar_colors)
    axes[1].bar(x + 0.27, data["executed_flops_ratio"], 0.27, color=bar_colors, alpha=0.4, hatch="//")
    axes[1].axhline(1.0, color="black", lw=0.8, ls="--")
    axes[1].set(ylabel="FFN FLOPs / dense", title="FFN FLOPs over dense")
    from matplotlib.patches import Patch

    axes[1].legend(handles=[Patch(facecolor="gray", alpha=0.55, hatch="..", label="kept, generated tokens only"),
                            Patch(color="gray", label="kept, prompt + generated"),
                            Patch(facecolor="gray", alpha=0.4, hatch="//", label="executed (masking computes all)")],
                   fontsize=8, loc="upper center", ncol=2)
    axes[1].set_ylim(0, 1.4)
    axes[2].bar(x, data["state_bytes_mean"] / 1024, color=bar_colors)
    axes[2].set(ylabel="KiB per sequence (peak)", title="DART per-sequence state")
    for ax in axes:
        ax.set_xticks(x, list(data["config"]), rotation=20, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{panel}: cost of each config", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(results: pd.DataFrame, summary: pd.DataFrame, study: StudyConfig, root: Path) -> list[Path]:
    """Every plot of every panel; returns the written paths."""
    written = []
    for panel in summary["panel"].unique():
        paths = {name: root / f"{name}_{panel}.png" for name in ("cost_quality", "pareto", "drift", "layers", "cost")}
        cost_quality(summary, panel, paths["cost_quality"], study.study.confidence, study.study.baseline)
        pareto(summary, panel, paths["pareto"], study.study.confidence, study.study.baseline)
        drift(results, summary, panel, paths["drift"])
        layer_heatmap(results, summary, panel, paths["layers"])
        cost(summary, panel, paths["cost"])
        written.extend(paths.values())
    return written

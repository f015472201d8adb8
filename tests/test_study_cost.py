"""The cost view of a study without Ray: end-to-end FLOPs intervals, equal-cost pairs, interpolation
along a variant's configs, the frontier and the written answer, on hand-made result tables whose
differences are known exactly; and the shipped prefill study's cells."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_study_units import hand_results

from pipeline.study.answer import bracket, better, curve, dominated, frontier
from pipeline.study.config import StudyConfig, expand, load_study
from pipeline.study.report import write_report
from pipeline.study.stats import Estimate, paired_ratio_difference

CONF = Path(__file__).parents[1] / "conf"
N = 24
DENSE = [0.2 + 0.01 * (i % 5) for i in range(N)]
# Per config: quality below dense on every item, and end-to-end FLOPs over dense.
DROP = {"dense": 0.0, "static@a50": 0.10, "dart@a50": 0.08, "dart_block@a30": 0.02, "dart_block@a50": 0.06}
FLOPS = {"dense": 1.0, "static@a50": 0.97, "dart@a50": 0.975, "dart_block@a30": 0.8, "dart_block@a50": 0.6}


def cost_study(tmp_path, **settings) -> StudyConfig:
    return StudyConfig.model_validate({
        "study": {"name": "toy", "output": str(tmp_path), "bootstrap_samples": 300,
                  "compare": [["dart_block", "dart"], ["dart", "static"]], **settings},
        "variants": [{"name": "dense", "dart": {"method": "dense"}}, {"name": "static", "dart": {"method": "static"}},
                     {"name": "dart", "dart": {"method": "dart"}},
                     {"name": "dart_block", "dart": {"method": "dart", "prefill": {"mode": "blockwise"}}}],
        "budgets": [{"name": "a30", "dart": {"keep_ratio": 0.7}}, {"name": "a50", "dart": {"keep_ratio": 0.5}}],
        "datasets": [{"name": "toy", "job": {"task": "summarize", "input": {"paths": ["a.parquet"],
                                                                            "text_column": "d"}}}]})


def toy_results(drop=DROP, flops=FLOPS) -> pd.DataFrame:
    quality = {c: [q - d for q in DENSE] for c, d in drop.items()}
    sparsity = {c: 0.0 if c == "dense" else 0.5 for c in drop}
    return hand_results(quality, sparsity, {}, flops)


def test_paired_ratio_difference_of_sums():
    # a: 0.4 of dense on every item, b: all of it; one item of b missing drops the pair.
    est = paired_ratio_difference([40, 80, 20], [100, 200, 50], [100, 200, np.nan], [100, 200, 50], samples=300)
    assert (est.value, est.low, est.high, est.n) == (pytest.approx(-0.6), pytest.approx(-0.6), pytest.approx(-0.6), 2)
    # Ratios of sums, not means of ratios: (10 + 90) / (100 + 100) = 0.5 against 1.
    assert paired_ratio_difference([10, 90], [100, 100], [1, 1], [1, 1]).value == pytest.approx(-0.5)
    spread = paired_ratio_difference([10, 90, 50, 30], [100] * 4, [100] * 4, [100] * 4, samples=500)
    assert spread.low < spread.value < spread.high
    with pytest.raises(ValueError, match="shape"):
        paired_ratio_difference([1], [1], [1, 2], [1, 2])


def test_better_reads_the_interval():
    up, flat, down = Estimate(0.02, 0.01, 0.03, 9), Estimate(0.0, -0.01, 0.01, 9), Estimate(-0.02, -0.03, -0.01, 9)
    assert better("x", "y", "ROUGE-L", up).startswith("x has the better ROUGE-L")
    assert better("x", "y", "ROUGE-L", down).startswith("y has the better ROUGE-L")
    assert "includes 0" in better("x", "y", "ROUGE-L", flat)
    assert "no item" in better("x", "y", "ROUGE-L", Estimate(np.nan, np.nan, np.nan, 0))


def test_curve_bracket_and_frontier():
    summary = pd.DataFrame({"config": list(FLOPS), "variant": [c.split("@")[0] for c in FLOPS],
                            "executed_flops_ratio": list(FLOPS.values()),
                            "quality": [0.3 - DROP[c] for c in FLOPS]})
    points = curve(summary, "dart_block", "dense")
    assert list(points["config"]) == ["dart_block@a50", "dart_block@a30", "dense"]
    (lo, w_lo), (hi, w_hi) = bracket(points, 0.97)
    assert (lo, hi) == ("dart_block@a30", "dense") and w_lo == pytest.approx(0.15) and w_hi == pytest.approx(0.85)
    assert bracket(points, 0.5) is None and bracket(points, 1.0) is None
    assert frontier(summary) == ["dart_block@a50", "dart_block@a30", "dense"]
    # static@a50 (0.97, 0.20) and dart@a50 (0.975, 0.22) are both beaten by dart_block@a30 (0.8, 0.28).
    assert dominated(summary) == {"static@a50": "dart_block@a30", "dart@a50": "dart_block@a30"}


def test_cost_frame_equal_and_interpolated_differences(tmp_path):
    study = cost_study(tmp_path)
    out = write_report(toy_results(), study, tmp_path)
    summary = out["summary"].set_index("config")
    assert summary.loc["dart_block@a50", "executed_flops_ratio"] == pytest.approx(0.6)
    assert summary.loc["dart_block@a50", "executed_flops_ratio_low"] == pytest.approx(0.6)
    assert summary.loc["dart_block@a50", "prompt_applied_sparsity"] == pytest.approx(0.5)
    costs = out["costs"]
    equal = costs[costs["kind"] == "equal"]
    # Only static@a50 (0.970) and dart@a50 (0.975) are within 0.02; the better one comes first.
    assert list(zip(equal["a"], equal["b"])) == [("dart@a50", "static@a50")]
    assert equal["quality_diff"].iloc[0] == pytest.approx(0.02) and equal["flops_diff"].iloc[0] == pytest.approx(0.005)
    inter = costs[costs["kind"] == "interpolated"].set_index("a")
    # static@a50 at 0.97 against dart_block: 0.15 of dart_block@a30 (-0.02) and 0.85 of dense.
    assert set(inter.index) == {"static@a50", "dart@a50"}
    assert inter.loc["static@a50", "quality_diff"] == pytest.approx(-0.10 + 0.15 * 0.02)
    assert inter.loc["dart@a50", "quality_diff"] == pytest.approx(-0.08 + 0.125 * 0.02)
    assert inter.loc["static@a50", "quality_diff_high"] < 0
    # Agreement with dense is not drawn towards dense, whose agreement with itself is 1 by definition.
    assert inter["agreement_diff"].isna().all() and (equal["agreement_diff"].notna()).all()
    assert (tmp_path / "equal_cost.csv").stat().st_size > 0 and (tmp_path / "cost_quality_toy.png").stat().st_size > 0
    saving = out["comparisons"].set_index("a").loc["dart_block@a50"]
    assert saving["flops_diff"] == pytest.approx(0.6 - 0.975) and saving["quality_diff"] == pytest.approx(0.02)


def test_cheaper_configs_at_a_quality_not_shown_worse(tmp_path):
    costs = write_report(toy_results(), cost_study(tmp_path), tmp_path)["costs"]
    matched = costs[costs["kind"] == "matched"].set_index("b")
    # The cheapest config of another variant, dart_block@a50 (0.6), is better than both decode-only ones;
    # static@a50 and dart@a50 cost the same (within 0.02), and no variant has a config cheaper than dart_block's.
    assert dict(matched["a"]) == {"dart@a50": "dart_block@a50", "static@a50": "dart_block@a50"}
    assert matched.loc["dart@a50", "quality_diff"] == pytest.approx(0.02)
    assert matched.loc["dart@a50", "flops_diff"] == pytest.approx(0.6 - 0.975)
    # Where the cheapest is worse, the next cheaper config that is not is named instead.
    worse = write_report(toy_results(drop={**DROP, "dart_block@a50": 0.12}), cost_study(tmp_path), tmp_path)["costs"]
    matched = worse[worse["kind"] == "matched"].set_index("b")
    assert dict(matched["a"]) == {"dart@a50": "dart_block@a30", "static@a50": "dart_block@a30"}
    assert matched.loc["static@a50", "quality_diff"] == pytest.approx(0.08)
    # Every cheaper config worse: none named, and the answer says so.
    out = write_report(toy_results(drop={**DROP, "dart_block@a30": 0.2, "dart_block@a50": 0.2}), cost_study(tmp_path),
                       tmp_path)
    assert (out["costs"]["kind"] != "matched").all()
    assert "No config of one variant is cheaper" in Path(out["report"]).read_text()


def test_report_answers_plainly(tmp_path):
    text = write_report(toy_results(), cost_study(tmp_path), tmp_path)["report"]
    text = Path(text).read_text()
    answer = text.split("## Plain answer")[1].split("## Findings")[0]
    assert "dart@a50 and static@a50 cost the same" in answer and "dart@a50 has the better ROUGE-L" in answer
    assert "at static@a50's cost (0.970 of dense FLOPs)" in answer
    assert "(between dart_block@a30 at 0.800 and dense at 1.000): dart_block has the better ROUGE-L" in answer
    assert "dart_block@a50 (blockwise prefill against dense) saves 0.375 [0.375, 0.375] of dense FFN FLOPs" in answer
    assert "Frontier" in answer and "dart_block@a50 (0.600" in answer and "static@a50 (by dart_block@a30)" in answer
    assert ("Cheaper, quality not shown worse (the cheapest such config of another variant): dart_block@a50 (0.600 of "
            "dense FFN FLOPs) against dart@a50 (0.975): saves 0.375 [0.375, 0.375] of dense FFN FLOPs, ROUGE-L "
            "dart_block@a50 - dart@a50 = +0.0200 [+0.0200, +0.0200]") in answer
    assert "![cost_quality_toy](cost_quality_toy.png)" in text


def test_report_says_when_no_configs_cost_the_same(tmp_path):
    flops = {**FLOPS, "dart@a50": 0.93}
    out = write_report(toy_results(flops=flops), cost_study(tmp_path, equal_flops_tolerance=0.01), tmp_path)
    assert (out["costs"]["kind"] != "equal").all()
    assert "No two configs run at equal end-to-end FLOPs (within 0.01)" in Path(out["report"]).read_text()
    # Tolerance wide enough: dart@a50 and dense (0.07 apart) become a measured pair, dense the better.
    wide = write_report(toy_results(flops=flops), cost_study(tmp_path, equal_flops_tolerance=0.1), tmp_path)["costs"]
    pairs = wide[wide["kind"] == "equal"]
    assert ("dense", "dart@a50") in set(zip(pairs["a"], pairs["b"]))


def test_shipped_prefill_study_cells():
    runs = {(r.dataset, r.label): r.config.dart for r in expand(load_study(CONF / "study_prefill.yaml"))}
    per = {"dense", "static@auto50", "static@auto70", "dart@auto50", "dart@auto70", "dart_block@auto30",
           "dart_block@auto50", "dart_block@auto70", "dart_block_f128@auto50"}
    assert set(runs) == {(d, label) for d in ("xsum", "quoref") for label in per}
    for (_, label), dart in runs.items():
        blockwise = label.startswith("dart_block")
        assert dart.prefill.mode == ("blockwise" if blockwise else "dense"), label
        if blockwise:
            first = 128 if label.startswith("dart_block_f128") else 64
            assert (dart.prefill.first_block_tokens, dart.prefill.block_tokens) == (first, 224), label
        if label != "dense":
            assert dart.budget == "auto" and 1 - dart.keep_ratio == pytest.approx(int(label[-2:]) / 100), label

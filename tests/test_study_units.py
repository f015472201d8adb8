"""Study pieces without Ray: metrics and bootstrap on hand-made cases, sweep expansion, shipped study
configs, the report on hand-made result tables, and the reference NLL against a plain forward."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.study.config import StudyConfig, expand, load_study
from pipeline.study.report import comparisons_frame, summary_frame, verdict, write_report
from pipeline.study.results import derive, quality_metrics
from pipeline.study.stats import Estimate, bootstrap_mean, bootstrap_ratio, paired_difference
from pipeline.tasks import rouge_scores, word_match

CONF = Path(__file__).parents[1] / "conf"


# ---- metrics ----------------------------------------------------------------------------------
def test_rouge_variants_by_hand():
    # pred "the cat sat", ref "the cat ran": unigrams 2/3 both ways; bigrams: {the cat} 1 of 2 each way.
    scores = rouge_scores("the cat sat", "the cat ran")
    assert scores["rouge_1"] == pytest.approx(2 / 3)
    assert scores["rouge_2"] == pytest.approx(1 / 2)
    assert scores["rouge_l"] == pytest.approx(2 / 3)
    # Stemming: "cats" matches "cat"; LCS of "a b c d" and "a c b d" is 3 of 4.
    assert rouge_scores("cats", "cat")["rouge_1"] == pytest.approx(1.0)
    assert rouge_scores("a b c d", "a c b d")["rouge_l"] == pytest.approx(3 / 4)
    assert rouge_scores("x y", "z w") == {"rouge_1": 0.0, "rouge_2": 0.0, "rouge_l": 0.0}


def test_word_match_by_position():
    assert word_match("a b c", "a b c") == 1.0
    assert word_match("a b c", "a x c d") == pytest.approx(2 / 4)    # over the longer text
    assert word_match("", "") == 1.0 and word_match("a", "") == 0.0


# ---- bootstrap --------------------------------------------------------------------------------
def test_bootstrap_mean_constant_and_known_mean():
    est = bootstrap_mean([0.5] * 10, samples=500)
    assert (est.value, est.low, est.high, est.n) == (0.5, 0.5, 0.5, 10)
    values = np.arange(100, dtype=float)
    est = bootstrap_mean(values, samples=2000, seed=1)
    assert est.value == pytest.approx(49.5) and est.low < 49.5 < est.high
    # Standard error of the mean is about 2.9: a 95% interval is about +-5.7 wide.
    assert 4.5 < (est.high - est.low) / 2 < 7.0
    assert bootstrap_mean(values, seed=1) == est                    # fixed seed: same interval
    assert bootstrap_mean([1.0, np.nan, 3.0]).value == 2.0 and bootstrap_mean([1.0, np.nan, 3.0]).n == 2
    assert bootstrap_mean([]).n == 0 and bootstrap_mean([]).format() == "-"
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean([1.0], confidence=1.5)


def test_ratio_is_token_weighted_and_paired_difference_pairs_items():
    # Two items: 0.5 over 10 tokens and 0.0 over 30 tokens: token-weighted sparsity 5/40.
    est = bootstrap_ratio([0.5 * 10, 0.0 * 30], [10, 30], samples=500)
    assert est.value == pytest.approx(0.125) and 0.0 <= est.low <= est.high <= 0.5
    a = np.array([0.30, 0.10, 0.50, 0.20])
    diff = paired_difference(a + 0.05, a, samples=500)             # the same shift on every item
    assert diff.value == pytest.approx(0.05) and diff.low == pytest.approx(0.05) and diff.high == pytest.approx(0.05)
    assert paired_difference([1.0, np.nan], [0.0, 0.0]).n == 1      # an item missing on one side drops
    with pytest.raises(ValueError, match="shape"):
        paired_difference([1.0], [1.0, 2.0])


def test_verdict_says_so_plainly():
    up, flat, down = Estimate(0.02, 0.01, 0.03, 50), Estimate(0.0, -0.01, 0.01, 50), Estimate(-0.02, -0.03, -0.01, 50)
    assert "dart beats static at equal" in verdict("dart", "static", "ROUGE-L", up, 0.49, 0.48, 0.02)
    assert "does not beat" in verdict("dart", "static", "ROUGE-L", flat, 0.49, 0.48, 0.02)
    assert "worse" in verdict("dart", "static", "ROUGE-L", down, 0.49, 0.48, 0.02)
    # Better quality bought with less sparsity is not a win at equal sparsity.
    unequal = verdict("dart", "static", "ROUGE-L", up, 0.40, 0.49, 0.02)
    assert "less sparsity" in unequal and "does not show that dart beats static" in unequal


# ---- package boundaries -------------------------------------------------------------------------
def test_quality_metrics_come_from_the_task_registry():
    from pipeline.tasks import TASKS

    for task, spec in TASKS.items():
        assert quality_metrics(task) == list(spec.quality_metrics) and quality_metrics(task), task
    assert quality_metrics("summarize")[0] == ("rouge_l", "ROUGE-L") and quality_metrics("qa")[0] == ("f1", "token F1")


def test_run_path_imports_neither_the_study_nor_pandas_nor_matplotlib():
    code = """
import importlib, sys
from pathlib import Path
names = ['.'.join(p.with_suffix('').parts).removesuffix('.__init__') for p in sorted(Path('pipeline').rglob('*.py'))
         if 'study' not in p.parts] + ['jobs.summarize', 'jobs.qa', 'jobs.label', 'jobs.cli']
for name in names:
    importlib.import_module(name)
print(sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'matplotlib') or m.startswith('pipeline.study')))
"""
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- study config and expansion -----------------------------------------------------------------
def study_data(**changes) -> dict:
    data = {
        "study": {"name": "s", "output": "out", "limit": 10},
        "base": {"generation": {"max_new_tokens": 8}, "dart": {"ranking": "max"}},
        "variants": [{"name": "dense", "dart": {"method": "dense"}}, {"name": "static", "dart": {"method": "static"}},
                     {"name": "dart", "dart": {"method": "dart"}},
                     {"name": "dart_recal", "dart": {"method": "dart", "drift": {"recalibration_tokens": 3}},
                      "budgets": ["auto50"]}],
        "budgets": [{"name": "auto50", "dart": {"budget": "auto", "keep_ratio": 0.5}},
                    {"name": "uni30", "dart": {"budget": "uniform", "keep_ratio": 0.7}}],
        "datasets": [{"name": "x", "job": {"task": "summarize", "input": {"paths": ["a.parquet"], "text_column": "d"}}},
                     {"name": "q", "job": {"task": "qa", "input": {"paths": ["b.parquet"], "question_column": "p"},
                                           "generation": {"max_new_tokens": 4}}}],
    }
    data.update(changes)
    return data


def test_expansion_variants_x_budgets_x_datasets_dense_once():
    runs = expand(StudyConfig.model_validate(study_data()))
    labels = [(r.dataset, r.label) for r in runs]
    per = ["dense", "static@auto50", "static@uni30", "dart@auto50", "dart@uni30", "dart_recal@auto50"]
    assert labels == [("x", l) for l in per] + [("q", l) for l in per]
    by = {(r.dataset, r.label): r.config for r in runs}
    assert by[("x", "dart_recal@auto50")].dart.drift.recalibration_tokens == 3
    assert by[("x", "static@uni30")].dart.budget == "uniform" and by[("x", "static@uni30")].dart.keep_ratio == 0.7
    assert by[("x", "dart@auto50")].dart.ranking == "max"                       # base reaches every cell
    assert by[("q", "dense")].generation.max_new_tokens == 4 and by[("x", "dense")].generation.max_new_tokens == 8
    assert all(c.input.limit == 10 and c.output.dir == str(Path("out/runs")) for c in by.values())
    assert len({c.fingerprint("p") for c in by.values()}) == len(by)            # runs kept apart


def test_bad_study_names_what_to_fix():
    with pytest.raises(ValueError, match="unknown budget"):
        StudyConfig.model_validate(study_data(variants=[{"name": "dart", "budgets": ["nope"]}, {"name": "dense"},
                                                    {"name": "static"}]))
    with pytest.raises(ValueError, match="unknown variant"):
        StudyConfig.model_validate(study_data(variants=[{"name": "dense", "dart": {"method": "dense"}}]))
    bad = study_data(budgets=[{"name": "auto50", "dart": {"keep_ratio": 2}}])
    with pytest.raises(ValueError, match=r"(?s)static@auto50 on dataset x.*dart\.keep_ratio"):
        expand(StudyConfig.model_validate(bad))


def test_shipped_xsum_study_is_the_papers_setting():
    runs = expand(load_study(CONF / "study_xsum.yaml"))
    assert [r.label for r in runs] == ["dense", "static@auto50", "dart@auto50"]
    for r in runs[1:]:
        d = r.config.dart
        assert (d.budget, d.keep_ratio, d.ranking, d.mask_step) == ("auto", 0.5, "max", 0)
    assert runs[0].config.input.paths == ["data/xsum_study.parquet"] and runs[0].config.input.limit == 200
    assert runs[0].config.summarize.reference_nll


# ---- report on hand-made results --------------------------------------------------------------------
def hand_results(quality: dict[str, list[float]], sparsity: dict[str, float], drift: dict[str, int],
                 flops: dict[str, float] | None = None) -> pd.DataFrame:
    """One summarize dataset: per config, items with the given ROUGE-L; outputs equal to dense when the
    quality is; 10 generated tokens each; dart items fire `drift` events at token 5; every item of a config
    executes `flops` of its dense FFN FLOPs (default all); variants named dart_block* prune the prompt."""
    rows = []
    for config, values in quality.items():
        variant, _, budget = config.partition("@")
        blockwise = variant.startswith("dart_block")
        for i, q in enumerate(values):
            s = sparsity[config]
            rows.append({
                "dataset": "toy", "task": "summarize", "variant": variant, "budget": budget or "-", "config": config,
                "method": "dart" if blockwise else variant, "budget_kind": "auto" if budget else "-",
                "prefill_mode": "blockwise" if blockwise else "dense", "target_sparsity": 0.5 if budget else 0.0,
                "id": f"doc{i}", "status": "ok", "model": "hand", "output": "same words" if q == quality["dense"][i]
                else f"other words {i}", "rouge_l": q, "rouge_1": q, "rouge_2": q / 2, "reference_nll": 2.0 + s,
                "generated_tokens": 10, "applied_sparsity": s, "sparsity_per_token": [s] * 10,
                "drift_events": drift.get(config, 0), "drift_positions": [5] * drift.get(config, 0),
                "kept_fraction_per_layer": [1 - s, 1 - s, 1 - s], "ffn_flops_dense": 1000,
                "ffn_flops_kept": 1000 - int(1000 * s), "ffn_flops_executed": round(1000 * (flops or {}).get(config, 1.0)),
                "prompt_tokens": 30, "prompt_applied_sparsity": s if blockwise else 0.0, "prefill_blocks": 3 if blockwise else 1,
                "dart_state_bytes": 1024, "prefill_seconds": 0.1, "decode_seconds": 0.9})
    return derive(pd.DataFrame(rows), "dense")


def test_report_on_a_hand_made_study(tmp_path):
    n = 30
    dense = [0.2 + 0.01 * (i % 5) for i in range(n)]
    results = hand_results({"dense": dense, "static@a50": [q - 0.10 for q in dense], "dart@a50": [q - 0.02 for q in dense]},
                           {"dense": 0.0, "static@a50": 0.49, "dart@a50": 0.48}, {"dart@a50": 1})
    study = StudyConfig.model_validate(study_data(study={"name": "toy", "output": str(tmp_path), "bootstrap_samples": 300}))
    out = write_report(results, study, tmp_path)
    summary = out["summary"].set_index("config")
    assert summary.loc["static@a50", "retained"] == pytest.approx((np.mean(dense) - 0.10) / np.mean(dense))
    assert summary.loc["dart@a50", "applied_sparsity"] == pytest.approx(0.48)
    assert summary.loc["dart@a50", "drift_events_per_item"] == 1.0
    assert summary.loc["dense", "dense_rouge_l"] == 1.0 and summary.loc["static@a50", "dense_rouge_l"] < 1.0
    assert summary.loc["static@a50", "kept_flops_ratio"] == pytest.approx(0.51)
    comparison = out["comparisons"].iloc[0]
    assert (comparison["a"], comparison["b"], bool(comparison["equal_sparsity"])) == ("dart@a50", "static@a50", True)
    assert comparison["quality_diff"] == pytest.approx(0.08) and comparison["quality_diff_low"] > 0
    text = (tmp_path / "report.md").read_text()
    assert "dart@a50 beats static@a50 at equal applied sparsity" in text
    assert "retains" in text and "| toy | dart@a50 |" in text
    for name in ("pareto_toy.png", "drift_toy.png", "layers_toy.png", "cost_toy.png", "summary.csv", "comparisons.csv"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_report_says_plainly_when_dart_does_not_beat_static(tmp_path):
    dense = [0.3] * 12
    results = hand_results({"dense": dense, "static@a50": [0.25] * 12, "dart@a50": [0.25] * 12},
                           {"dense": 0.0, "static@a50": 0.49, "dart@a50": 0.485}, {})
    study = StudyConfig.model_validate(study_data(study={"name": "toy", "output": str(tmp_path), "bootstrap_samples": 200}))
    out = write_report(results, study, tmp_path)
    assert "dart@a50 does not beat static@a50 at equal applied sparsity" in (tmp_path / "report.md").read_text()
    assert len(summary_frame(results, study)) == 3
    assert comparisons_frame(results, out["summary"], study)["paired_items"].tolist() == [12]


# ---- reference NLL ------------------------------------------------------------------------------
def _task(tiny_model_dir, task, overrides, method="dense"):
    from dart.config import DartConfig
    from dart.engine import DartEngine
    from dart.loading import load_model
    from dart.model_config import ModelConfig
    from pipeline.config import load_config
    from pipeline.tasks import TASKS

    model, tokenizer = load_model(ModelConfig(source=str(tiny_model_dir), device="cpu"))
    config = load_config(None, ["input.paths=[a]", "input.reference_column=ref", *overrides], task=task)
    engine = DartEngine(model, tokenizer, DartConfig(method=method))
    return TASKS[task].runner(config.task_context(), tokenizer, engine), model, tokenizer


def test_reference_nll_dense_equals_a_plain_forward(tiny_model_dir):
    import torch

    task, model, tokenizer = _task(tiny_model_dir, "summarize", ["input.text_column=d", "summarize.reference_nll=true"])
    rows = [("r1", {"d": "the cat sat on the mat.", "ref": "a cat sat"}), ("r2", {"d": "no reference", "ref": None})]
    out = task.run(rows)
    prompt = task.prepare(rows[0][1])[0].ids
    task.engine.close()
    ref_ids = tokenizer("a cat sat", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ref_ids])).logits[0, len(prompt) - 1:-1].float()
    expected = -torch.log_softmax(logits, -1).gather(1, torch.tensor(ref_ids)[:, None]).mean()
    assert out[0]["reference_nll"] == pytest.approx(float(expected), rel=1e-4)
    assert out[1]["status"] == "ok" and out[1]["reference_nll"] is None


def test_qa_scores_the_first_accepted_answer(tiny_model_dir):
    task, _, tokenizer = _task(tiny_model_dir, "qa", ["input.question_column=q", "qa.reference_nll=true",
                                                 "qa.prompt_template=Question {question}"])
    row = {"q": "where did the cat sit?", "ref": ["the mat", "mat"]}
    prompt = task.prepare(row)[0]
    assert task.reference_ids(row, prompt) == tuple(tokenizer("the mat", add_special_tokens=False)["input_ids"])
    assert task.reference_ids({**row, "ref": None}, prompt) == ()
    task.engine.close()

"""The models axis of a study without Ray: expansion (models outermost, cells of a study without the
axis unchanged), its checks, the shipped scale studies' cells, and the report across model size on
hand-made results whose retained quality per model is known exactly."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_study_cost import DENSE, cost_study
from test_study_units import study_data, hand_results

from pipeline.study.config import StudyConfig, expand, load_study
from pipeline.study.report import write_report
from pipeline.study.results import derive
from pipeline.study.scale import RETAIN_TARGET, coverage_heading, coverage_rows, direction, model_pairs
from pipeline.study.stats import Estimate

CONF = Path(__file__).parents[1] / "conf"
MODELS = [{"name": "small", "model": {"source": "small-model"}}, {"name": "big", "model": {"source": "big-model",
                                                                                         "dtype": "bfloat16"}}]


def test_models_axis_runs_models_outermost_over_every_cell():
    plain = expand(StudyConfig.model_validate(study_data()))
    runs = expand(StudyConfig.model_validate(study_data(models=MODELS)))
    assert len(runs) == 2 * len(plain)
    assert [(r.model, r.dataset, r.label) for r in runs] == [(m, r.dataset, r.label) for m in ("small", "big")
                                                             for r in plain]
    for run in runs:
        source, dtype = ("small-model", "auto") if run.model == "small" else ("big-model", "bfloat16")
        assert (run.config.model.source, run.config.model.dtype) == (source, dtype)
    by = {(r.model, r.dataset, r.label): r.config for r in runs}
    assert by[("big", "q", "dense")].generation.max_new_tokens == 4            # the dataset's sections still apply
    assert len({c.fingerprint("p") for c in by.values()}) == len(by)            # every model's runs kept apart
    # Beside the model, a cell is the cell of the study without the axis.
    for run, alone in zip(runs, plain * 2):
        assert run.config.model_dump(exclude={"model"}) == alone.config.model_dump(exclude={"model"})


def test_a_study_without_models_keeps_its_cells():
    plain = expand(StudyConfig.model_validate(study_data()))
    empty = expand(StudyConfig.model_validate(study_data(models=[])))
    assert [(r.model, r.config) for r in empty] == [(None, r.config) for r in plain]
    for path in sorted(CONF.glob("study_*.yaml")):
        study = load_study(path)
        if not study.models:     # the shipped studies before the axis: one model, cells named as before
            assert all(r.model is None for r in expand(study)), path.name


def test_bad_models_axis_names_what_to_fix():
    with pytest.raises(ValueError, match="models names must be unique"):
        StudyConfig.model_validate(study_data(models=[MODELS[0], MODELS[0]]))
    with pytest.raises(ValueError, match="model big and dataset x both set model.dtype"):
        data = study_data(models=MODELS)
        data["datasets"][0]["job"]["model"] = {"dtype": "float32"}
        StudyConfig.model_validate(data)
    with pytest.raises(ValueError, match="models.0.model"):
        StudyConfig.model_validate(study_data(models=[{"name": "small", "model": {}}]))
    with pytest.raises(ValueError, match=r"(?s)dense on dataset x, model small.*model\.dtype"):
        expand(StudyConfig.model_validate(study_data(models=[{"name": "small", "model": {"dtype": "int3"}}])))


def test_shipped_scale_studies_cells():
    runs = expand(load_study(CONF / "study_scale.yaml"))
    models = ["smollm2-135m", "qwen-0.5b", "qwen-1.5b"]
    per = ["dense", "dart@auto50", "dart_block@auto30", "dart_block@auto50"]
    assert [(r.model, r.dataset, r.label) for r in runs] == [(m, d, c) for m in models for d in ("xsum", "quoref")
                                                             for c in per]
    for run in runs:
        assert run.config.model.dtype == "native" and run.config.input.limit >= 100
        prefill = run.config.dart.prefill
        if run.variant == "dart_block":     # the main job's blocks when the study ran (before prefill_block_size/)
            assert (prefill.mode, prefill.first_block_tokens, prefill.block_tokens) == ("blockwise", 48, 224)
        elif run.variant == "dart":
            assert prefill.mode == "dense" and run.config.dart.keep_ratio == 0.5
    mmlu = expand(load_study(CONF / "study_scale_mmlu.yaml"))
    assert [(r.model, r.label) for r in mmlu] == [(m, c) for m in models
                                                  for c in ("dense", "dart_block@auto30", "dart_block@auto50")]
    assert {r.config.task for r in mmlu} == {"label"} and all(r.config.model.dtype == "native" for r in mmlu)


def test_model_pairs_and_direction():
    assert model_pairs(["a", "b"]) == [("a", "b")]
    assert model_pairs(["a", "b", "c"]) == [("a", "b"), ("b", "c"), ("a", "c")]
    assert direction(Estimate(0.2, 0.1, 0.3, 9), "a", "b").startswith("falls from a to b")
    assert direction(Estimate(-0.2, -0.3, -0.1, 9), "a", "b").startswith("rises from a to b")
    assert direction(Estimate(0.1, -0.1, 0.3, 9), "a", "b").startswith("not shown to change")


# ---- the report across model size, on hand-made results -------------------------------------------------
# Per model: quality below its dense on every item; end-to-end FLOPs as in test_study_cost. The big model's
# dense scores 0.1 more on every item, and its outputs differ from the small model's.
SMALL_DROP = {"dense": 0.0, "dart@a50": 0.08, "dart_block@a30": 0.06, "dart_block@a50": 0.1}
BIG_DROP = {"dense": 0.0, "dart@a50": 0.02, "dart_block@a30": 0.01, "dart_block@a50": 0.03}
FLOPS = {"dense": 1.0, "dart@a50": 0.975, "dart_block@a30": 0.8, "dart_block@a50": 0.6}


def scale_results() -> pd.DataFrame:
    frames = []
    for model, drop, lift in (("small", SMALL_DROP, 0.0), ("big", BIG_DROP, 0.1)):
        quality = {c: [q + lift - d for q in DENSE] for c, d in drop.items()}
        frame = hand_results(quality, {c: 0.0 if c == "dense" else 0.5 for c in drop}, {}, FLOPS)
        frame["model_name"], frame["panel"], frame["model"] = model, f"toy_{model}", f"{model}-model"
        frame["output"] = model + " " + frame["output"]
        frames.append(frame)
    return derive(pd.concat(frames, ignore_index=True), "dense")


def test_report_groups_by_model_and_answers_across_size(tmp_path):
    study = StudyConfig.model_validate({**cost_study(tmp_path, limit=24).model_dump(mode="json"), "models": MODELS})
    results = scale_results()
    dense = results[results["variant"] == "dense"]
    assert (dense["dense_rouge_l"] == 1.0).all()          # each model's dense against its own outputs
    out = write_report(results, study, tmp_path)
    summary = out["summary"].set_index(["model_name", "config"])
    mean = sum(DENSE) / len(DENSE)
    for model, drop, lift in (("small", SMALL_DROP, 0.0), ("big", BIG_DROP, 0.1)):
        for config, d in drop.items():
            assert summary.loc[(model, config), "retained"] == pytest.approx((mean + lift - d) / (mean + lift))
    trends = pd.read_csv(tmp_path / "scale.csv")
    row = trends[trends["config"] == "dart_block@a50"].iloc[0]
    small, big = (mean - 0.1) / mean, (mean + 0.1 - 0.03) / (mean + 0.1)
    assert (row["smaller"], row["larger"], row["paired_items"]) == ("small", "big", len(DENSE))
    assert row["retained_diff"] == pytest.approx(big - small) and row["retained_diff_low"] > 0
    text = Path(out["report"]).read_text()
    across = text.split("## Across model size")[1].split("## Plain answer")[0]
    assert "Cost of pruning with size, dart_block@a50: falls from small to big" in across
    # The cheapest config keeping 90%: the big model keeps 0.955 at block-wise 50%, the small one 0.6 there.
    assert big >= RETAIN_TARGET > small
    assert "Recommended for big: **dart_block@a50**" in across
    assert "Recommended for small: **dense**, no pruned config keeps 90%" in across   # best (0.22 - 0.06) / 0.22
    assert "| small | toy | dense | 24 / 24 | complete |" in text
    for name in ("scale_toy.png", "cost_quality_toy_small.png", "cost_quality_toy_big.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "| toy_big | dart_block@a50 |" in text


def test_coverage_says_which_cells_are_partial(tmp_path):
    study = StudyConfig.model_validate({**cost_study(tmp_path, limit=100).model_dump(mode="json"), "models": MODELS})
    summary = pd.DataFrame({"model_name": ["small", "big"], "dataset": ["toy", "toy"], "config": ["dense", "dense"],
                            "ok_items": [100, 36], "error_items": [0, 4]})
    cells = coverage_rows(summary, study)
    assert cells == [["small", "toy", "dense", "100 / 100", "complete"],
                     ["big", "toy", "dense", "36 / 100 (+4 error rows)", "partial"]]
    assert coverage_heading(cells).startswith("Rows per cell (1 of 2 partial: ")
    assert coverage_heading(cells[:1]) == "Rows per cell:"          # every cell complete: no legend of a state


def test_a_model_without_pruned_rows_yet_is_said_so(tmp_path):
    study = StudyConfig.model_validate({**cost_study(tmp_path, limit=24).model_dump(mode="json"), "models": MODELS})
    results = scale_results()
    results = results[(results["model_name"] == "small") | (results["variant"] == "dense")]
    text = Path(write_report(results, study, tmp_path)["report"]).read_text()
    across = text.split("## Across model size")[1].split("## Plain answer")[0]
    assert "- big (24 items): dense ROUGE-L 0.3192 [" in across and "]." in across.split("- big (24 items)")[1][:60]
    assert "Cost of pruning with size, dart@a50: not measured yet" in across
    assert "Recommended for big: not measured yet (no pruned config has rows)." in across
    assert "Recommended for small: **dense**" in across

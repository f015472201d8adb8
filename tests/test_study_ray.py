"""A tiny study end to end through Ray: three configs on the tiny Llama, report files on disk, resume."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from pipeline_fixtures import ROOT, driver_env, write_docs

from pipeline.study.config import StudyConfig, expand
from pipeline.study.sweep import run_study


def tiny_study(model_dir, data_dir, out) -> StudyConfig:
    return StudyConfig.model_validate(tiny_study_data(model_dir, data_dir, out))


def tiny_study_data(model_dir, data_dir, out) -> dict:
    return {
        "study": {"name": "tiny", "output": str(out), "limit": 6, "bootstrap_samples": 200},
        "base": {"model": {"source": str(model_dir), "device": "cpu"}, "generation": {"max_new_tokens": 6, "stop_on_eos": False},
                 "pool": {"num_actors": 1, "batch_size": 3}, "summarize": {"max_document_tokens": 48,
                                                                           "reference_nll": True},
                 "control": {"progress": False}},
        "variants": [{"name": "dense", "dart": {"method": "dense"}}, {"name": "static", "dart": {"method": "static"}},
                     {"name": "dart", "dart": {"method": "dart", "drift": {"window": 1}}}],
        "budgets": [{"name": "auto50", "dart": {"budget": "auto", "keep_ratio": 0.5}}],
        "datasets": [{"name": "docs", "job": {"task": "summarize", "input": {
            "paths": [str(data_dir)], "text_column": "document", "reference_column": "summary",
            "rows_per_item": 3}}}],
    }


@pytest.fixture(scope="module")
def study_run(ray_cluster, tiny_model_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("docs")
    write_docs(data, bad_rows=False)
    study = tiny_study(tiny_model_dir, data, tmp_path_factory.mktemp("studies"))
    return study, run_study(study)


def test_study_writes_results_report_and_plots(study_run):
    study, out = study_run
    root = study.directory
    assert out["complete"] and out["configs"] == 3
    for name in ("study.yaml", "runs.json", "results.parquet", "summary.csv", "comparisons.csv", "report.md",
                 "pareto_docs.png", "drift_docs.png", "layers_docs.png", "cost_docs.png"):
        assert (root / name).is_file(), name
    results = pq.read_table(root / "results.parquet").to_pandas()
    assert len(results) == 3 * 6                                   # limit 6 rows x 3 configs
    assert set(results["config"]) == {"dense", "static@auto50", "dart@auto50"}
    ids = {c: sorted(g["id"]) for c, g in results.groupby("config")}
    assert ids["dense"] == ids["static@auto50"] == ids["dart@auto50"]        # the same items everywhere
    dense = results[results["config"] == "dense"]
    assert (dense["dense_rouge_l"] == 1.0).all() and (dense["applied_sparsity"] == 0).all()
    assert results["reference_nll"].notna().all() and (results["reference_nll"] > 0).all()
    assert results["rouge_1"].notna().all() and results["rouge_2"].notna().all()
    summary = pd.read_csv(root / "summary.csv")
    static = summary[summary["config"] == "static@auto50"].iloc[0]
    per_token = results[results["config"] == "static@auto50"]["sparsity_per_token"]
    assert all(s[0] == 0.0 and all(0.45 < x <= 0.5 for x in s[1:]) for s in per_token)   # prefill dense, then ~50%
    assert static["applied_sparsity"] == pytest.approx(sum(sum(s) for s in per_token) / 36)  # token-weighted
    assert static["applied_sparsity_low"] <= static["applied_sparsity"] <= static["applied_sparsity_high"]
    text = (root / "report.md").read_text()
    assert "## Findings" in text and "Verdict" in text and "![pareto_docs](pareto_docs.png)" in text
    assert len(json.loads((root / "runs.json").read_text())) == 3


def test_rerun_resumes_every_config_and_report_only_runs_nothing(study_run):
    study, first = study_run
    again = run_study(study)
    runs = json.loads((study.directory / "runs.json").read_text())
    assert again["complete"] and all(r["skipped_items"] == r["planned_items"] == 2 for r in runs)
    assert again["summary"]["applied_sparsity"].tolist() == first["summary"]["applied_sparsity"].tolist()
    only = run_study(study, report_only=True)
    assert only["complete"] and only["summary"]["quality"].tolist() == first["summary"]["quality"].tolist()


def test_runs_share_items_and_keep_apart_by_fingerprint(study_run):
    study, _ = study_run
    runs = expand(study)
    from pipeline.run import Job

    jobs = [Job.open(r.config) for r in runs]
    assert len({j.run.root for j in jobs}) == 3
    assert all([it.item_id for it in j.plan] == [it.item_id for it in jobs[0].plan] for j in jobs)


def test_a_models_axis_runs_each_model_and_reports_across_size(ray_cluster, tiny_model_dir, tiny_model_factory,
                                                                tmp_path):
    """Two tiny Llamas of different sizes as the models axis: each model's cells on its own actors."""
    data, out = tmp_path / "docs", tmp_path / "studies"
    data.mkdir()
    write_docs(data, bad_rows=False)
    bigger = tiny_model_factory(layers=4, hidden=64, intermediate=53, seed=1)
    spec = tiny_study_data(tiny_model_dir, data, out)
    spec["variants"] = [v for v in spec["variants"] if v["name"] in ("dense", "dart")]
    spec["study"]["compare"] = []
    spec["models"] = [{"name": "small", "model": {"source": str(tiny_model_dir)}},
                      {"name": "big", "model": {"source": str(bigger)}}]
    study = StudyConfig.model_validate(spec)
    done = run_study(study)
    assert done["complete"] and done["configs"] == 4
    results = pq.read_table(study.directory / "results.parquet").to_pandas()
    assert len(results) == 4 * 6 and (results["status"] == "ok").all()
    by_model = results.groupby("model_name")
    assert set(by_model.groups) == {"small", "big"}
    assert {m: set(g["model"]) for m, g in by_model} == {"small": {str(tiny_model_dir)}, "big": {str(bigger)}}
    assert {m: set(g["panel"]) for m, g in by_model} == {"small": {"docs_small"}, "big": {"docs_big"}}
    ids = {key: sorted(g["id"]) for key, g in results.groupby(["model_name", "config"])}
    assert len({tuple(v) for v in ids.values()}) == 1                       # the same items in every cell
    dense = results[results["variant"] == "dense"]
    assert (dense["dense_rouge_l"] == 1.0).all()                             # each against its own dense output
    flops = by_model["ffn_flops_dense"].sum()
    assert flops["big"] > flops["small"]                                     # 4 x 64 x 53 against 3 x 48 x 37
    runs = json.loads((study.directory / "runs.json").read_text())
    assert [r["model"] for r in runs] == ["small", "small", "big", "big"] and len({r["run_dir"] for r in runs}) == 4
    text = (study.directory / "report.md").read_text()
    assert "## Across model size" in text and "Recommended for big:" in text and "![scale_docs](scale_docs.png)" in text
    assert (study.directory / "scale_docs.png").stat().st_size > 0 and (study.directory / "pareto_docs_big.png").is_file()


def test_a_stopped_study_says_so_in_one_line_and_its_rerun_resumes(ray_cluster, tiny_model_dir, tmp_path):
    """SIGTERM (schedulers, `ray job stop`) to `python -m jobs.study` once some items are done."""
    data, out = tmp_path / "docs", tmp_path / "studies"
    data.mkdir()
    write_docs(data, bad_rows=False)
    spec = tiny_study_data(tiny_model_dir, data, out)
    spec["base"]["testing"] = {"delay_seconds": 0.5}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen([sys.executable, "-m", "jobs.study", "--config", str(tmp_path / "study.yaml")],
                                  cwd=ROOT, env=driver_env(ray_cluster), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 180
            while not list(out.glob("runs/*/markers/*.json")):
                assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
                assert time.time() < deadline, "the study wrote no markers in 180 s"
                time.sleep(0.05)
            driver.send_signal(signal.SIGTERM)
            assert driver.wait(timeout=60) == 143
        finally:
            if driver.poll() is None:
                driver.kill()
    said = (tmp_path / "driver.log").read_text()
    assert "finished items are kept" in said and "Traceback" not in said, said[-3000:]
    done = len(list(out.glob("runs/*/markers/*.json")))
    assert done >= 1
    result = run_study(StudyConfig.model_validate(spec))
    assert result["complete"]

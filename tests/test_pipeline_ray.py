"""The pipeline on one local Ray cluster (shared by the session) with a tiny random Llama."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pipeline_fixtures import FILE_ROWS, job_config, same_rows, write_docs

from pipeline.driver import run_job
from pipeline.run import Job


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_docs(tmp_path_factory.mktemp("docs"))


@pytest.fixture(scope="module")
def full_run(ray_cluster, inputs, tiny_model_dir, tmp_path_factory):
    """3 files, 10 work items, 2 actors, run without interruption."""
    cfg = job_config("summarize", tiny_model_dir, inputs, tmp_path_factory.mktemp("out"),
                     input={"passthrough_columns": ["topic"]})
    return cfg, run_job(cfg)


def test_every_row_once_with_declared_schema(full_run, inputs):
    cfg, summary = full_run
    assert summary["complete"] and summary["planned_items"] == 10 and summary["items"] == 10
    assert summary["rows"] == sum(FILE_ROWS) and summary["error_rows"] == 3
    run_dir = summary["run_dir"]
    table = pq.read_table(f"{run_dir}/parts")
    expected = [i for p in inputs for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()]
    assert sorted(table.column("id").to_pylist()) == sorted(expected)          # each exactly once
    declared = Job.open(cfg).schema
    for part in sorted((Job.open(cfg).run.parts).glob("*.parquet")):
        assert pq.read_schema(part).remove_metadata().equals(declared.remove_metadata())
    assert len(list(Job.open(cfg).run.markers.glob("*.json"))) == 10
    assert set(pc.unique(table["actor_id"]).to_pylist()).__len__() == 2       # both actors worked
    errors = table.filter(pc.equal(table["status"], "error"))
    assert sorted(errors.column("id").to_pylist()) == ["doc-008", "doc-011", "doc-014"]
    files = {p.name for p in Job.open(cfg).run.root.iterdir()}
    assert {"config.yaml", "plan.json", "summary.json", "_SUCCESS", "parts", "markers"} <= files
    saved = json.loads((Job.open(cfg).run.root / "summary.json").read_text())
    assert saved["rows"] == sum(FILE_ROWS) and saved["mean_applied_sparsity"] > 0


def test_pandas_pyarrow_and_datasets_read_the_output(full_run):
    import datasets
    import pandas as pd

    run_dir = full_run[1]["run_dir"]
    frame = pd.read_parquet(f"{run_dir}/parts")
    ds = datasets.load_dataset("parquet", data_files=f"{run_dir}/parts/*.parquet", split="train")
    assert len(frame) == len(ds) == sum(FILE_ROWS)
    assert isinstance(ds[0]["kept_fraction_per_layer"], list)
    assert isinstance(frame["sparsity_per_token"].iloc[0].tolist(), list)


def test_stopped_run_resumed_equals_uninterrupted(full_run, inputs, tiny_model_dir, tmp_path):
    cfg_full, summary_full = full_run
    out = tmp_path / "resume"
    first = run_job(job_config("summarize", tiny_model_dir, inputs, out, input={"passthrough_columns": ["topic"]},
                               control={"progress": False, "max_items": 4}, pool={"num_actors": 1}))
    assert not first["complete"] and first["done_items"] == 4
    assert first["config_fingerprint"] == summary_full["config_fingerprint"]
    second = run_job(job_config("summarize", tiny_model_dir, inputs, out, input={"passthrough_columns": ["topic"]}))
    assert second["complete"] and second["skipped_items"] == 4
    resumed = pq.read_table(f"{second['run_dir']}/parts")
    full = pq.read_table(f"{summary_full['run_dir']}/parts")
    assert same_rows(resumed, full)


def test_label_bad_rows_and_always_failing_item(ray_cluster, tiny_model_dir, tmp_path):
    data = tmp_path / "mc.parquet"
    pq.write_table(pa.table({
        "id": [f"q{i}" for i in range(6)],
        "question": ["Is it?", None, "Pick.", "Which?", "Why?", "How?"],
        "choices": [["yes", "no"], ["a", "b"], None, ["x", "y", "z"], ["p", "q"], ["r", "s"]],
        "answer": ["A", "B", "A", "C", "B", "A"],
    }), data)
    cfg = job_config("label", tiny_model_dir, [data], tmp_path / "out", pool={"num_actors": 1, "max_attempts": 2},
                     input={"question_column": "question", "choices_column": "choices",
                            "reference_column": "answer", "rows_per_item": 2},
                     testing={"fail_ids": ["q5"]})
    summary = run_job(cfg)
    assert summary["complete"] and summary["rows"] == 6
    table = pq.read_table(f"{summary['run_dir']}/parts").sort_by("id")
    status = dict(zip(table.column("id").to_pylist(), table.column("status").to_pylist()))
    assert status == {"q0": "ok", "q1": "error", "q2": "error", "q3": "ok", "q4": "error", "q5": "error"}
    failed = table.filter(pc.equal(table["id"], "q5")).to_pylist()[0]
    assert failed["attempt"] == 2 and "testing.fail_ids" in failed["error"]
    assert summary["accuracy"] is not None

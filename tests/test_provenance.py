"""A resumed run is the run it claims to be: inputs edited or weights replaced under it are refused."""
from __future__ import annotations

import logging
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_fixtures import job_config, sentence
from tinymodels import make_tiny_model_dir

from pipeline.driver import run_job
from pipeline.run import Job


def write_plain(path, docs: list[str]) -> None:
    """No compression and no statistics: a same-length edit leaves the footer byte-identical."""
    table = pa.table({"id": [f"d{i}" for i in range(len(docs))], "document": docs})
    pq.write_table(table, path, compression="NONE", write_statistics=False)


def test_same_length_edit_of_an_input_refuses_the_resume(tmp_path, tiny_model_dir):
    docs = [sentence(i) for i in range(9)]
    source = tmp_path / "docs.parquet"
    write_plain(source, docs)
    config = job_config("summarize", tiny_model_dir, [source], tmp_path / "out", input={"reference_column": None})
    job = Job.open(config)
    assert job.unfinished() == job.plan
    job.write_failure(job.plan[0], job.rows(job.plan[0]), "RuntimeError: x", 1)
    docs[5] = docs[5][:-2] + "X."                         # one character, same length
    write_plain(source, docs)
    again = Job.open(config)
    assert again.fingerprint == job.fingerprint            # the footer could not tell
    with pytest.raises(ValueError, match=r"docs.parquet changed since this run began .*output.dir elsewhere"):
        again.unfinished()


def test_an_input_edited_before_anything_finished_just_starts_over(tmp_path, tiny_model_dir):
    docs = [sentence(i) for i in range(6)]
    source = tmp_path / "docs.parquet"
    write_plain(source, docs)
    config = job_config("summarize", tiny_model_dir, [source], tmp_path / "out", input={"reference_column": None})
    Job.open(config).unfinished()
    write_plain(source, [d.upper() for d in docs])
    assert len(Job.open(config).unfinished()) == 2


def test_weights_replaced_at_the_same_path_are_refused(ray_cluster, tmp_path):
    model_dir = make_tiny_model_dir(tmp_path / "model", seed=0)
    source = tmp_path / "docs.parquet"
    write_plain(source, [sentence(i) for i in range(9)])
    config = job_config("summarize", model_dir, [source], tmp_path / "out", input={"reference_column": None},
                        pool={"num_actors": 1}, control={"max_items": 1, "progress": False})
    summary = run_job(config)
    assert summary["done_items"] == 1
    assert summary["linear_kernel"] == "torch"              # what the actor ran: a tiny model is not measured
    other = make_tiny_model_dir(tmp_path / "other", seed=1)
    for weights in other.glob("*.safetensors"):
        shutil.copy(weights, model_dir / weights.name)
    with pytest.raises(ValueError, match="not the one this run's finished items were made with"):
        run_job(config)
    assert Job.open(config).done_items() == 1               # nothing written with the other weights


def test_a_run_made_in_another_dtype_names_it_and_how_to_resume(tmp_path, tiny_model_dir):
    source = tmp_path / "docs.parquet"
    write_plain(source, [sentence(i) for i in range(4)])
    config = job_config("summarize", tiny_model_dir, [source], tmp_path / "out", input={"reference_column": None})
    Job.open(config).check_models({"f32weights"}, {"float32"})
    reopened = Job.open(config)
    reopened.check_models({"f32weights"}, {"float32"})              # the same model: accepted
    with pytest.raises(ValueError, match=r"made with float32 weights, the actors now load bfloat16 .*"
                                         r"set model.dtype=float32 to resume it"):
        Job.open(config).check_models({"bf16weights"}, {"bfloat16"})
    assert reopened.close({})["model_dtype"] == "float32"


def test_actors_on_different_matmul_kernels_are_recorded_and_named_once(tmp_path, tiny_model_dir, caplog):
    source = tmp_path / "docs.parquet"
    write_plain(source, [sentence(i) for i in range(4)])
    config = job_config("summarize", tiny_model_dir, [source], tmp_path / "out", input={"reference_column": None})
    job = Job.open(config)
    with caplog.at_level(logging.WARNING, logger="pipeline.run.job"):
        job.note_kernels({"onednn"})
        assert "different matmul kernels" not in caplog.text
        job.note_kernels({"torch"})                        # an actor restarted on another machine
        job.note_kernels({"onednn", "torch"})
    assert caplog.text.count("different matmul kernels (onednn, torch") == 1
    assert "set dart.linear_kernel to one of them" in caplog.text
    assert job.close({})["linear_kernel"] == "onednn,torch"

"""Run integrity on local disk: markers prove their parts, one driver per run, failed items retried
on request, submitted jobs write where the user finds the output."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_fixtures import job_config, write_docs

from pipeline.driver import run_job
from pipeline.run import Job, RunBusy, check_durable_output

ROOT = Path(__file__).parents[1]


@pytest.fixture
def finished(tmp_path, tiny_model_dir):
    """A run of 10 items whose every part is written (as error rows: no model runs)."""
    cfg = job_config("summarize", tiny_model_dir, write_docs(tmp_path / "in"), tmp_path / "out")
    job = Job.open(cfg)
    for item in job.plan:
        job.write_failure(item, job.rows(item), "boom", 1)
    return cfg, job


def _other_schema_part(path: Path) -> None:
    pq.write_table(pa.table({"x": [1, 2, 3]}), path)


HOSTILE = {
    "same-row-count part of another item": lambda run, a, b: run.part_path(a).write_bytes(
        run.part_path(b).read_bytes()),
    "part of another schema": lambda run, a, b: _other_schema_part(run.part_path(a)),
    "marker of another item": lambda run, a, b: run.marker_path(a).write_bytes(run.marker_path(b).read_bytes()),
    "part and marker of another item": lambda run, a, b: (
        run.part_path(a).write_bytes(run.part_path(b).read_bytes()),
        run.marker_path(a).write_bytes(run.marker_path(b).read_bytes())),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_part_or_marker_is_redone(case, finished, caplog):
    cfg, job = finished
    victim, donor = job.plan[0], job.plan[1]      # both items hold 3 rows
    HOSTILE[case](job.run, victim, donor)
    with caplog.at_level(logging.WARNING, logger="pipeline.run.store"):
        todo = Job.open(cfg).unfinished()
    assert todo == [victim]
    assert f"item {victim.item_id} is redone" in caplog.text


def test_result_that_is_not_the_items_rows_is_not_written(finished):
    _, job = finished
    item = job.plan[2]
    table = pq.read_table(job.run.part_path(item))
    job.run.part_path(item).unlink()
    job.run.marker_path(item).unlink()
    shifted = table.set_column(table.schema.get_field_index("row_index"), "row_index",
                               pa.array([r + 1 for r in table["row_index"].to_pylist()]))
    with pytest.raises(RuntimeError, match="row_index"):
        job.write_result(item, shifted, 1)
    other = table.set_column(table.schema.get_field_index("item_id"), "item_id",
                             pa.array([job.plan[3].item_id] * table.num_rows))
    with pytest.raises(RuntimeError, match="another item"):
        job.write_result(item, other, 1)
    assert not job.run.part_path(item).exists() and not job.run.marker_path(item).exists()


def _holder(run_root: Path) -> subprocess.Popen:
    """Another driver process holding the run's lock until killed."""
    code = ("import sys, time\nfrom pipeline.run import Storage\nfrom pipeline.run import RunDir\n"
            f"run = RunDir(Storage({str(run_root.parent)!r}), {run_root.name!r})\n"
            "with run.lock():\n    print('held', flush=True)\n    time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_driver_refuses_then_takes_over_a_dead_holder(finished, caplog):
    cfg, job = finished
    temp = job.run.parts / f".{job.run.part_path(job.plan[0]).name}.tmp-0thers"
    holder = _holder(job.run.root)
    try:
        temp.write_bytes(b"PAR1 the other driver's part being written")
        with pytest.raises(RunBusy) as refused:
            run_job(cfg)                                # refused before Ray starts or anything is cleaned
        message = str(refused.value)
        assert str(job.run.root) in message and f"pid {holder.pid}" in message and "since" in message
        assert os.uname().nodename in message
        assert temp.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with caplog.at_level(logging.WARNING, logger="pipeline.run.runlock"), job.run.lock():
        assert json.loads((job.run.root / "lock.json").read_text())["pid"] == os.getpid()
        job.run.clean_temp()
    assert f"pid {holder.pid}" in caplog.text and "gone" in caplog.text
    assert not temp.exists() and (job.run.root / "lock.json").read_text() == ""


def test_lock_is_exclusive_within_one_process_too(finished):
    _, job = finished
    with job.run.lock():
        with pytest.raises(RunBusy, match=f"pid {os.getpid()}"):
            with Job.open(finished[0]).run.lock():
                pass
    with job.run.lock():      # released: taken again without a warning
        pass


def test_failed_items_are_kept_then_retried_on_request(ray_cluster, tmp_path, tiny_model_dir):
    inputs = write_docs(tmp_path / "in")[:1]         # 7 rows, 3 items, no bad documents
    common = {"pool": {"num_actors": 1, "cpus_per_actor": 1, "batch_size": 2, "max_attempts": 1}}
    first = run_job(job_config("summarize", tiny_model_dir, inputs, tmp_path / "out",
                               testing={"fail_ids": ["doc-004"]}, **common))
    assert first["failed_items"] == 1 and first["error_rows"] == 3
    assert "control.retry_failed=true" in first["retry_hint"]
    again = run_job(job_config("summarize", tiny_model_dir, inputs, tmp_path / "out", **common))
    assert again["skipped_items"] == 3 and again["failed_items"] == 1 and again["error_rows"] == 3
    retried = run_job(job_config("summarize", tiny_model_dir, inputs, tmp_path / "out",
                                 control={"progress": False, "retry_failed": True}, **common))
    assert retried["skipped_items"] == 2 and retried["failed_items"] == 0 and retried["error_rows"] == 0
    assert "retry_hint" not in retried and retried["run_dir"] == first["run_dir"]
    summary = json.loads((Path(retried["run_dir"]) / "summary.json").read_text())
    assert summary["failed_items"] == 0 and summary["rows"] == 7


def test_submitted_job_refuses_output_inside_rays_working_dir_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"metadata": {"job_submission_id": "raysubmit_X"}}))
    monkeypatch.chdir(tmp_path)
    for relative in ("outputs", "./runs/x", str(tmp_path / "outputs")):
        with pytest.raises(ValueError, match="output.dir.*raysubmit_X.*s3://") as refused:
            check_durable_output(relative)
        assert "absolute path on storage every node shares" in str(refused.value)
    check_durable_output(str(tmp_path.parent / "elsewhere"))
    check_durable_output("s3://bucket/runs")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    check_durable_output("outputs")                  # outside a submitted job a relative dir is fine


def test_closing_text_says_how_to_retry_failed_items():
    from jobs.cli import closing_text

    summary = {"task": "summarize", "items": 3, "rows": 7, "error_rows": 3, "complete": True, "run_dir": "r",
               "failed_items": 1, "retry_hint": "1 item(s) failed ...; rerun with control.retry_failed=true"}
    assert closing_text(summary).splitlines()[-1] == summary["retry_hint"]
    assert "retry" not in closing_text({**summary, "failed_items": 0, "retry_hint": None})

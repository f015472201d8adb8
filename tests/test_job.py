"""The run object: what the pool works through, and the only thing it talks to."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cluster import run_items
from pipeline.run import Job
from pipeline_fixtures import FILE_ROWS, ROWS_PER_ITEM, job_config, write_docs


def test_job_plans_and_resumes_from_its_run_directory(tmp_path, tiny_model_dir):
    paths = write_docs(tmp_path / "in")
    config = job_config("summarize", tiny_model_dir, paths, tmp_path / "out")
    job = Job.open(config)
    assert len(job.plan) == sum(-(-rows // ROWS_PER_ITEM) for rows in FILE_ROWS)
    assert job.rows(job.plan[0]).column_names == config.input.columns
    for item in job.plan[:3]:
        job.write_failure(item, job.rows(item), "RuntimeError: boom", 2)
    again = Job.open(config)
    assert again.run.root == job.run.root and again.fingerprint == job.fingerprint
    assert again.unfinished() == job.plan[3:]
    summary = again.close({})
    failed_rows = sum(item.num_rows for item in job.plan[:3])
    assert (summary["done_items"], summary["complete"], summary["error_rows"]) == (3, False, failed_rows)
    for item in again.unfinished():
        again.write_failure(item, again.rows(item), "RuntimeError: boom", 2)
    assert again.close({})["complete"] and (again.run.root / "_SUCCESS").exists()


def test_markers_of_an_earlier_version_are_upgraded_not_redone(tmp_path, tiny_model_dir):
    paths = write_docs(tmp_path / "in")
    config = job_config("summarize", tiny_model_dir, paths, tmp_path / "out")
    job = Job.open(config)
    for item in job.plan[:2]:
        job.write_failure(item, job.rows(item), "RuntimeError: boom", 2)
        legacy = {"item": item.to_dict(), "rows": item.num_rows, "status": "failed", "attempts": 2}
        job.run.marker_path(item).write_text(json.dumps(legacy))
    first = job.run.part_path(job.plan[0])
    older = pq.read_table(first).drop_columns(["ffn_bytes_dense", "drift_cosines"])   # columns added later
    pq.write_table(older, first)
    job.run.part_path(job.plan[1]).write_bytes(first.read_bytes())                       # another item's rows
    again = Job.open(config)
    with again.run.lock():
        assert again.unfinished() == again.plan[1:]
    upgraded = json.loads(again.run.marker_path(again.plan[0]).read_text())
    assert upgraded["part_sha256"] and upgraded["run"] == again.run.name and upgraded["status"] == "failed"
    part = pq.read_table(first)
    assert part.schema.remove_metadata().equals(again.schema.remove_metadata())
    assert part.column("drift_cosines").null_count == part.num_rows


class RecordingJob:
    """A stand-in for Job that keeps results in memory: the pool must need nothing else."""

    def __init__(self, job: Job) -> None:
        self.config, self.plan, self.real = job.config, job.plan, job
        self.results: dict[str, pa.Table] = {}
        self.failures: dict[str, tuple[str, int]] = {}

    def worker_args(self):
        return self.real.worker_args()

    def check_models(self, fingerprints, dtypes=frozenset()):
        self.models = fingerprints

    def note_kernels(self, kernels):
        self.kernels = kernels

    def rows(self, item):
        return self.real.rows(item)

    def known_problems(self, item):
        return {}

    def write_result(self, item, table, attempts):
        assert item.item_id not in self.results
        self.results[item.item_id] = table
        return sum(table.column("generated_tokens").to_pylist())

    def write_failure(self, item, rows, error, attempts):
        self.failures[item.item_id] = (error, attempts)


def test_pool_works_through_the_job_alone(ray_cluster, tiny_model_dir, tmp_path):
    paths = write_docs(tmp_path / "in", bad_rows=False)
    config = job_config("summarize", tiny_model_dir, paths, tmp_path / "out",
                        pool={"max_attempts": 2, "num_actors": 1}, testing={"fail_ids": ["doc-004"]})
    job = RecordingJob(Job.open(config))
    generated = run_items(job, job.plan)
    failing = next(it.item_id for it in job.plan if it.start <= 4 < it.stop and it.source_index == 0)
    assert set(job.failures) == {failing} and job.failures[failing][1] == 2
    assert set(job.results) == {it.item_id for it in job.plan} - {failing}
    assert generated == sum(sum(t.column("generated_tokens").to_pylist()) for t in job.results.values()) > 0
    assert not list(job.real.run.parts.glob("*.parquet"))      # every write went through the job
    assert len(job.models) == 1                                 # the actors' weights were shown to the job
    assert job.kernels == {"torch"}                             # and the kernel they run (a tiny model: torch)

"""One set of actors for several jobs: a study's cells share actors that load the model once, each
cell on a new engine; an item always runs under its own job's config, also on an actor that Ray
restarted with an earlier job's arguments."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_fixtures import WorkerKiller, job_config, same_rows, write_docs

from pipeline.cluster import ActorSlots, DartWorker, WorkerPool, pool_key
from pipeline.config import parse_config
from pipeline.driver import run_job
from pipeline.run import Job
from pipeline.study.config import StudyConfig, expand, merge
from pipeline.study.sweep import run_study

DENSE = {"method": "dense"}
HALF = {"method": "dart", "keep_ratio": 0.5, "mask_step": 0}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_docs(tmp_path_factory.mktemp("docs"), bad_rows=False)




def parts(summary: dict) -> pa.Table:
    return pq.read_table(f"{summary['run_dir']}/parts")


def elsewhere(config, out) -> object:
    """The same job writing under another output folder (same fingerprint)."""
    return parse_config(merge(config.model_dump(mode="json"), {"output": {"dir": str(out)}}))


# ---- in process: the worker ---------------------------------------------------------------------
def test_worker_runs_an_item_under_the_config_it_carries(inputs, tiny_model_dir, tmp_path):
    """A worker set up for job A (dense) given an item of job B (dart, batch 1) computes B's rows, then
    A's again: the engine is rebuilt over the same loaded model, unpatched in between."""
    a = Job.open(job_config("summarize", tiny_model_dir, inputs[:1], tmp_path / "a", dart=DENSE))
    b = Job.open(job_config("summarize", tiny_model_dir, inputs[:1], tmp_path / "b", dart=HALF,
                            pool={"batch_size": 1}))
    item = a.plan[0]
    assert b.plan[0] == item and a.fingerprint != b.fingerprint
    worker = DartWorker(*a.worker_args())
    dense = worker.run_item(item, a.rows(item), 1)
    pruned = worker.run_item(item, a.rows(item), 1, None, b.worker_args())
    again = worker.run_item(item, a.rows(item), 1, None, a.worker_args())
    alone = DartWorker(*b.worker_args()).run_item(item, b.rows(item), 1)
    assert same_rows(pruned, alone)
    assert not same_rows(pruned, dense)                 # B's config shows in its rows
    assert same_rows(again, dense)
    assert set(pruned["config_fingerprint"].to_pylist()) == {b.fingerprint}
    assert min(pruned["applied_sparsity"].to_pylist()) > 0 == max(again["applied_sparsity"].to_pylist())
    info = worker.describe()
    assert info["engines_built"] == 3 and info["config_fingerprint"] == a.fingerprint


def test_worker_refuses_a_config_for_another_model(inputs, tiny_model_dir, tmp_path):
    a = Job.open(job_config("summarize", tiny_model_dir, inputs[:1], tmp_path / "a"))
    other = job_config("summarize", tiny_model_dir, inputs[:1], tmp_path / "b",
                       model={"source": str(tiny_model_dir), "device": "cpu", "dtype": "bfloat16"})
    worker = DartWorker(*a.worker_args())
    with pytest.raises(ValueError, match="needs its own actors"):
        worker.configure(other.model_dump_json(), a.schema, "f" * 16)
    assert worker.describe()["config_fingerprint"] == a.fingerprint


def test_pool_key_keeps_what_actors_are_made_of(inputs, tiny_model_dir, tmp_path):
    base = job_config("summarize", tiny_model_dir, inputs, tmp_path)
    same = [job_config("summarize", tiny_model_dir, inputs, tmp_path / "x", dart=DENSE,
                       pool={"num_actors": 2, "cpus_per_actor": 1, "batch_size": 5, "max_attempts": 1})]
    other = [job_config("summarize", tiny_model_dir, inputs, tmp_path, pool={"num_actors": 1}),
             job_config("summarize", tiny_model_dir, inputs, tmp_path, pool={"in_flight_per_actor": 3}),
             job_config("summarize", tiny_model_dir, inputs, tmp_path,
                        model={"source": str(tiny_model_dir), "device": "cpu", "dtype": "float32"})]
    assert all(pool_key(c) == pool_key(base) for c in same)
    assert all(pool_key(c) != pool_key(base) for c in other)
    with pytest.raises(ValueError, match="needs other actors"):
        WorkerPool(base).ready(Job.open(other[0]))


def test_items_spread_over_every_actor_before_any_queues_a_second():
    slots = ActorSlots(["a0", "a1", "a2"], per_actor=2)
    order = []
    while (a := slots.least_loaded()) is not None:
        order.append(a)
        slots.load[a] += 1
    assert order == [0, 1, 2, 0, 1, 2]
    slots.load[1] -= 1
    slots.probes["ref"] = 2             # an actor being asked whether it is back takes nothing
    slots.load[2] = 0
    assert slots.least_loaded() == 1


# ---- on Ray -------------------------------------------------------------------------------------
def two_cell_study(model_dir, data_dir, out) -> StudyConfig:
    return StudyConfig.model_validate({
        "study": {"name": "reuse", "output": str(out), "limit": 12, "bootstrap_samples": 100,
                  "compare": [["dart", "dense"]]},
        "base": {"model": {"source": str(model_dir), "device": "cpu"},
                 "generation": {"max_new_tokens": 5, "stop_on_eos": False},
                 "pool": {"num_actors": 2, "batch_size": 2}, "summarize": {"max_document_tokens": 48},
                 "control": {"progress": False}},
        "variants": [{"name": "dense", "dart": DENSE}, {"name": "dart", "dart": {"method": "dart"}}],
        "budgets": [{"name": "k50", "dart": {"keep_ratio": 0.5}}],
        "datasets": [{"name": "docs", "job": {"task": "summarize", "input": {
            "paths": [str(data_dir)], "text_column": "document", "reference_column": "summary",
            "rows_per_item": 3}}}],
    })


def test_study_cells_share_actors_and_equal_separate_jobs(ray_cluster, inputs, tiny_model_dir, tmp_path):
    study = two_cell_study(tiny_model_dir, inputs[0].parent, tmp_path / "studies")
    out = run_study(study)
    assert out["complete"]
    runs = json.loads((study.directory / "runs.json").read_text())
    tables = [parts(r) for r in runs]
    actors = {a for t in tables for a in t["actor_id"].to_pylist()}
    assert len(actors) <= 2 and all(t.num_rows == 12 for t in tables)   # one pair of actors for both cells
    for run, table in zip(expand(study), tables):
        alone = run_job(elsewhere(run.config, tmp_path / "alone"))
        assert not set(parts(alone)["actor_id"].to_pylist()) & actors    # a job alone starts its own
        assert same_rows(table, parts(alone))


def test_actor_restarted_with_an_earlier_jobs_arguments_runs_the_current_job(ray_cluster, inputs, tiny_model_dir,
                                                                              tmp_path):
    """The actor starts for job A (dense); killed in an item of job B (dart), Ray restarts it with A's
    arguments; the retried item still runs under B's config."""
    pool_settings = {"num_actors": 1, "cpus_per_actor": 1, "batch_size": 2, "max_restarts": 1}
    a = job_config("summarize", tiny_model_dir, inputs[:1], tmp_path / "a", dart=DENSE, pool=pool_settings)
    b = job_config("summarize", tiny_model_dir, inputs[:1], tmp_path / "b", dart=HALF, pool=pool_settings,
                   testing={"delay_seconds": 0.5})
    reference = run_job(elsewhere(b, tmp_path / "reference"))
    killer = WorkerKiller()
    with WorkerPool(a) as pool:
        dense = run_job(a, pool)
        killer.start()
        try:
            pruned = run_job(b, pool)
        finally:
            killer.stop.set()
            killer.join()
    assert killer.killed is not None and dense["complete"] and pruned["complete"]
    table = parts(pruned)
    assert max(table["attempt"].to_pylist()) == 2                          # the killed item ran again
    assert set(table["actor_id"].to_pylist()) == set(parts(dense)["actor_id"].to_pylist())   # restarted, not new
    assert same_rows(table, parts(reference))
    assert not same_rows(table, parts(dense))

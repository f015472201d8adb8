"""pipeline.cluster.raydata: the job's rows from `ray.data.Dataset.map_batches`, bad rows as error rows."""
from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_fixtures import job_config, write_docs

from pipeline.cluster import JOB_ONLY_COLUMNS, DartBatchMapper, map_batches_options
from pipeline.cluster.placement import actor_need
from pipeline.driver import run_job
from pipeline.run import BATCH_DEPENDENT, RUN_DEPENDENT

BAD_IDS = ["doc-008", "doc-011", "doc-014"]     # null, empty and too long documents (write_docs)


def close(a, b) -> bool:
    """Equal, floats up to the float32 noise of summing in another batch (drift cosines, thresholds)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_docs(tmp_path_factory.mktemp("docs"))


@pytest.fixture(scope="module")
def config(inputs, tiny_model_dir, tmp_path_factory):
    return job_config("summarize", tiny_model_dir, inputs, tmp_path_factory.mktemp("out"),
                      input={"passthrough_columns": ["topic"]})


@pytest.fixture(scope="module")
def mapper(config):
    """The transform built in this process (no Ray), as an actor builds it."""
    return DartBatchMapper(config)


def test_a_pool_ray_data_would_wait_on_forever_is_refused(ray_cluster, config):
    # the session's Ray has 2 CPUs: 2 actors of 1 CPU leave none to Ray Data's reads; 3 cannot be placed
    with pytest.raises(ValueError, match=r"pool.num_actors=2 x pool.cpus_per_actor=1 take all 2 CPUs"):
        map_batches_options(config, ["pool.num_actors=2"])
    with pytest.raises(ValueError, match=r"cannot place pool.num_actors=3"):
        map_batches_options(config, ["pool.num_actors=3"])
    assert map_batches_options(config, ["pool.num_actors=1"])["num_cpus"] == 1


def test_a_pool_the_memory_cannot_hold_is_made_smaller_as_the_jobs_is(ray_cluster, config, caplog):
    # 2 actors of 1 CPU would take both CPUs (refused above); at 0.6 of the node's memory each, one fits
    gb = round(0.6 * ray_cluster.nodes()[0]["Resources"]["memory"] / 1e9, 2)
    with caplog.at_level("WARNING", logger="pipeline.cluster.placement"):
        options = map_batches_options(config, ["pool.num_actors=2", f"pool.memory_per_actor_gb={gb}"])
    assert options["compute"].max_size == 1 and options["num_cpus"] == 1      # Ray Data's tasks keep a CPU
    assert options["memory"] == int(gb * 1e9)
    assert any("pool.num_actors=2 lowered to 1, of 1 CPU(s)" in r.getMessage() for r in caplog.records)
    assert map_batches_options(config, ["pool.num_actors=1"])["memory"] == actor_need(config)   # the estimate, asked


def test_map_batches_rows_equal_the_jobs_rows(ray_cluster, config, inputs):
    job_rows = pq.read_table(f"{run_job(config)['run_dir']}/parts")
    dataset = ray_cluster.data.read_parquet([str(p) for p in inputs])
    # One actor: the session's Ray has 2 CPUs, and Ray Data's read tasks need one beside the pool.
    mapped = dataset.map_batches(DartBatchMapper, **map_batches_options(config, ["pool.num_actors=1"]))
    rows = pa.concat_tables(ray_cluster.get(mapped.to_arrow_refs()))
    assert set(rows.column_names) == set(job_rows.column_names) - set(JOB_ONLY_COLUMNS)
    # BATCH_DEPENDENT: which rows shared a forward is Ray Data's batching here, the job's items there
    deterministic = [c for c in rows.column_names if c not in RUN_DEPENDENT + BATCH_DEPENDENT]
    assert {"id", "output", "status", "error", "rouge_l", "generated_tokens", "applied_sparsity",
            "sparsity_per_token", "ffn_flops_kept", "drift_events", "topic"} <= set(deterministic)
    mine, theirs = rows.sort_by("id"), job_rows.sort_by("id")
    assert [c for c in deterministic if not close(mine[c].to_pylist(), theirs[c].to_pylist())] == []
    errors = rows.filter(pa.compute.equal(rows["status"], "error"))
    assert sorted(errors.column("id").to_pylist()) == BAD_IDS
    assert all(errors.column("error").to_pylist())
    assert rows.num_rows == job_rows.num_rows and all(rows.column("actor_id").to_pylist())


def test_numpy_and_pandas_batches_give_the_pyarrow_rows(mapper, inputs):
    batch = pq.read_table(inputs[1])
    expected = mapper(batch)
    steady = [c for c in expected.column_names if c not in RUN_DEPENDENT]
    numpy_batch = {c: batch.column(c).to_numpy(zero_copy_only=False) for c in batch.column_names}
    assert mapper(numpy_batch).select(steady).equals(expected.select(steady))
    # pandas strings come back as large_string: the values, not the types, are the job's
    assert mapper(batch.to_pandas()).select(steady).to_pylist() == expected.select(steady).to_pylist()
    assert expected.num_rows == batch.num_rows
    assert sorted(expected.filter(pa.compute.equal(expected["status"], "error"))["id"].to_pylist()) == BAD_IDS


@pytest.mark.parametrize("as_numpy", [False, True])
def test_bad_ids_become_error_rows_with_null_ids(mapper, as_numpy):
    batch = pa.table({"id": pa.array([b"doc-a", None, b"\xff\xfe", b"doc-b"], pa.binary()),
                      "document": ["a cat sat on the mat.", "a dog ran.", "the sun.", None],
                      "summary": ["a", "b", "c", "d"], "topic": ["t0", "t1", "t2", "t0"]})
    if as_numpy:
        batch = {c: batch.column(c).to_numpy(zero_copy_only=False) for c in batch.column_names}
    rows = mapper(batch).select(["id", "status", "error", "topic"]).to_pylist()
    assert [r["id"] for r in rows] == ["doc-a", None, None, "doc-b"]
    assert [r["status"] for r in rows] == ["ok", "error", "error", "error"]
    assert "is null" in rows[1]["error"] and "not valid UTF-8" in rows[2]["error"]
    assert "document (document) is null" in rows[3]["error"]
    assert [r["topic"] for r in rows] == ["t0", "t1", "t2", "t0"]


def test_a_missing_column_or_no_id_column_is_refused(mapper, config):
    with pytest.raises(ValueError, match=r"\['document'\] not in the batch"):
        mapper(pa.table({"id": ["a"], "summary": ["b"], "topic": ["t"]}))
    with pytest.raises(ValueError, match="needs input.id_column"):
        DartBatchMapper(config, ["input.id_column=null"])

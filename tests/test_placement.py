"""A pool the cluster can never place is a clear error (exit 2) before any actor exists, never a hang;
on an autoscaling cluster the wait for nodes is bounded by pool.placement_timeout_s."""
from __future__ import annotations

import contextlib
import logging
import threading
import time

import pytest
import yaml
from pipeline_fixtures import write_docs

import pipeline.cluster.placement as placement
from ray._private.state import actors
from jobs.cli import main
from pipeline.settings import PoolConfig

HANG = 60      # seconds: a run still going by then is the hang this file guards against


def run_cli(tmp_path, tiny_model_dir, pool: dict) -> tuple[int, float]:
    """The summarize CLI on the session's 2-CPU Ray, in a thread so that a hang fails the test."""
    conf = tmp_path / "job.yaml"
    conf.write_text(yaml.safe_dump({
        "model": {"source": str(tiny_model_dir), "device": "cpu"},
        "generation": {"max_new_tokens": 2},
        "input": {"paths": [str(p) for p in write_docs(tmp_path / "in")], "text_column": "document",
                  "reference_column": "summary", "rows_per_item": 3},
        "output": {"dir": str(tmp_path / "out")}, "pool": pool, "control": {"progress": False}}))
    result: list[int] = []
    began = time.monotonic()
    runner = threading.Thread(target=lambda: result.append(main("summarize", ["--config", str(conf)])), daemon=True)
    runner.start()
    runner.join(HANG)
    if runner.is_alive():
        pytest.fail(f"the job still waits for its actors after {HANG} s (pool {pool})")
    return result[0], time.monotonic() - began


@pytest.mark.parametrize("pool, says", [
    ({"num_actors": 3, "cpus_per_actor": 1}, "pool.num_actors=3 actors of pool.cpus_per_actor=1 CPU(s)"),
    ({"num_actors": 1, "cpus_per_actor": 3}, "pool.cpus_per_actor=3 CPU(s)"),
    ({"num_actors": 1, "num_gpus_per_actor": 1}, "pool.num_gpus_per_actor=1 GPU(s)"),
    ({"num_actors": 2, "num_gpus_per_actor": 0.5}, "pool.num_gpus_per_actor=0.5 GPU(s)"),
])
def test_unplaceable_pool_fails_fast_naming_the_keys(ray_cluster, tiny_model_dir, tmp_path, caplog, capsys,
                                                     pool, says):
    with caplog.at_level(logging.ERROR):
        code, seconds = run_cli(tmp_path, tiny_model_dir, pool)
    said = caplog.text + capsys.readouterr().err          # the CLI's one error line
    assert code == 2 and seconds < HANG
    assert says in said and ("(at most 0 fit)" in said or "(at most 2 fit)" in said)
    assert "ray.cluster_resources() {'CPU': 2.0, 'GPU': 0}" in said and "no autoscaler" in said
    # none of ours was created (Ray Data's own actors of other tests may live on in the session)
    assert not [a for a in actors().values() if a["ActorClassName"] == "DartWorker" and a["State"] != "DEAD"]


@contextlib.contextmanager
def published_node_types(*groups: tuple[dict[str, int], int, int]):
    """The cluster config an autoscaler publishes to the GCS (KubeRay, autoscaler v2), written where it
    writes it: node types of (resources, min nodes, max nodes). No autoscaler runs on this machine, so
    no node ever comes."""
    from ray._private.state import state
    from ray._raylet import GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    config = autoscaler_pb2.ClusterConfig(node_group_configs=[
        autoscaler_pb2.NodeGroupConfig(name=f"type{k}", resources=r, min_count=lo, max_count=hi)
        for k, (r, lo, hi) in enumerate(groups)])
    where = {"key": GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode(), "namespace": GCS_AUTOSCALER_STATE_NAMESPACE.encode()}
    _internal_kv_put(value=config.SerializeToString(), overwrite=True, **where)
    try:
        assert state.get_cluster_config() == config
        yield
    finally:
        _internal_kv_del(**where)


def test_autoscaling_cluster_waits_a_bounded_time_then_fails(ray_cluster):
    pool = PoolConfig(num_actors=3, placement_timeout_s=2)
    began = time.monotonic()
    with published_node_types(({"CPU": 1}, 0, 4)), \
            pytest.raises(ValueError, match=r"pool.num_actors=3 .*within pool.placement_timeout_s=2 s"):
        placement.check_placement(pool)          # 4 more 1-CPU nodes could place 3 actors: it waits
    assert 2 <= time.monotonic() - began < 30
    from ray.util import placement_group_table

    assert all(group["state"] == "REMOVED" for group in placement_group_table().values())   # demand withdrawn


def test_autoscaling_cluster_that_can_never_place_fails_at_once(ray_cluster):
    began = time.monotonic()
    with published_node_types(({"CPU": 8}, 0, -1)):           # unbounded CPU nodes, none with a GPU
        with pytest.raises(ValueError, match=r"pool.num_gpus_per_actor=1 GPU.*autoscaler's node types"):
            placement.check_placement(PoolConfig(num_actors=1, num_gpus_per_actor=1, placement_timeout_s=600))
        placement.check_placement(PoolConfig(num_actors=2, placement_timeout_s=600))   # fits now: no wait
    assert time.monotonic() - began < 10


def test_only_node_types_that_can_grow_make_a_cluster_autoscaling(ray_cluster):
    assert placement.autoscaler_node_types() is None                  # a local Ray publishes nothing
    with published_node_types(({"CPU": 2}, 1, 1)):                    # fixed: min = max
        assert placement.autoscaler_node_types() is None
        with pytest.raises(ValueError, match="no autoscaler can add nodes"):
            placement.check_placement(PoolConfig(num_actors=3, placement_timeout_s=600))
    with published_node_types(({"CPU": 2}, 1, 1), ({"CPU": 4, "GPU": 1}, 0, 3)):
        assert placement.autoscaler_node_types() == [({"CPU": 2}, 1), ({"CPU": 4, "GPU": 1}, 3)]

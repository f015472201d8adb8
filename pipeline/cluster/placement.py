"""Can the cluster place the actor pool? Checked before any actor is created, so a pool the cluster
can never hold is a clear error instead of actors that wait forever; a CPU pool whose actors would
outgrow the nodes' memory is made smaller, with a warning, instead of actors killed for memory."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from ..checks import actor_bytes
from ..config import JobConfig
from ..settings import PoolConfig

log = logging.getLogger(__name__)

EPS = 1e-9


def actor_demand(pool: PoolConfig) -> dict[str, float]:
    """Resources one actor asks for (the options start_actors gives Ray)."""
    demand = {"CPU": float(pool.cpus_per_actor)}
    if pool.num_gpus_per_actor:
        demand["GPU"] = float(pool.num_gpus_per_actor)
    return demand


def fits(node: dict[str, float], demand: dict[str, float]) -> int:
    """How many actors of `demand` one node of resources `node` holds."""
    return min(math.floor(node.get(name, 0) / need + EPS) for name, need in demand.items())


def node_resources() -> list[dict[str, float]]:
    """Total resources of each alive node."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def autoscaler_node_types() -> list[tuple[dict[str, float], int]] | None:
    """(resources, max nodes; -1 unbounded) of each node type an autoscaler may add, or None when the
    cluster cannot grow. The signal is the cluster config an autoscaler publishes to the GCS (KubeRay,
    autoscaler v2), read as Ray Data reads it (`cluster_autoscaler.util.is_autoscaling_enabled`): a
    node type whose max_count is -1 or above its min_count. `ray start` clusters and a local Ray have
    none."""
    from ray._private.state import state

    config = state.get_cluster_config()
    groups = [group for group in (config.node_group_configs if config else [])
              if group.resources and group.max_count != 0]
    if not any(group.max_count == -1 or group.max_count > group.min_count for group in groups):
        return None
    return [(dict(group.resources), group.max_count) for group in groups]


@dataclass(frozen=True)
class PoolSize:
    """The actors a pool starts: how many, the CPUs each asks for (its torch threads on a CPU), and the
    memory each asks Ray for (None: not asked)."""

    actors: int
    cpus: int
    memory: int | None


def actor_need(config: JobConfig) -> int | None:
    """Host bytes one of the job's actors needs: pool.memory_per_actor_gb, else the estimate; None for GPU
    actors and models the driver cannot size."""
    if config.pool.num_gpus_per_actor:
        return None
    if config.pool.memory_per_actor_gb is not None:
        return int(config.pool.memory_per_actor_gb * 1e9)
    return actor_bytes(config.model, config.dart)


def sized_by_memory(pool: PoolConfig, need: int | None, widen: bool = True) -> PoolSize:
    """pool.num_actors, or fewer where the nodes' memory (Ray's `memory` resource) cannot hold that many
    actors of `need` bytes beside the CPUs they ask for, at least one; fewer actors get the CPUs the
    others would have had (`widen`; Ray Data's own tasks need those). Kept where the need is unknown or
    an autoscaler may add nodes."""
    if need is None or autoscaler_node_types() is not None:
        return PoolSize(pool.num_actors, pool.cpus_per_actor, None)
    nodes, demand = node_resources(), actor_demand(pool)
    per_node = [min(fits(node, demand), math.floor(node.get("memory", 0) / need + EPS)) for node in nodes]
    held = sum(per_node)
    if held >= pool.num_actors:
        return PoolSize(pool.num_actors, pool.cpus_per_actor, need)
    actors, cpus = max(held, 1), pool.cpus_per_actor
    if widen and held == 0:             # the one actor takes a whole node's CPUs
        cpus = max(cpus, *(int(node.get("CPU", 0)) for node in nodes))
    elif widen:                         # fewer actors take the CPUs the others would have had
        cpus = max(cpus, min(math.floor(node.get("CPU", 0) / count + EPS) for node, count in zip(nodes, per_node) if count))
    largest = max((node.get("memory", 0) for node in nodes), default=0) / 1e9
    hint = ("a 16-bit model.dtype halves the weights; pool.memory_per_actor_gb replaces the estimate "
            "(pipeline/checks/actor_memory.py)")
    if held == 0:
        log.warning("one actor needs about %.1f GB, more than the %.1f GB of memory Ray gives a node: starting "
                    "one actor of %d CPU(s), which may run out of memory; %s", need / 1e9, largest, cpus, hint)
        return PoolSize(actors, cpus, None)
    log.warning("pool.num_actors=%d lowered to %d, of %d CPU(s) each: each actor needs about %.1f GB and the "
                "nodes' memory (Ray's memory resource, %.1f GB on the largest node) holds %d; %s",
                pool.num_actors, held, cpus, need / 1e9, largest, held, hint)
    return PoolSize(actors, cpus, need)


def describe_cluster() -> str:
    import ray

    total = ray.cluster_resources()
    total = {name: total.get(name, 0) for name in ("CPU", "GPU")}
    nodes = [{name: node.get(name, 0) for name in ("CPU", "GPU")} for node in node_resources()]
    return f"ray.cluster_resources() {total}; per node {nodes}"


def shortfall(pool: PoolConfig, placeable: int, why: str) -> ValueError:
    return ValueError(
        f"the Ray cluster cannot place pool.num_actors={pool.num_actors} actors of "
        f"pool.cpus_per_actor={pool.cpus_per_actor} CPU(s) and pool.num_gpus_per_actor={pool.num_gpus_per_actor:g} "
        f"GPU(s) each (at most {placeable} fit): it has {describe_cluster()}; {why}. "
        "Lower pool.num_actors, pool.cpus_per_actor or pool.num_gpus_per_actor, or add nodes")


def check_placement(pool: PoolConfig) -> None:
    """Raise a ValueError naming the pool keys when the cluster can never hold the pool. A fixed
    cluster is judged by its nodes' total resources, at once; on an autoscaling cluster a pool that
    its node types could hold is waited for, up to pool.placement_timeout_s."""
    demand = actor_demand(pool)
    now = sum(fits(node, demand) for node in node_resources())
    if now >= pool.num_actors:
        return
    types = autoscaler_node_types()
    if types is None:
        raise shortfall(pool, now, "no autoscaler can add nodes to it")
    at_most = now + sum(fits(resources, demand) * (pool.num_actors if count < 0 else count)
                        for resources, count in types)
    if at_most < pool.num_actors:
        raise shortfall(pool, at_most, f"nor can its autoscaler's node types {types} (resources, max nodes)")
    wait_for_nodes(pool, demand)


def wait_for_nodes(pool: PoolConfig, demand: dict[str, float]) -> None:
    """Ask the autoscaler for the pool (a placement group of one bundle per actor) and wait up to
    pool.placement_timeout_s for it; the group is removed either way, and the actors follow."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    log.info("the cluster lacks nodes for %d actor(s) of %s; waiting up to %.0f s for the autoscaler",
             pool.num_actors, demand, pool.placement_timeout_s)
    group = placement_group([demand] * pool.num_actors, strategy="PACK")
    began = time.monotonic()
    try:
        ready, _ = ray.wait([group.ready()], timeout=pool.placement_timeout_s)
    finally:
        remove_placement_group(group)
    if not ready:
        placeable = sum(fits(node, demand) for node in node_resources())
        raise shortfall(pool, placeable, "its autoscaler added no nodes that place the pool within "
                                         f"pool.placement_timeout_s={pool.placement_timeout_s:g} s")
    log.info("the cluster can place the pool after %.0f s", time.monotonic() - began)

"""The Ray actor pool: items go to idle actors; a failed attempt is retried up to pool.max_attempts."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from typing import Iterator

from .config import JobConfig
from .plan import WorkItem
from .job import Job
from .placement import check_placement
from .signals import stop_on_sigterm
from .worker import DartWorker

log = logging.getLogger(__name__)


def package_runtime_env() -> dict:
    """Ship our packages to every worker, so the checkout need not be installed (job level only)."""
    import dart

    import pipeline

    return {"py_modules": [os.path.dirname(os.path.abspath(m.__file__)) for m in (dart, pipeline)]}


def connect_ray(config: JobConfig) -> None:
    """Join pool.ray_address / RAY_ADDRESS ('auto': a running local cluster); else start a private Ray
    on loopback. Never joins a cluster by guessing: a stale or foreign session must not capture a job."""
    import ray

    if ray.is_initialized():
        return
    address = config.pool.ray_address or os.environ.get("RAY_ADDRESS")
    if address == "auto":
        ray.init(address="auto", runtime_env=package_runtime_env())
        log.info("joined the running local Ray cluster")
    elif address:  # e.g. under `ray job submit`, whose --working-dir ships the code
        ray.init(address=address)
    else:
        start_local_ray(config.pool.local_num_cpus)


@contextlib.contextmanager
def _cluster_mode_off() -> Iterator[None]:
    """Ray's single-machine mode for this process (a constant read at import) and the processes it starts."""
    from ray._private import ray_constants

    key, saved = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, ray_constants.ENABLE_RAY_CLUSTER
    saved_env = os.environ.get(key)
    os.environ[key], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved_env


def start_local_ray(num_cpus: int | None) -> None:
    """A one-node Ray whose every process listens on 127.0.0.1 only.

    In cluster mode (Linux's default) ray.init turns `_node_ip_address="127.0.0.1"` into the machine's
    routable IP, and GCS, raylet and workers then listen on all interfaces; with cluster mode off
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) they all bind 127.0.0.1. A node off loopback is shut down."""
    import ray

    with _cluster_mode_off():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", runtime_env=package_runtime_env())
    node_ip = ray._private.worker.global_worker.node.node_ip_address
    if node_ip != "127.0.0.1":
        ray.shutdown()
        raise RuntimeError(f"the local Ray came up on {node_ip}, not 127.0.0.1; refusing to run on it")
    log.info("started a local Ray on 127.0.0.1")


def start_actors(job: Job) -> list:
    """num_actors DartWorkers; waits until each has loaded its model (a load error stops the job)."""
    import ray

    pool = job.config.pool
    connect_ray(job.config)
    stop_on_sigterm()
    check_placement(pool)
    actor_cls = ray.remote(DartWorker).options(
        num_cpus=pool.cpus_per_actor, num_gpus=pool.num_gpus_per_actor,
        max_restarts=pool.max_restarts, max_task_retries=0, max_concurrency=1)
    args = job.worker_args()
    actors = [actor_cls.remote(*args) for _ in range(pool.num_actors)]
    try:
        infos = ray.get([a.describe.remote() for a in actors])
    except ray.exceptions.RayActorError as err:
        raise RuntimeError(f"a worker failed to start (model load?): {err}") from None
    for info in infos:
        log.info("actor %s on node %s, device %s", info["actor_id"][:8], info["node_id"][:8], info["device"])
    try:
        job.check_models({info["model_fingerprint"] for info in infos})
    except ValueError:
        for actor in actors:
            ray.kill(actor)
        raise
    return actors


def progress_bar(job: Job, total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="item", desc=job.config.task, disable=not job.config.control.progress,
                dynamic_ncols=True)


class ActorPool:
    """Which actors take items. An actor whose item died with it takes nothing until it answers again
    (Ray restarted it, up to pool.max_restarts); one that cannot answer is dropped from the pool."""

    def __init__(self, actors: list, per_actor: int) -> None:
        self.actors, self.per_actor = actors, per_actor
        self.load = [0] * len(actors)
        self.alive = set(range(len(actors)))
        self.probes: dict = {}     # describe() ObjectRef -> actor index

    def free(self) -> list[int]:
        paused = set(self.probes.values())
        return [a for a in sorted(self.alive - paused) if self.load[a] < self.per_actor]

    def lost_item(self, a: int) -> None:
        if a in self.alive and a not in self.probes.values():
            self.probes[self.actors[a].describe.remote()] = a

    def answered(self, ref) -> None:
        import ray

        a = self.probes.pop(ref)
        try:
            info = ray.get(ref)
            log.warning("actor %d is back (pid %s); giving it items again", a, info["pid"])
        except ray.exceptions.ActorUnavailableError:   # restarting: ask again shortly
            time.sleep(0.5)
            self.probes[self.actors[a].describe.remote()] = a
        except ray.exceptions.RayActorError as err:
            self.alive.discard(a)
            log.error("actor %d is dead (%s); %d actor(s) left", a, type(err).__name__, len(self.alive))


def run_items(job: Job, todo: list[WorkItem]) -> int:
    """Run every item in todo to a written part; returns the generated tokens of this invocation."""
    import ray

    pool = job.config.pool
    actors = start_actors(job)
    workers = ActorPool(actors, pool.in_flight_per_actor)
    queue = deque((item, 1) for item in todo)
    rows_of: dict[str, object] = {}
    in_flight: dict = {}          # ObjectRef -> (actor index, item, attempt)
    rows_done, generated, began = 0, 0, time.perf_counter()
    bar = progress_bar(job, len(todo))
    try:
        while queue or in_flight:
            for a in workers.free():  # fill idle slots, keeping items in plan order
                while queue and workers.load[a] < pool.in_flight_per_actor:
                    item, attempt = queue.popleft()
                    if item.item_id not in rows_of:
                        rows_of[item.item_id] = job.rows(item)
                    ref = actors[a].run_item.remote(item, rows_of[item.item_id], attempt, job.known_problems(item))
                    in_flight[ref] = (a, item, attempt)
                    workers.load[a] += 1
            if not in_flight and not workers.probes:
                raise RuntimeError(f"every actor died; {len(queue)} item(s) not run (rerun the job to resume)")
            ready, _ = ray.wait([*in_flight, *workers.probes], num_returns=1)
            if ready[0] in workers.probes:
                workers.answered(ready[0])
                continue
            a, item, attempt = in_flight.pop(ready[0])
            workers.load[a] -= 1
            try:
                table = ray.get(ready[0])
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as err:
                if isinstance(err, ray.exceptions.RayActorError):
                    workers.lost_item(a)
                message = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:500]}"
                if attempt < pool.max_attempts:
                    log.warning("item %s attempt %d failed (%s); retrying", item.item_id, attempt, message)
                    queue.appendleft((item, attempt + 1))
                    continue
                log.error("item %s failed %d attempts; writing error rows: %s", item.item_id, attempt, message)
                job.write_failure(item, rows_of.pop(item.item_id), message, attempt)
            else:
                rows_of.pop(item.item_id, None)
                generated += job.write_result(item, table, attempt)
            rows_done += item.num_rows
            bar.update(1)
            bar.set_postfix(rows_per_s=f"{rows_done / (time.perf_counter() - began):.2f}")
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)
    return generated

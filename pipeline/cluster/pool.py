"""The Ray actor pool: actors hosting one model, started on a job's first use and killed on close; the
jobs of a study that share the model and the pool's resources run on them one after another."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Iterator

from ..config import JobConfig
from ..failures import FILE_ONLY, WorkerSetupError
from ..inputs import WorkItem
from ..run import Job
from .dispatch import dispatch
from .placement import PoolSize, actor_need, check_placement, sized_by_memory
from .signals import stop_on_sigterm
from .worker import DartWorker, WorkerSetup

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
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) they all bind 127.0.0.1. A node off loopback is shut down.
    No idle workers are prestarted: on a small machine they compete with the actors' model loads."""
    import ray

    with _cluster_mode_off():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", runtime_env=package_runtime_env(),
                 _system_config={"prestart_worker_first_driver": False})
    node_ip = ray._private.worker.global_worker.node.node_ip_address
    if node_ip != "127.0.0.1":
        ray.shutdown()
        raise RuntimeError(f"the local Ray came up on {node_ip}, not 127.0.0.1; refusing to run on it")
    log.info("started a local Ray on 127.0.0.1")


# The pool settings fixed when an actor starts (in_flight_per_actor: the calls it runs at once); the
# others (batch_size, max_attempts) are read per job, so jobs differing only in them share actors.
ACTOR_SETTINGS = frozenset({"num_actors", "num_gpus_per_actor", "cpus_per_actor", "memory_per_actor_gb",
                            "max_restarts", "ray_address",
                            "local_num_cpus", "placement_timeout_s", "in_flight_per_actor"})


def pool_key(config: JobConfig) -> str:
    """What a job's actors are: its model section and the pool's actor settings. Jobs with equal keys
    can run on the same actors."""
    return json.dumps({"model": config.model.model_dump(mode="json"),
                       "pool": config.pool.model_dump(mode="json", include=set(ACTOR_SETTINGS))}, sort_keys=True)


class WorkerPool:
    """pool.num_actors DartWorkers for the jobs of one pool_key, started by the first job that has
    items to run and killed on close (a context manager). Each job reconfigures every actor's engine
    and has its model fingerprints checked against its run before its items go out."""

    def __init__(self, config: JobConfig, others: list[JobConfig] = ()) -> None:
        """`others`: the further jobs these actors will run (a study's cells), whose memory needs count too."""
        self.key, self.pool = pool_key(config), config.pool
        self.actors: list = []
        needs = [actor_need(c) for c in (config, *others)]
        self.need = None if None in needs else max(needs)
        self.size = PoolSize(self.pool.num_actors, self.pool.cpus_per_actor, None)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def run(self, job: Job, todo: list[WorkItem]) -> int:
        """Every item in todo to a written part; returns the generated tokens."""
        setup = self.ready(job)
        try:
            return dispatch(job, todo, self.actors, setup)
        except BaseException:
            self.close()      # the actors may still be running this job's items
            raise

    def ready(self, job: Job):
        """Actors configured for `job`, their weights checked against its run; the ObjectRef of the
        job's worker setup, which each of its items carries."""
        import ray

        if pool_key(job.config) != self.key:
            raise ValueError(f"job {job.fingerprint} needs other actors (model or pool settings differ) "
                             "than this pool's")
        args = job.worker_args()
        fresh = self.start(job.config, args) if not self.actors else set()
        infos = [self.configured(k, ref, args, k in fresh)
                 for k, ref in enumerate([a.configure.remote(*args) for a in self.actors])]
        for info in infos:
            if "load_error" in info:      # the same on every attempt: stop the job at once
                line, trace = info["load_error"]
                log.error("actor %s (pid %s): %s", info["actor_id"][:8], info["pid"], trace, extra=FILE_ONLY)
                raise WorkerSetupError(line)
        for info in infos:
            log.info("actor %s (pid %s) on node %s, device %s, %s thread(s), %s on the %s kernel, %d engine(s) built",
                     info["actor_id"][:8], info["pid"], info["node_id"][:8], info["device"], info["threads"],
                     info["model_dtype"], info["linear_kernel"], info["engines_built"])
        job.check_models({info["model_fingerprint"] for info in infos}, {info["model_dtype"] for info in infos})
        job.note_kernels({info["linear_kernel"] for info in infos})
        return ray.put(args)

    def start(self, config: JobConfig, args: WorkerSetup) -> set[int]:
        """Start every actor (Ray first); returns their indices."""
        connect_ray(config)
        stop_on_sigterm()
        check_placement(self.pool)
        self.size = sized_by_memory(self.pool, self.need)
        self.actors = [self.new_actor(args) for _ in range(self.size.actors)]
        return set(range(len(self.actors)))

    def new_actor(self, args: WorkerSetup):
        import ray

        actor_cls = ray.remote(DartWorker).options(
            num_cpus=self.size.cpus, num_gpus=self.pool.num_gpus_per_actor, memory=self.size.memory,
            max_restarts=self.pool.max_restarts, max_task_retries=0,
            max_concurrency=self.pool.in_flight_per_actor + 1)   # its items' rows share one batch; +1 answers probes
        return actor_cls.remote(*args, threads=self.size.cpus)

    def configured(self, k: int, ref, args: WorkerSetup, fresh: bool) -> dict:
        """Actor k's answer to configure; an actor that died since the last job is replaced once
        (a new one loading the model); one that cannot start stops the job."""
        import ray

        while True:
            try:
                return ray.get(ref)
            except ray.exceptions.ActorUnavailableError:     # restarting: ask again shortly
                time.sleep(0.5)
            except ray.exceptions.RayActorError as err:
                if fresh:
                    raise RuntimeError(f"a worker failed to start (model load?): {err}") from None
                log.warning("actor %d is dead (%s); starting a new one", k, type(err).__name__)
                ray.kill(self.actors[k])
                self.actors[k], fresh = self.new_actor(args), True
            ref = self.actors[k].configure.remote(*args)


def run_items(job: Job, todo: list[WorkItem], pool: WorkerPool | None = None) -> int:
    """Run every item in todo to a written part, on `pool`'s actors or (None) on actors started and
    killed for this job alone; returns the generated tokens of this invocation."""
    if pool is not None:
        return pool.run(job, todo)
    with WorkerPool(job.config) as own:
        return own.run(job, todo)

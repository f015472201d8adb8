"""Ray: connecting (or starting a private local Ray), checking placement, the actor pool, one job's
items through it with bounded retries, the actor hosting the model, SIGTERM as Ctrl-C, and the same
model, engine and task as a Ray Data transform. Ray is imported inside functions only.

    pool.py        WorkerPool, pool_key, run_items; connect_ray, start_local_ray
    dispatch.py    dispatch: one job's items to idle actors, failed attempts retried (ActorSlots)
    placement.py   check_placement: can the cluster ever place the pool
    worker.py      DartWorker: the actor; loads the model once, builds an engine and runner per job
    signals.py     SIGTERM stops the driver as Ctrl-C does
    raydata.py     DartBatchMapper and map_batches_options for Ray Data's map_batches
"""
from .dispatch import ActorSlots, dispatch
from .placement import check_placement
from .pool import WorkerPool, connect_ray, pool_key, run_items, start_local_ray
from .raydata import JOB_ONLY_COLUMNS, DartBatchMapper, map_batches_options
from .signals import by_sigterm, stop_on_sigterm
from .worker import DartWorker

__all__ = ["ActorSlots", "DartBatchMapper", "DartWorker", "JOB_ONLY_COLUMNS", "WorkerPool", "by_sigterm",
           "check_placement", "connect_ray", "dispatch", "map_batches_options", "pool_key", "run_items",
           "start_local_ray", "stop_on_sigterm"]

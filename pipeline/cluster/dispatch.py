"""One job's items through live actors: items go to idle actors; a failed attempt is retried up to
pool.max_attempts. The actors outlive the job (pool.py owns them)."""
from __future__ import annotations

import logging
import time
from collections import deque

from ..failures import WorkerSetupError
from ..inputs import WorkItem
from ..run import Job

log = logging.getLogger(__name__)


def progress_bar(job: Job, total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="item", desc=job.config.task, disable=not job.config.control.progress,
                dynamic_ncols=True)


class ActorSlots:
    """Which actors take items. An actor whose item died with it takes nothing until it answers again
    (Ray restarted it, up to pool.max_restarts); one that cannot answer is dropped for this job."""

    def __init__(self, actors: list, per_actor: int) -> None:
        self.actors, self.per_actor = actors, per_actor
        self.load = [0] * len(actors)
        self.alive = set(range(len(actors)))
        self.probes: dict = {}     # describe() ObjectRef -> actor index

    def free(self) -> list[int]:
        paused = set(self.probes.values())
        return [a for a in sorted(self.alive - paused) if self.load[a] < self.per_actor]

    def least_loaded(self) -> int | None:
        """The free actor with the fewest items, so that a job of few items spreads over every actor
        before any queues a second (None: all are full or paused)."""
        free = self.free()
        return min(free, key=lambda a: self.load[a]) if free else None

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


def dispatch(job: Job, todo: list[WorkItem], actors: list, setup) -> int:
    """Run every item in todo to a written part on `actors`; returns the generated tokens. `setup`:
    the job's worker setup (an ObjectRef of it), sent with every item, so that an actor Ray
    restarted with an earlier job's arguments runs the item under this job's config."""
    import ray

    pool = job.config.pool
    workers = ActorSlots(actors, pool.in_flight_per_actor)
    queue = deque((item, 1) for item in todo)
    rows_of: dict[str, object] = {}
    in_flight: dict = {}          # ObjectRef -> (actor index, item, attempt)
    rows_done, generated, began = 0, 0, time.perf_counter()
    bar = progress_bar(job, len(todo))
    try:
        while queue or in_flight:
            while queue and (a := workers.least_loaded()) is not None:   # items in plan order
                item, attempt = queue.popleft()
                if item.item_id not in rows_of:
                    rows_of[item.item_id] = job.rows(item)
                ref = actors[a].run_item.remote(item, rows_of[item.item_id], attempt, job.known_problems(item), setup)
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
                if isinstance(getattr(err, "cause", None), WorkerSetupError):
                    raise err.cause from None     # a restarted actor without its model: not worth retrying
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
    return generated

"""One continuous batch shared by the calls an actor runs at once: the rows of every queued work item
decode side by side, so a slot freed by a finished row (of any item) is refilled at once."""
from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepFailed:
    """A row lost to a batch step that raised: the call it belongs to fails (and its item is retried)."""

    error: Exception


class SharedBatch:
    """Callers on several threads submit rows and each waits for its own; whichever caller holds the
    lock drives the batch one step, so the engine runs one forward at a time and never waits idle
    while rows are queued. Rows are posted to an inbox that each step takes in, so a caller never
    waits for the lock to submit. `lock` also guards any other use of the engine (e.g. scoring)."""

    def __init__(self, engine, gen, max_rows: int) -> None:
        self.engine, self.gen, self.max_rows = engine, gen, max_rows
        self.batcher = self.new_batcher()
        self.lock = threading.Lock()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.finished: dict[Hashable, Any] = {}
        self.calls = itertools.count()

    def new_batcher(self):
        from dart.scheduler import ContinuousBatcher

        return ContinuousBatcher(self.engine, self.gen, self.max_rows)

    def generate(self, prompts: Sequence[tuple[Sequence[int], int, Sequence[int]]]) -> list[Any]:
        """(prompt ids, seed, continuation ids to score or ()) per row -> its GenerationResult, or the
        ValueError refusing its prompt."""
        from dart.scheduler import Request

        call = next(self.calls)
        keys = [(call, k) for k in range(len(prompts))]
        self.inbox.put([Request(key, *row) for key, row in zip(keys, prompts)])
        while True:
            with self.lock:
                while not self.inbox.empty():
                    self.batcher.submit(self.inbox.get())
                if all(key in self.finished for key in keys):
                    results = [self.finished.pop(key) for key in keys]
                    break
                self.advance()
        failed = next((r for r in results if isinstance(r, StepFailed)), None)
        if failed is not None:
            raise RuntimeError(f"a step of the actor's batch failed: {failed.error!r}") from failed.error
        return results

    def advance(self) -> None:
        """One step of the batch (lock held). A step that raises fails every row in flight, of every caller:
        the batch's cache and states are no longer consistent."""
        try:
            self.finished.update(self.batcher.step())
        except Exception as err:
            lost = [row.request.key for row in self.batcher.rows] + [r.key for r in self.batcher.waiting]
            self.finished.update((key, StepFailed(err)) for key in lost)
            self.batcher = self.new_batcher()
            self.engine.release_gathered()

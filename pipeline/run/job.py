"""One run of one job config: its plan, its run directory, reading an item's rows, writing its result."""
from __future__ import annotations

import logging
import os
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..checks import check_hub_source, check_model
from ..config import JobConfig, dump_config
from ..failures import first_line
from ..inputs import SourceFile, WorkItem, check_inputs, error_part, find_duplicate_ids, plan_digest, plan_items, read_rows
from .faults import is_storage_fault, reading, writing
from .provenance import Provenance
from .schema import output_schema
from .store import RunDir
from .summary import summarize_table

log = logging.getLogger(__name__)


class Job:
    """What the pool works through. Everything here is decided before any work runs; the run
    directory on disk is the only state that changes (one part and marker per finished item)."""

    def __init__(self, config: JobConfig, sources: list[SourceFile], plan: list[WorkItem],
                 duplicates: dict[tuple[int, int], str]) -> None:
        self.config, self.sources, self.plan = config, sources, plan
        self.duplicates = duplicates       # (source index, row) -> error, for rows repeating an id
        self.model_dtypes: set[str] = set()    # the weight dtypes the actors ran
        self.linear_kernels: set[str] = set()  # the matmul kernels they ran (dart.linear_kernel)
        passthrough = [sources[0].schema.field(c) for c in config.input.passthrough_columns] if sources else []
        self.schema: pa.Schema = output_schema(config.task, passthrough)
        self.fingerprint = config.fingerprint(plan_digest(plan))
        try:
            self.run = RunDir.open(config.output.dir, config.task, self.fingerprint, dump_config(config), plan,
                                   self.schema, config.output.storage_options)
        except ValueError:
            raise
        except Exception as err:      # a disk, or a store that is unreachable or refuses the credentials
            if isinstance(err, TypeError) and config.output.storage_options:
                raise ValueError(f"output.storage_options {config.output.storage_options} are not options of "
                                 f"the store's filesystem ({first_line(err)})") from None
            if not is_storage_fault(err):
                raise
            raise ValueError(f"output.dir {config.output.dir!r} cannot hold a run ({type(err).__name__}: "
                             f"{getattr(err, 'strerror', None) or first_line(err)}); choose a writable folder, "
                             "or check the object store's address and credentials") from None
        self.provenance = Provenance(self.run)

    @classmethod
    def open(cls, config: JobConfig) -> "Job":
        """Check every input, plan the items, open (or resume) the run directory."""
        inp = config.input
        check_model(config)
        check_hub_source(config.model, local_actors=not (config.pool.ray_address or os.environ.get("RAY_ADDRESS")))
        sources = check_inputs(inp, config.output.dir)
        plan = plan_items(sources, inp.rows_per_item, inp.limit)
        job = cls(config, sources, plan, find_duplicate_ids(sources, plan, inp.id_column))
        log.info("%d input file(s), %d rows, %d work items; run %s", len(sources),
                 sum(s.num_rows for s in sources), len(plan), job.run.root)
        return job

    # ---- what to run ---------------------------------------------------------------------------
    def unfinished(self) -> list[WorkItem]:
        """Items without a finished part, in plan order (half-written parts are removed first); with
        control.retry_failed, also the items whose rows became error rows after pool.max_attempts."""
        self.run.clean_temp()
        retry = self.config.control.retry_failed
        markers = [self.run.done_marker(it) for it in self.plan]
        failed = [it for it, m in zip(self.plan, markers) if m is not None and m.get("status") == "failed"]
        todo = [it for it, m in zip(self.plan, markers) if m is None or (retry and it in failed)]
        if retry and failed:
            log.warning("retrying %d failed item(s) (control.retry_failed)", len(failed))
        self.provenance.check_inputs(self.sources, anything_done=any(m is not None for m in markers))
        if len(todo) < len(self.plan):
            log.info("%d of %d work items already done; skipping them", len(self.plan) - len(todo), len(self.plan))
        return todo

    def rows(self, item: WorkItem) -> pa.Table:
        """The input columns the task reads, for the item's rows."""
        source = self.sources[item.source_index]
        with reading(source.uri):
            return read_rows(source, item.start, item.stop, self.config.input.columns)

    def known_problems(self, item: WorkItem) -> dict[int, str]:
        """Problems found before work in this item's rows, by row offset within the item."""
        found = ((row, self.duplicates.get((item.source_index, row))) for row in range(item.start, item.stop))
        return {row - item.start: error for row, error in found if error is not None}

    def worker_args(self) -> tuple[str, pa.Schema, str]:
        """What a worker needs to turn items into parts: (config JSON, output schema, fingerprint)."""
        return self.config.model_dump_json(), self.schema, self.fingerprint

    # ---- results -------------------------------------------------------------------------------
    def check_models(self, fingerprints: set[str], dtypes: set[str] = frozenset()) -> None:
        """Refuses (ValueError) models whose weights are not those of the run's finished items; `dtypes`:
        the actors' weight dtypes (recorded, and named when the weights differ)."""
        self.model_dtypes |= dtypes
        recorded = []
        if self.provenance.model is None:
            done = [it for it in self.plan if self.run.is_done(it)]
            if done:
                column = self.run.read(done, columns=["model_fingerprint"]).column("model_fingerprint")
                recorded = sorted(v for v in pc.unique(column).to_pylist() if v)
        self.provenance.check_model(fingerprints, recorded, dtypes)

    def note_kernels(self, kernels: set[str]) -> None:
        """Record the matmul kernels the actors run, and say once when they differ: `linear_kernel: auto`
        measures each machine, and rows computed on other kernels round differently (DART's kept
        neurons follow the rounding), so the same rows may come out differently on other machines."""
        differed = len(self.linear_kernels) > 1
        self.linear_kernels |= kernels
        if len(self.linear_kernels) > 1 and not differed:
            log.warning("this run's actors run different matmul kernels (%s: dart.linear_kernel auto measured "
                        "each machine), so their rows round differently; set dart.linear_kernel to one of them "
                        "for rows that do not depend on the machine", ", ".join(sorted(self.linear_kernels)))

    def write_result(self, item: WorkItem, table: pa.Table, attempts: int) -> int:
        """A worker's part for the item; returns its generated tokens."""
        self.check_models(set(pc.unique(table["model_fingerprint"]).to_pylist()) - {None})
        errors = table.num_rows - pc.sum(pc.equal(table["status"], "ok")).as_py()
        with writing(self.run.root):
            self.run.write_part(item, table, {"status": "done", "attempts": attempts, "error_rows": errors})
        return pc.sum(table["generated_tokens"]).as_py() or 0

    def write_failure(self, item: WorkItem, rows: pa.Table, error: str, attempts: int) -> None:
        """An item that failed every attempt: its rows become error rows and the job goes on."""
        cfg = self.config
        common = {"model": cfg.model.source, "dart_method": cfg.dart.method,
                  "config_fingerprint": self.fingerprint, "attempt": attempts}
        table = error_part(item, rows, cfg.input.id_column, error, common, self.schema,
                           list(cfg.input.passthrough_columns))
        with writing(self.run.root):
            self.run.write_part(item, table, {"status": "failed", "attempts": attempts, "error": error})

    def done_items(self) -> int:
        return sum(self.run.is_done(it) for it in self.plan)

    def close(self, extra: dict[str, Any]) -> dict[str, Any]:
        """The run's summary from the parts on disk; a run with every item done is marked finished."""
        markers = {it.item_id: self.run.done_marker(it) for it in self.plan}
        done = [it for it in self.plan if markers[it.item_id] is not None]
        failed = sum(markers[it.item_id].get("status") == "failed" for it in done)   # every attempt failed
        summary = {"run_dir": str(self.run.root), "config_fingerprint": self.fingerprint,
                   "task": self.config.task, "planned_items": len(self.plan), "done_items": len(done),
                   "complete": len(done) == len(self.plan), "failed_items": failed,
                   "model_dtype": ",".join(sorted(self.model_dtypes)) or None,
                   "linear_kernel": ",".join(sorted(self.linear_kernels)) or None, **extra}
        if failed:
            summary["retry_hint"] = (f"{failed} item(s) failed all pool.max_attempts attempts and hold error "
                                     "rows; rerun with control.retry_failed=true to retry them")
            log.warning("%s", summary["retry_hint"])
        if done or not self.plan:
            summary.update(summarize_table(self.run.read(done), self.config.task))
        if summary["complete"]:
            with writing(self.run.root):
                self.run.finish(summary)
        log.info("run %s: %d/%d items done", self.run.root, len(done), len(self.plan))
        return summary

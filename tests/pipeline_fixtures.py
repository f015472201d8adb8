"""Fixtures of the pipeline and job tests (imported by them; shared ones live in conftest.py)."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import JobConfig, parse_config
from pipeline.run import BATCH_DEPENDENT, RUN_DEPENDENT

ROOT = Path(__file__).parents[1]
WORDS = "the a cat dog sat ran on under mat log sun rain city river bank loan".split()

# Rows per file, and rows per item: 7 + 9 + 10 rows in items of 3 -> 3 + 3 + 4 = 10 work items.
FILE_ROWS = (7, 9, 10)
ROWS_PER_ITEM = 3


def driver_env(ray_cluster) -> dict:
    """The environment of a driver started as a subprocess that joins the session's Ray cluster. That
    cluster runs in Ray's single-machine mode (loopback only); its clients must too."""
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def sentence(i: int, n: int = 12) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n)) + "."


def write_docs(directory: Path, bad_rows: bool = True) -> list[Path]:
    """Three Parquet files of (id, document, summary, topic); file 2 holds the bad documents."""
    directory.mkdir(parents=True, exist_ok=True)
    paths, n = [], 0
    for f, rows in enumerate(FILE_ROWS):
        ids = [f"doc-{n + r:03d}" for r in range(rows)]
        docs = [sentence(n + r, 6 + (n + r) % 9) for r in range(rows)]
        if bad_rows and f == 1:
            docs[1], docs[4], docs[7] = None, "   ", "x" * 5000     # null, empty, too long
        table = pa.table({"id": ids, "document": docs, "summary": [sentence(r, 5) for r in range(rows)],
                          "topic": [f"t{(n + r) % 3}" for r in range(rows)]})
        path = directory / f"part-{f}.parquet"
        pq.write_table(table, path, row_group_size=4)   # several row groups per file
        paths.append(path)
        n += rows
    return paths


def job_config(task: str, model_dir: Path, paths: list[Path | str], out: Path, **sections: Any) -> JobConfig:
    """A small, fast config on the tiny model; sections override whole keys of the plain data."""
    data: dict[str, Any] = {
        "task": task,
        "model": {"source": str(model_dir), "device": "cpu"},
        "dart": {"method": "dart", "keep_ratio": 0.5},
        "generation": {"max_new_tokens": 4},
        "input": {"paths": [str(p) for p in paths], "rows_per_item": ROWS_PER_ITEM, "max_text_chars": 2000},
        "output": {"dir": str(out)},
        "pool": {"num_actors": 2, "cpus_per_actor": 1, "batch_size": 2},
        "summarize": {"max_document_tokens": 48},
        "control": {"progress": False},
    }
    if task == "summarize":
        data["input"].update(text_column="document", reference_column="summary")
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(data)


def own_rows(table: pa.Table) -> list[dict]:
    """Rows in (source, row) order (id order without those columns), with only what each row computed
    itself: not where and when it ran, nor what it shared with the rows of its forwards."""
    keep = [n for n in table.column_names if n not in RUN_DEPENDENT + BATCH_DEPENDENT]
    order = [("source", "ascending"), ("row_index", "ascending")] if "row_index" in keep else [("id", "ascending")]
    return table.select(keep).sort_by(order).to_pylist()


def close(a: Any, b: Any, tol: float = 1e-5) -> bool:
    """Equal, floats within `tol` (a row's own floats vary in the last bits with the shapes it ran in)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tol * max(1.0, abs(a), abs(b))
    return a == b


def same_rows(a: pa.Table, b: pa.Table) -> bool:
    """The two tables hold the same rows, each computing the same (own_rows, close)."""
    return close(own_rows(a), own_rows(b))


WORKER_TITLE = "ray::DartWorker"          # Ray's process title of our actors; ".run_item" while in an item


def our_workers() -> list[psutil.Process]:
    """DartWorker actor processes of this session's cluster only (descendants of this process:
    other people's Ray clusters on the machine are never touched)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.cmdline() and proc.cmdline()[0].startswith(WORKER_TITLE):
                found.append(proc)
        except psutil.Error:
            continue
    return found


class WorkerKiller(threading.Thread):
    """SIGKILLs the first of our actors seen inside run_item, once."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.killed: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.killed is None:
            for proc in our_workers():
                try:
                    if proc.cmdline()[0].startswith(f"{WORKER_TITLE}.run_item"):
                        time.sleep(0.1)                     # well inside the item (it sleeps 0.5 s)
                        os.kill(proc.pid, signal.SIGKILL)
                        self.killed = proc.pid
                        return
                except (psutil.Error, ProcessLookupError):
                    continue
            time.sleep(0.05)


def fresh_s3_clients() -> None:
    """Forget s3fs's cached filesystems: each holds the endpoint (AWS_ENDPOINT_URL) it was made with,
    and a test that points the environment at another S3 server must not reach the old one."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()

"""Fixtures of the pipeline and job tests (imported by them; shared ones live in conftest.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import JobConfig, parse_config

WORDS = "the a cat dog sat ran on under mat log sun rain city river bank loan".split()

# Rows per file, and rows per item: 7 + 9 + 10 rows in items of 3 -> 3 + 3 + 4 = 10 work items.
FILE_ROWS = (7, 9, 10)
ROWS_PER_ITEM = 3


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

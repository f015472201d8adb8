"""Planning at scale: time and peak driver memory of `Job.open` (inputs checked, plan made, duplicate
ids found, run directory opened) on a generated input of string ids with planted duplicates.

    python -m bench.plan_scale [--rows 10000000 --files 4 --duplicates 25]

The input is written to a temp dir (about 30 bytes a row), then `Job.open` runs in a fresh process
whose peak RSS (getrusage, so Arrow's buffers count too) is reported with the RSS after its imports.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

CHUNK = 1_000_000
WORDS = pa.array(["a cat sat on the mat.", "rain over the river bank.", "the city loan ran out.",
                  "a dog ran under the log.", "sun on the city."])


def planted_pairs(rows: int, count: int, seed: int = 13) -> dict[int, int]:
    """row -> the earlier row whose id it repeats."""
    rng = random.Random(seed)
    pairs: dict[int, int] = {}
    while len(pairs) < count:
        src, dst = sorted(rng.sample(range(rows), 2))
        if src not in pairs and dst not in pairs and dst not in pairs.values():   # no chains
            pairs[dst] = src
    return pairs


def id_text(numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise("id-", pc.utf8_lpad(pa.array(numbers).cast(pa.string()), 10, "0"), "")


def write_input(root: Path, rows: int, files: int, pairs: dict[int, int]) -> list[Path]:
    """`files` Parquet files of (id, document) in chunks of CHUNK rows (row groups of CHUNK/4)."""
    paths, per_file = [], -(-rows // files)
    dst = np.array(sorted(pairs), np.int64)
    src = np.array([pairs[d] for d in dst.tolist()], np.int64)
    for f, first in enumerate(range(0, rows, per_file)):
        paths.append(root / f"part-{f}.parquet")
        with pq.ParquetWriter(paths[-1], pa.schema([("id", pa.string()), ("document", pa.string())])) as out:
            for start in range(first, min(first + per_file, rows), CHUNK):
                numbers = np.arange(start, min(start + CHUNK, first + per_file, rows))
                hit = np.isin(numbers, dst)
                numbers[hit] = src[np.searchsorted(dst, numbers[hit])]
                out.write_table(pa.table({"id": id_text(numbers), "document": WORDS.take(pa.array(numbers % 5))}),
                                row_group_size=CHUNK // 4)
    return paths


def measure(root: Path, rows_per_item: int) -> dict:
    """In this (fresh) process: Job.open on every file under root; figures as a dict."""
    from pipeline.config import parse_config
    from pipeline.run import Job

    after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    config = parse_config({
        "task": "summarize", "model": {"source": str(root / "model"), "device": "cpu"},   # never loaded
        "input": {"paths": [str(root / "in")], "text_column": "document", "rows_per_item": rows_per_item},
        "output": {"dir": str(root / "out")}, "control": {"progress": False}})
    began = time.perf_counter()
    job = Job.open(config)
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_imports_mib": after_imports / 1024, "items": len(job.plan),
            "rows": sum(it.num_rows for it in job.plan), "duplicates": len(job.duplicates)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.plan_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the generated input")
    parser.add_argument("--files", type=int, default=4, help="Parquet files the rows are split over")
    parser.add_argument("--duplicates", type=int, default=25, help="rows that repeat an earlier row's id")
    parser.add_argument("--rows-per-item", type=int, default=64, help="input.rows_per_item of the plan")
    parser.add_argument("--measure", help=argparse.SUPPRESS)    # the fresh process: a prepared root
    args = parser.parse_args(argv)
    if args.measure:
        figures = measure(Path(args.measure), args.rows_per_item)
        sys.stdout.write(json.dumps(figures) + "\n")
        return figures
    with tempfile.TemporaryDirectory(prefix="plan-scale-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        (root / "model").mkdir()
        began = time.perf_counter()
        pairs = planted_pairs(args.rows, args.duplicates)
        paths = write_input(root / "in", args.rows, args.files, pairs)
        made = time.perf_counter() - began
        size = sum(p.stat().st_size for p in paths) / 2 ** 20
        proc = subprocess.run([sys.executable, "-m", "bench.plan_scale", "--measure", str(root),
                               "--rows-per-item", str(args.rows_per_item)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"planning failed:\n{proc.stderr[-3000:]}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    if figures["duplicates"] != len(pairs):
        raise RuntimeError(f"found {figures['duplicates']} duplicates, planted {len(pairs)}")
    sys.stdout.write(
        f"Planning {figures['rows']:,} rows ({len(paths)} Parquet files, {size:.0f} MiB, written in {made:.0f} s; "
        f"{args.duplicates} planted duplicate ids, all found) into {figures['items']:,} items:\n"
        f"| Job.open seconds | peak driver RSS MiB | RSS after imports MiB |\n|---|---|---|\n"
        f"| {figures['seconds']:.1f} | {figures['peak_rss_mib']:.0f} | {figures['rss_after_imports_mib']:.0f} |\n")
    return figures


if __name__ == "__main__":
    main()

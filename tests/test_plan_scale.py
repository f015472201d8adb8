"""The duplicate-id check at scale: exact (no false duplicates, none missed) while it streams ids in
bounded batches; 200k rows over three files of many row groups, duplicates planted across both."""
from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_fixtures import job_config

import pipeline.inputs.preflight as preflight
from pipeline.run import Job

FILE_ROWS = (90_000, 70_000, 40_000)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Three files of unique ids, then later rows overwritten with earlier rows' ids (some thrice)
    and a few nulls; returns (paths, ids in plan order)."""
    rng = random.Random(13)
    ids: list[str | None] = [f"r{n:07d}" for n in range(sum(FILE_ROWS))]
    for _ in range(40):
        src, dst = sorted(rng.sample(range(len(ids)), 2))
        ids[dst] = ids[src]
    ids[150_000] = ids[199_999] = ids[3]                 # one id three times, first in file 0
    for n in rng.sample(range(len(ids)), 5):
        ids[n] = None
    root = tmp_path_factory.mktemp("scale")
    paths, at = [], 0
    for f, rows in enumerate(FILE_ROWS):
        table = pa.table({"id": pa.array(ids[at:at + rows], pa.string()), "document": ["d."] * rows})
        paths.append(root / f"part-{f}.parquet")
        pq.write_table(table, paths[-1], row_group_size=7_001)
        at += rows
    return paths, ids


def expected_duplicates(paths, ids: list[str | None], limit: int | None) -> dict[tuple[int, int], str]:
    """The plain oracle: a dict over every id in plan order."""
    place = [(f, row) for f, rows in enumerate(FILE_ROWS) for row in range(rows)]
    first: dict[str, int] = {}
    found = {}
    for n, value in enumerate(ids[:limit]):
        if value is None:
            continue
        if value in first:
            f, row = place[first[value]]
            found[place[n]] = f"ValueError: duplicate id {value!r} (id); first at {paths[f]}#{row}"
        else:
            first[value] = n
    return found


@pytest.mark.parametrize("limit", [None, 150_001])
def test_duplicates_found_are_exactly_the_planted_ones(planted, tiny_model_dir, tmp_path, monkeypatch, limit):
    """Batches smaller than a row group and not aligned with it; no batch holds more than BATCH_ROWS ids."""
    paths, ids = planted
    monkeypatch.setattr(preflight, "BATCH_ROWS", 5_000)
    sizes = []

    def recording(batch, *args):
        sizes.append(len(batch))
        return id_strings(batch, *args)

    id_strings = preflight.id_strings
    monkeypatch.setattr(preflight, "id_strings", recording)
    cfg = job_config("summarize", tiny_model_dir, paths, tmp_path / "out",
                     input={"reference_column": None, "rows_per_item": 1000, "limit": limit})
    job = Job.open(cfg)
    expected = expected_duplicates(paths, ids, limit)
    assert len(expected) >= 40 if limit is None else len(expected) > 10
    assert job.duplicates == expected
    assert max(sizes) <= 5_000
    item = next(it for it in job.plan if it.source_index == 1 and it.start <= 60_000 < it.stop)   # row 150_000
    assert {item.start + k: e for k, e in job.known_problems(item).items()} == \
        {row: e for (f, row), e in expected.items() if f == 1 and item.start <= row < item.stop}
    assert f"{paths[0]}#3" in job.known_problems(item)[60_000 - item.start]


def test_hash_collisions_are_never_duplicates(planted, tiny_model_dir, tmp_path, monkeypatch):
    """A hash that collides for nearly every pair of ids: pass 2's text comparison keeps the result exact."""
    paths, ids = planted
    monkeypatch.setattr(preflight, "hash_strings",
                        lambda text: (pa.compute.utf8_length(text.fill_null("")).to_numpy() % 3).astype(np.uint64))
    cfg = job_config("summarize", tiny_model_dir, paths[2:], tmp_path / "out", input={"reference_column": None})
    job = Job.open(cfg)
    oracle_ids = ids[sum(FILE_ROWS[:2]):]
    first: dict[str, int] = {}
    expected = {}
    for row, value in enumerate(oracle_ids):
        if value is not None and first.setdefault(value, row) != row:
            expected[(0, row)] = f"ValueError: duplicate id {value!r} (id); first at {paths[2]}#{first[value]}"
    assert job.duplicates == expected and expected

"""Bad input: each kind ends in error rows, or in a clear error before any work; none crashes a
worker or loses a row."""
from __future__ import annotations

import itertools
import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from pipeline_fixtures import job_config, sentence, write_docs
from tinymodels import MAX_POSITIONS

from jobs.cli import main
from pipeline.config import load_config
from pipeline.driver import run_job
from pipeline.inputs import derived_id
from pipeline.run import Job

LONG = MAX_POSITIONS * 100          # characters (= byte-level tokens): 100x the tiny model's context


def text_column(values: list[str | bytes | None]) -> pa.Array:
    """A `string` column from str, raw bytes (stored unchecked: may be invalid UTF-8, as files from
    other writers can be) or None."""
    raw = [v.encode() if isinstance(v, str) else (v or b"") for v in values]
    offsets = pa.array([0, *itertools.accumulate(len(r) for r in raw)], pa.int32())
    validity = pa.array([v is not None for v in values]).buffers()[1]
    buffers = [validity, offsets.buffers()[1], pa.py_buffer(b"".join(raw))]
    return pa.Array.from_buffers(pa.string(), len(values), buffers, null_count=values.count(None))


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """Three files whose `document` column is string, int64 and binary; (file, row) -> (status, error)."""
    root = tmp_path_factory.mktemp("messy")
    long_doc = (sentence(3, 20) + " ") * (LONG // 60)
    docs = [sentence(0), None, "", " \t\n ", b"caf\xe9 \xff", long_doc, sentence(6), sentence(7), "x" * 60_000]
    pq.write_table(pa.table({"id": ["a0", "a1", "a2", "a3", "a4", "a5", "a0", "a7", "a8"],
                             "document": text_column(docs)}), root / "a.parquet")
    pq.write_table(pa.table({"id": ["b0", "a7", "b2"], "document": pa.array([7, 8, 9], pa.int64())}),
                   root / "b.parquet")
    pq.write_table(pa.table({"id": ["c0", "c1"], "document": pa.array([b"\xff\xfe", b"bytes"], pa.binary())}),
                   root / "c.parquet")
    expected = {
        ("a", 0): ("ok", None), ("a", 1): ("error", "is null"), ("a", 2): ("error", "is empty"),
        ("a", 3): ("error", "is empty"), ("a", 4): ("error", "document is not valid UTF-8"),
        ("a", 5): ("ok", None), ("a", 6): ("error", "duplicate id 'a0'"), ("a", 7): ("ok", None),
        ("a", 8): ("error", "max_text_chars"),
        ("b", 0): ("error", "not a string but int"), ("b", 1): ("error", "duplicate id 'a7'"),
        ("b", 2): ("error", "not a string but int"),
        ("c", 0): ("error", "not a string but bytes"), ("c", 1): ("error", "not a string but bytes"),
    }
    return root, expected


def test_bad_rows_become_error_rows_and_nothing_is_lost(ray_cluster, messy, tiny_model_dir, tmp_path):
    """Null, empty, whitespace, non-UTF-8, 100x-context and over-long documents, numbers and bytes
    where text belongs, duplicate ids within and across files whose schemas differ: one run."""
    root, expected = messy
    cfg = job_config("summarize", tiny_model_dir, [root], tmp_path / "out",
                     input={"text_column": "document", "reference_column": None, "rows_per_item": 4,
                            "max_text_chars": 50_000},
                     pool={"num_actors": 1, "cpus_per_actor": 1, "batch_size": 2, "max_attempts": 1})
    summary = run_job(cfg)
    assert summary["complete"] and summary["rows"] == len(expected)
    table = pq.read_table(f"{summary['run_dir']}/parts")
    got = {}
    for row in table.to_pylist():
        key = (row["source"].rsplit("/", 1)[-1][0], row["row_index"])
        assert key not in got                                                     # each row once
        got[key] = row
    assert set(got) == set(expected)                                              # none lost
    for key, (status, error) in expected.items():
        assert got[key]["status"] == status, (key, got[key]["error"])
        assert error is None or error in got[key]["error"], (key, got[key]["error"])
        assert got[key]["attempt"] == 1                                           # no worker died
    long_row = got[("a", 5)]
    assert long_row["truncated"] and long_row["document_tokens"] >= LONG and long_row["prompt_tokens"] < MAX_POSITIONS
    assert "first at" in got[("b", 1)]["error"] and got[("a", 7)]["status"] == "ok"   # the first keeps its id
    assert summary["error_rows"] == sum(status == "error" for status, _ in expected.values())


def test_missing_id_column_is_a_clear_error_and_null_id_column_derives_ids(tmp_path, tiny_model_dir, caplog):
    data = tmp_path / "in" / "noid.parquet"
    data.parent.mkdir()
    pq.write_table(pa.table({"document": [sentence(1), sentence(2)]}), data)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"noid\.parquet lacks column\(s\) \['id'\]"):
        Job.open(job_config("summarize", tiny_model_dir, [data], out, input={"reference_column": None}))
    assert not out.exists()

    cfg = job_config("summarize", tiny_model_dir, [data], out, input={"reference_column": None, "id_column": None})
    with caplog.at_level(logging.WARNING, logger="pipeline.inputs.preflight"):
        job = Job.open(cfg)
    assert "row ids are derived" in caplog.text
    from pipeline.cluster import DartWorker

    rows = DartWorker(cfg.model_dump_json(), job.schema, job.fingerprint).run_item(
        job.plan[0], job.rows(job.plan[0]), 1).to_pylist()
    assert [r["id"] for r in rows] == [f"{data}#0", f"{data}#1"] == [derived_id(job.plan[0], r) for r in (0, 1)]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert [it.item_id for it in Job.open(cfg).plan] == [it.item_id for it in job.plan]   # deterministic


def test_duplicate_ids_across_types_and_unusable_id_type(tmp_path, tiny_model_dir):
    """5 and "5" are the same id once written; a list id is a clear error before work."""
    first, second = tmp_path / "in" / "a.parquet", tmp_path / "in" / "b.parquet"
    first.parent.mkdir()
    pq.write_table(pa.table({"id": [5, 6], "document": ["d.", "e."]}), first)
    pq.write_table(pa.table({"id": ["5", "7"], "document": ["f.", "g."]}), second)
    cfg = job_config("summarize", tiny_model_dir, [first, second], tmp_path / "out", input={"reference_column": None})
    job = Job.open(cfg)
    assert job.duplicates == {(1, 0): f"ValueError: duplicate id '5' (id); first at {first}#0"}
    assert job.known_problems(job.plan[1]) == {0: job.duplicates[(1, 0)]} and not job.known_problems(job.plan[0])
    pq.write_table(pa.table({"id": [[1], [2]], "document": ["d.", "e."]}), first)
    with pytest.raises(ValueError, match=r"id column 'id' of .*a\.parquet has type list<.*int64>"):
        Job.open(job_config("summarize", tiny_model_dir, [first], tmp_path / "out2", input={"reference_column": None}))
    assert not (tmp_path / "out2").exists()


def test_binary_ids_are_decoded_as_utf8_everywhere(tmp_path, tiny_model_dir):
    """One rule for ids of binary type: the duplicate check and the output both decode UTF-8
    (b"B0" is the id "B0", never "b'B0'"); an id that is not UTF-8 is an error row, not a crash."""
    from pipeline.cluster import DartWorker

    first, second = tmp_path / "in" / "a.parquet", tmp_path / "in" / "b.parquet"
    first.parent.mkdir()
    pq.write_table(pa.table({"id": pa.array([b"B0", b"B1", b"B0", b"\xff\xfeB", b"caf\xc3\xa9"], pa.binary()),
                             "document": [sentence(k) for k in range(5)]}), first)
    pq.write_table(pa.table({"id": ["B1", "B5"], "document": [sentence(5), sentence(6)]}), second)
    cfg = job_config("summarize", tiny_model_dir, [first, second], tmp_path / "out",
                     input={"reference_column": None, "rows_per_item": 8})
    job = Job.open(cfg)
    assert job.duplicates == {(0, 2): f"ValueError: duplicate id 'B0' (id); first at {first}#0",
                              (1, 0): f"ValueError: duplicate id 'B1' (id); first at {first}#1"}
    worker = DartWorker(cfg.model_dump_json(), job.schema, job.fingerprint)
    rows = [r for it in job.plan
            for r in worker.run_item(it, job.rows(it), 1, job.known_problems(it)).to_pylist()]
    assert [r["id"] for r in rows] == ["B0", "B1", "B0", f"{first}#3", "caf\u00e9", "B1", "B5"]
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error", "ok", "error", "ok"]
    assert "duplicate id 'B0'" in rows[2]["error"] and "duplicate id 'B1'" in rows[5]["error"]
    assert rows[3]["error"] == "ValueError: id (id) is not valid UTF-8 (invalid start byte at byte 0)"


def test_missing_required_column_stops_before_work(tmp_path, tiny_model_dir):
    paths = write_docs(tmp_path / "in")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"part-0\.parquet lacks column\(s\) \['body'\]"):
        run_job(job_config("summarize", tiny_model_dir, paths, out, input={"text_column": "body"}))
    assert not out.exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_parquet_stops_before_work(damage, tmp_path, tiny_model_dir):
    paths = write_docs(tmp_path / "in")
    broken = paths[1]
    broken.write_bytes(b"not parquet" if damage == "garbage" else broken.read_bytes()[:-40])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"cannot read input file .*part-1\.parquet"):
        run_job(job_config("summarize", tiny_model_dir, paths, out))
    assert not out.exists()


def test_empty_dataset_gives_a_valid_empty_output(tmp_path, tiny_model_dir, caplog):
    """A file with the columns but no rows: a complete run whose parts/ reads as zero rows."""
    import pandas as pd

    data = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "document": pa.array([], pa.string()),
                             "summary": pa.array([], pa.string())}), data)
    cfg = job_config("summarize", tiny_model_dir, [data], tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="pipeline.driver"):
        summary = run_job(cfg)
    assert "has no rows" in caplog.text
    assert summary["complete"] and summary["planned_items"] == 0 and summary["rows"] == summary["error_rows"] == 0
    table = pq.read_table(f"{summary['run_dir']}/parts")
    assert table.num_rows == 0 and table.schema.remove_metadata().equals(Job.open(cfg).schema.remove_metadata())
    assert len(pd.read_parquet(f"{summary['run_dir']}/parts")) == 0
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="matches no file"):
        Job.open(job_config("summarize", tiny_model_dir, [tmp_path / "nothing"], tmp_path / "out2"))


def test_schema_differences_between_files(tmp_path, tiny_model_dir):
    """A pass-through column whose type differs, or a column one file lacks: clear errors before work.
    (A text column whose type differs gives error rows: test_bad_rows_become_error_rows...)"""
    paths = write_docs(tmp_path / "in")
    out = tmp_path / "out"
    odd = tmp_path / "odd.parquet"
    pq.write_table(pa.table({"id": ["z"], "document": ["d."], "summary": ["s."], "topic": [3]}), odd)
    with pytest.raises(ValueError, match=r"pass-through column 'topic' has different types.*int64.*string"):
        Job.open(job_config("summarize", tiny_model_dir, [*paths, odd], out, input={"passthrough_columns": ["topic"]}))
    pq.write_table(pa.table({"id": ["z"], "document": ["d."]}), odd)
    with pytest.raises(ValueError, match=r"odd\.parquet lacks column\(s\) \['summary'\]"):
        Job.open(job_config("summarize", tiny_model_dir, [*paths, odd], out))
    assert not out.exists()


BASE = ["input.paths=[a.parquet]", "input.text_column=document"]


@pytest.mark.parametrize("override, key, says", [
    ("pool.bogus=1", "pool.bogus", "Extra inputs"),                          # unknown key
    ("bogus=1", "bogus", "Extra inputs"),
    ("pool.num_actors=two", "pool.num_actors", "valid integer"),             # wrong type
    ("input.paths=a.parquet", "input.paths", "valid list"),
    ("generation.max_new_tokens=0", "generation.max_new_tokens", "greater than or equal to 1"),  # out of range
    ("dart.keep_ratio=1.5", "dart.keep_ratio", ""),
    ("pool.max_attempts=-1", "pool.max_attempts", "greater than or equal to 1"),
])
def test_config_errors_name_the_key(override, key, says, tmp_path, capsys):
    with pytest.raises(ValueError, match=rf"(?m)(^\s+|^invalid job config: ){key}: .*{says}"):   # one line when alone
        load_config(None, [*BASE, override], task="summarize")
    name, _, value = override.partition("=")
    data: dict = {"input": {"paths": ["a.parquet"], "text_column": "document"}}
    node = data
    for part in name.split(".")[:-1]:
        node = node.setdefault(part, {})
    node[name.split(".")[-1]] = yaml.safe_load(value)
    config_file = tmp_path / "job.yaml"
    config_file.write_text(yaml.safe_dump(data))
    assert main("summarize", ["--config", str(config_file)]) == 2                 # the CLI says it, no traceback
    assert key in capsys.readouterr().err

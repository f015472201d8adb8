"""Pipeline pieces without Ray: configs, plan, sources, metrics, schema, run directory, worker in-process."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_fixtures import FILE_ROWS, job_config, write_docs

from pipeline.config import apply_overrides, load_config
from pipeline.inputs import plan_items, read_rows, resolve_inputs
from pipeline.run import Job, RunDir, output_schema, telemetry_fields
from pipeline.tasks import exact_match, normalize_answer, rouge_l, token_f1


# ---- metrics (hand-computed) ----------------------------------------------------------------
def test_squad_normalization_and_scores():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("The cat.", "cat") == 1.0
    assert exact_match("a dog", "cat") == 0.0
    # pred {cat, sat}, ref {cat, sat, on, mat}: P = 1, R = 1/2, F1 = 2/3
    assert token_f1("the cat sat", "cat sat on the mat") == pytest.approx(2 / 3)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0
    assert rouge_l("the cat sat", "the cat sat") == pytest.approx(1.0)


# ---- config -----------------------------------------------------------------------------------
def test_overrides_are_yaml_scalars_never_code():
    data = apply_overrides({"pool": {"num_actors": 2}}, ["pool.num_actors=4", "dart.keep_ratio=0.3",
                                                         "input.paths=[a.parquet, b.parquet]", "x.y=__import__('os')"])
    assert data["pool"]["num_actors"] == 4 and data["dart"]["keep_ratio"] == 0.3
    assert data["input"]["paths"] == ["a.parquet", "b.parquet"]
    assert data["x"]["y"] == "__import__('os')"         # a plain string, not evaluated
    with pytest.raises(ValueError, match="cannot parse"):
        apply_overrides({}, ["a=!!python/object/apply:os.system [ls]"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["novalue"])


def test_bad_field_fails_fast_naming_the_key():
    base = ["input.paths=[a.parquet]", "input.text_column=document"]
    with pytest.raises(ValueError, match=r"pool\.num_actors"):
        load_config(None, [*base, "pool.num_actors=0"], task="summarize")
    with pytest.raises(ValueError, match=r"dart\.keep_ratio"):
        load_config(None, [*base, "dart.keep_ratio=2"], task="summarize")
    with pytest.raises(ValueError, match=r"pool\.bogus"):
        load_config(None, [*base, "pool.bogus=1"], task="summarize")
    with pytest.raises(ValueError, match="summarize.prompt_template"):
        load_config(None, [*base, "summarize.prompt_template={document.__class__}"], task="summarize")
    with pytest.raises(ValueError, match="input.text_column"):
        load_config(None, ["input.paths=[a.parquet]"], task="summarize")


def test_fingerprint_ignores_pool_size_and_control_but_not_method(tmp_path):
    a = load_config(None, ["input.paths=[a]", "input.text_column=d"], task="summarize")
    b = load_config(None, ["input.paths=[a]", "input.text_column=d", "pool.num_actors=7",
                           "control.max_items=1", "output.dir=elsewhere"], task="summarize")
    c = load_config(None, ["input.paths=[a]", "input.text_column=d", "dart.method=static"], task="summarize")
    assert a.fingerprint("p") == b.fingerprint("p") != c.fingerprint("p")
    assert a.fingerprint("p") != a.fingerprint("q")


def test_fingerprint_leaves_out_settings_the_method_never_reads():
    base = ["input.paths=[a]", "input.text_column=d"]

    def fp(*extra):
        return load_config(None, [*base, *extra], task="summarize").fingerprint("p")

    for method in ("dense", "static"):
        assert fp(f"dart.method={method}") == fp(f"dart.method={method}", "dart.drift.policy=reset",
                                                  "dart.drift.window=9")
    assert fp("dart.method=dense") == fp("dart.method=dense", "dart.keep_ratio=0.3", "dart.ranking=max")
    assert fp("dart.method=static") != fp("dart.method=static", "dart.keep_ratio=0.3")
    assert fp("dart.method=dart") != fp("dart.method=dart", "dart.drift.policy=reset")
    assert fp("dart.method=dart") == fp("dart.method=dart", "dart.drift.replay_tokens=0")   # a knob added off
    assert fp("dart.method=dart") != fp("dart.method=dart", "dart.drift.replay_tokens=5")


# ---- sources and plan -------------------------------------------------------------------------
def test_plan_covers_every_row_once_with_stable_ids(tmp_path):
    paths = write_docs(tmp_path / "in")
    sources = resolve_inputs([str(tmp_path / "in" / "*.parquet")])
    assert [s.uri for s in sources] == [str(p) for p in paths]
    items = plan_items(sources, 3)
    assert len(items) == 10
    covered = [(it.source_index, r) for it in items for r in range(it.start, it.stop)]
    assert covered == [(f, r) for f, n in enumerate(FILE_ROWS) for r in range(n)]
    assert [it.item_id for it in plan_items(resolve_inputs([str(tmp_path / "in")]), 3)] == \
        [it.item_id for it in items]
    # Changing a file's content changes its items' ids (not the others').
    pq.write_table(pa.table({"id": ["z"] * 7, "document": ["d"] * 7, "summary": ["s"] * 7,
                             "topic": ["t"] * 7}), paths[0])
    again = plan_items(resolve_inputs([str(p) for p in paths]), 3)
    assert again[0].item_id != items[0].item_id and again[3].item_id == items[3].item_id


def test_row_range_reads_across_row_groups(tmp_path):
    paths = write_docs(tmp_path / "in")
    src = resolve_inputs([str(paths[2])])[0]
    whole = pq.read_table(paths[2])
    for start, stop in [(0, 3), (3, 6), (2, 9), (9, 10)]:
        assert read_rows(src, start, stop, ["id"]).column("id").to_pylist() == \
            whole.column("id").to_pylist()[start:stop]


def test_missing_column_or_unreadable_file_stops_before_any_work(tmp_path, tiny_model_dir):
    paths = write_docs(tmp_path / "in")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"part-0\.parquet lacks column\(s\) \['nope'\]"):
        Job.open(job_config("summarize", tiny_model_dir, paths, out, input={"text_column": "nope"}))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="cannot read input file .*broken.parquet"):
        Job.open(job_config("summarize", tiny_model_dir, [*paths, broken], out))
    with pytest.raises(ValueError, match="matches no file"):
        Job.open(job_config("summarize", tiny_model_dir, [tmp_path / "none.parquet"], out))
    with pytest.raises(ValueError, match="inside input directory"):
        Job.open(job_config("summarize", tiny_model_dir, [tmp_path / "in"], tmp_path / "in" / "out"))
    assert not out.exists()


def test_different_config_writes_a_different_run(tmp_path, tiny_model_dir):
    paths = write_docs(tmp_path / "in")
    a = Job.open(job_config("summarize", tiny_model_dir, paths, tmp_path / "out"))
    b = Job.open(job_config("summarize", tiny_model_dir, paths, tmp_path / "out", dart={"keep_ratio": 0.25}))
    again = Job.open(job_config("summarize", tiny_model_dir, paths, tmp_path / "out", pool={"num_actors": 1}))
    assert a.run.root != b.run.root and a.run.root == again.run.root
    assert (a.run.root / "config.yaml").read_text().startswith("task: summarize")


# ---- schema and run directory -----------------------------------------------------------------
def test_schema_carries_every_telemetry_field():
    from dart.telemetry import SequenceTelemetry

    names = {f.name for f in telemetry_fields()}
    assert names == set(SequenceTelemetry.__dataclass_fields__) - {"method"}
    schema = output_schema("summarize", [pa.field("topic", pa.string())])
    assert schema.field("drift_positions").type == pa.list_(pa.int64())
    assert schema.field("epoch_thresholds").type == pa.list_(pa.float64())
    with pytest.raises(ValueError, match="clash"):
        output_schema("qa", [pa.field("status", pa.string())])


def test_item_is_done_only_with_marker_and_full_part(tmp_path, tiny_model_dir):
    paths = write_docs(tmp_path / "in")
    job = Job.open(job_config("summarize", tiny_model_dir, paths, tmp_path / "out"))
    item = job.plan[0]
    run: RunDir = job.run
    assert not run.is_done(item)
    job.write_failure(item, job.rows(item), "boom", 3)
    assert run.is_done(item)
    run.marker_path(item).unlink()              # part without marker: redone
    assert not run.is_done(item)
    (run.parts / ".x.parquet.tmp-1").write_bytes(b"half")
    run.clean_temp()
    assert not list(run.parts.glob(".*"))


# ---- tasks in-process on the tiny model -----------------------------------------------------------
def _worker(config, job):
    from pipeline.cluster import DartWorker

    return DartWorker(config.model_dump_json(), job.schema, job.fingerprint)


def test_summarize_rows_and_bad_rows_in_process(tmp_path, tiny_model_dir):
    paths = write_docs(tmp_path / "in")
    cfg = job_config("summarize", tiny_model_dir, paths, tmp_path / "out", input={"passthrough_columns": ["topic"]})
    job = Job.open(cfg)
    worker = _worker(cfg, job)
    tables = [worker.run_item(it, job.rows(it), 1) for it in job.plan if it.source_index == 1]
    table = pa.concat_tables(tables)
    assert table.schema.equals(job.schema)
    rows = {r["id"]: r for r in table.to_pylist()}
    assert "null" in rows["doc-008"]["error"] and "empty" in rows["doc-011"]["error"]
    assert "max_text_chars" in rows["doc-014"]["error"]
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert len(ok) == FILE_ROWS[1] - 3
    assert all(r["generated_tokens"] >= 1 and r["kept_fraction_per_layer"] and r["topic"] for r in ok)
    assert any(r["truncated"] for r in ok)     # documents over 48 tokens are cut and flagged
    # An item's rows do not depend on the batch they ran in (per-row seeds, per-row state).
    cfg1 = job_config("summarize", tiny_model_dir, paths, tmp_path / "out", pool={"batch_size": 1},
                      input={"passthrough_columns": ["topic"]})
    alone = _worker(cfg1, job).run_item(job.plan[3], job.rows(job.plan[3]), 1)
    assert alone.column("output").to_pylist() == tables[0].column("output").to_pylist()


def test_label_and_qa_in_process(tmp_path, tiny_model_dir):
    data = tmp_path / "mc.parquet"
    pq.write_table(pa.table({
        "id": ["q1", "q2", "q3", "q4"],
        "question": ["Is the sky blue?", None, "Pick one.", "Which?"],
        "choices": [["yes", "no"], ["a", "b"], None, ["x", "y", "z"]],
        "answer": ["A", "B", "A", "C"],
    }), data)
    cfg = job_config("label", tiny_model_dir, [data], tmp_path / "out",
                     input={"question_column": "question", "choices_column": "choices", "reference_column": "answer"})
    job = Job.open(cfg)
    rows = _worker(cfg, job).run_item(job.plan[0], job.rows(job.plan[0]), 1).to_pylist()
    rows += _worker(cfg, job).run_item(job.plan[1], job.rows(job.plan[1]), 1).to_pylist()
    by = {r["id"]: r for r in rows}
    assert by["q1"]["status"] == "ok" and len(by["q1"]["choice_logprobs"]) == 2
    assert by["q1"]["output"] in ("A", "B") and by["q1"]["correct"] == (by["q1"]["output"] == "A")
    assert "question" in by["q2"]["error"] and "choices" in by["q3"]["error"]
    assert by["q4"]["gold_label"] == "C" and len(by["q4"]["choices"]) == 3

    qa = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "context": ["The cat sat on the mat.", "x"],
                             "question": ["Where?", None], "answers": [["the mat", "mat"], ["y"]]}), qa)
    cfg = job_config("qa", tiny_model_dir, [qa], tmp_path / "out2", input={
        "question_column": "question", "text_column": "context", "reference_column": "answers"})
    job = Job.open(cfg)
    rows = _worker(cfg, job).run_item(job.plan[0], job.rows(job.plan[0]), 1).to_pylist()
    assert rows[0]["status"] == "ok" and rows[0]["references"] == ["the mat", "mat"]
    assert 0.0 <= rows[0]["f1"] <= 1.0 and rows[1]["status"] == "error"


def test_summary_counts_ffn_cost_end_to_end_and_prompt_sparsity_per_prompt_token():
    from pipeline.run import summarize_table

    table = pa.table({
        "item_id": ["a", "a", "b"], "status": ["ok", "ok", "error"], "generated_tokens": [4, 6, 0],
        "prompt_tokens": [10, 30, 0], "applied_sparsity": [0.5, 0.5, None], "drift_events": [1, 0, 0],
        "ffn_flops_executed": [60, 40, None], "ffn_flops_dense": [100, 100, None],
        "prompt_applied_sparsity": [0.2, 0.6, None], "prefill_seconds": [1.0, 2.0, None],
        "decode_seconds": [0.5, 0.5, None], "rouge_l": [0.1, 0.3, None]})
    summary = summarize_table(table, "summarize")
    assert summary["ffn_flops_executed_fraction"] == 0.5                    # 100 of 200, error row left out
    assert summary["prompt_applied_sparsity"] == (0.2 * 10 + 0.6 * 30) / 40   # weighted by prompt tokens
    assert (summary["prefill_seconds"], summary["decode_seconds"], summary["error_rows"]) == (3.0, 1.0, 1)

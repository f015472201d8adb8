"""A new user's first runs (issue 27): their own data, setup and mistakes each end in one `error:`
line naming the cause and the way forward (exit 2 before any work), configs say what they do, and
every key is discoverable (--help, --print-config, docs/config.md)."""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pipeline_fixtures import ROOT, fresh_s3_clients, write_docs

from jobs.cli import main
from pipeline.checks import unpruned_reason, warn_if_unpruned
from pipeline.config import dart_settings, load_config


def run_cli(capsys, task: str, args: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one in-process job command."""
    code = main(task, args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    """The command's one `error:` line: the only one, the last, with no traceback anywhere."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err[-3000:]
    return errors[0]


def no_work(*args):
    raise AssertionError("work started (Ray, actors) although the job should have been refused")


@pytest.fixture
def refused(monkeypatch, capsys, tiny_model_dir, tmp_path):
    """refused(overrides, config=None) -> the error line of a summarize command that must exit 2 before
    any work; the tiny model, one input file with references, output and logs under tmp_path."""
    monkeypatch.setattr("pipeline.driver.run_items", no_work)
    paths = write_docs(tmp_path / "in")

    def run(overrides: list[str], config: str | None = None) -> str:
        base = [f"model.source={tiny_model_dir}", "model.device=cpu", f"input.paths=[{paths[0]}]",
                "input.text_column=document", f"output.dir={tmp_path / 'out'}", "control.progress=false",
                f"control.log_dir={tmp_path / 'logs'}"]
        args = (["--config", config] if config else []) + base + overrides
        code, _, err = run_cli(capsys, "summarize", args)
        assert code == 2, err[-3000:]
        return error_line(err)

    return run


def test_missing_reference_column_says_how_to_run_without(refused):
    line = refused(["input.reference_column=abstract"])
    assert "lacks column(s) ['abstract']" in line and "input.reference_column=null" in line


def test_gpu_device_without_gpus_per_actor_is_refused(refused):
    line = refused(["model.device=cuda:0"])
    assert "model.device=cuda:0 needs pool.num_gpus_per_actor of 1 or more" in line


def test_unreachable_input_uri_is_one_line(refused):
    line = refused(["input.paths=[http://127.0.0.1:1/x.parquet]"])
    assert "cannot reach input path 'http://127.0.0.1:1/x.parquet'" in line and "check the address" in line


@pytest.fixture
def fresh_s3():
    """s3fs clients made for this test's S3 environment only."""
    fresh_s3_clients()
    yield
    fresh_s3_clients()


def test_unreachable_output_store_is_one_line(refused, monkeypatch, fresh_s3):
    for key, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(key, value)
    line = refused(["output.dir=s3://nowhere/runs"])
    assert line.startswith("error: output.dir 's3://nowhere/runs' cannot hold a run") and "address" in line
    line = refused(["output.dir=s3://nowhere/runs", "output.storage_options={retries: 0}"])
    assert "output.storage_options {'retries': 0} are not options of the store's filesystem" in line


@pytest.mark.parametrize("name, content, says", [
    ("docs.csv", "id,document\na,text\n", "is CSV: inputs are Parquet or Arrow IPC files; convert it once with"),
    ("docs.jsonl", '{"id": "a", "document": "text"}\n', "is JSONL: inputs are Parquet or Arrow IPC files"),
    ("empty.parquet", "", "Parquet file size is 0 bytes"),
])
def test_files_that_are_not_parquet_are_refused_by_name(refused, tmp_path, name, content, says):
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / name).write_text(content)
    assert says in refused([f"input.paths=[{tmp_path / 'text'}]"])       # found in a directory too


@pytest.mark.parametrize("hub", ["offline", "unreachable"])
def test_unknown_model_name_suggests_the_embedded_one(refused, monkeypatch, hub):
    if hub == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:                                  # asked, the hub cannot be reached; the actors would run here
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        monkeypatch.setattr("huggingface_hub.model_info", unreachable)
    line = refused(["model.source=SmolLM2-135M"])
    says = "none of that id is in the local cache" if hub == "offline" else "the hub cannot be reached"
    assert says in line and "did you mean 'smollm2-135m-instruct'" in line


def unreachable(*args, **kwargs):
    raise ConnectionError("[Errno -2] Name or service not known")


def test_typo_in_a_section_name_suggests_the_nearest_key(refused, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("task: summarize\ninptu:\n  rows_per_item: 4\n")
    line = refused([], str(config))
    assert "inptu: Extra inputs are not permitted; did you mean input?" in line
    assert "did you mean dart.keep_ratio?" in refused(["dart.keepratio=0.3"])


def test_typo_in_a_study_section_suggests_the_nearest_key(capsys):
    from jobs.study import main as study_main

    assert study_main(["--config", str(ROOT / "conf/study_xsum.yaml"), "stduy.limit=2"]) == 2
    assert "stduy: Extra inputs are not permitted; did you mean study?" in error_line(capsys.readouterr().err)


def test_dense_baseline_of_a_blockwise_config_runs_dense():
    blockwise = load_config(ROOT / "conf/summarize.yaml")
    dense = load_config(ROOT / "conf/summarize.yaml", ["dart.method=dense"])
    assert blockwise.dart.blockwise and not dense.dart.blockwise
    assert dart_settings(dense.dart) == {"method": "dense"}


def test_print_config_is_the_effective_config_and_starts_nothing(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("pipeline.driver.run_items", no_work)
    conf = str(ROOT / "conf/summarize.yaml")
    code, out, _ = run_cli(capsys, "summarize", ["--config", conf, "--print-config", "dart.keep_ratio=0.4"])
    printed = yaml.safe_load(out)
    assert code == 0 and printed["dart"]["keep_ratio"] == 0.4 and printed["pool"]["max_attempts"] == 3   # a default
    (tmp_path / "effective.yaml").write_text(out)
    assert load_config(tmp_path / "effective.yaml") == load_config(conf, ["dart.keep_ratio=0.4"])


def test_help_lists_every_section_and_the_reference(capsys):
    with pytest.raises(SystemExit) as stop:
        main("label", ["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "docs/config.md" in out and "--print-config" in out
    for section in ("model", "dart", "generation", "input", "output", "pool", "control", "label"):
        assert f"\n  {section} " in out
    assert "\n  summarize " not in out


def test_config_reference_is_current():
    from pipeline.config_doc import render

    text = (ROOT / "docs/config.md").read_text()
    assert text == render(), "docs/config.md is stale: run python -m pipeline.config_doc"
    for key in ("dart.prefill.mode", "pool.num_gpus_per_actor", "input.reference_column", "control.log_dir"):
        assert f"| `{key}` |" in text


@pytest.mark.parametrize("overrides, says", [
    (["dart.prefill.mode=dense"], "dart.prefill.mode=blockwise to prune the prompt"),
    (["dart.keep_ratio=1.0"], "dart.keep_ratio=1.0 keeps every FFN neuron"),
    ([], None),                                   # the shipped label config prunes its prompt
    (["dart.method=dense"], None),                # says plainly that it runs dense
    (["label.score=text"], None),
])
def test_label_config_prunes_what_it_scores_or_warns_once(caplog, overrides, says):
    config = load_config(ROOT / "conf/label.yaml", overrides)
    assert (unpruned_reason(config) is None) == (says is None)
    with caplog.at_level(logging.WARNING, logger="pipeline.checks.pruning"):
        warn_if_unpruned(config)
    warnings = [r.getMessage() for r in caplog.records if r.name == "pipeline.checks.pruning"]
    assert len(warnings) == (says is not None) and all(says in w for w in warnings)


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "conf").glob("*.yaml")
                                         if yaml.safe_load(p.read_text()).get("task")), ids=lambda p: p.name)
def test_every_shipped_job_config_prunes_what_it_computes(path):
    assert unpruned_reason(load_config(path)) is None


def test_one_token_generation_warns_and_names_the_setting():
    config = load_config(ROOT / "conf/summarize.yaml", ["generation.max_new_tokens=1", "dart.prefill.mode=dense"])
    assert "generation.max_new_tokens=1" in unpruned_reason(config)
    assert unpruned_reason(load_config(ROOT / "conf/summarize.yaml", ["generation.max_new_tokens=1"])) is None
    released = load_config(ROOT / "conf/qa.yaml", ["dart.release_step=0"])
    assert "dart.release_step=0" in unpruned_reason(released)


def mixed_directory(directory: Path) -> list[str]:
    """Two files, columns in different orders, no references; one row holds a 50 MB document."""
    directory.mkdir()
    first = pa.table({"id": ["a-0", "a-1"], "document": ["the cat sat on the mat.", "x" * (50 << 20)]})
    second = pa.table({"document": ["a dog ran under the log.", "rain on the river bank."], "id": ["b-0", "b-1"],
                       "topic": ["t", "u"]})
    pq.write_table(first, directory / "a.parquet")
    pq.write_table(second, directory / "b.parquet")
    return ["a-0", "a-1", "b-0", "b-1"]


@pytest.mark.parametrize("case", ["mixed directory, no references, a 50 MB document", "one document"])
def test_users_own_data_runs_to_every_row_once(case, ray_cluster, capsys, tiny_model_dir, tmp_path):
    if case == "one document":     # on the shipped config's two actors
        pq.write_table(pa.table({"id": ["only"], "document": ["the sun on the city."]}), tmp_path / "one.parquet")
        inputs, ids, actors = tmp_path / "one.parquet", ["only"], 2
    else:
        ids = mixed_directory(tmp_path / "in")
        inputs, actors = tmp_path / "in", 1
    args = ["--config", str(ROOT / "conf/summarize.yaml"), f"model.source={tiny_model_dir}", "model.device=cpu",
            f"input.paths=[{inputs}]", "input.reference_column=null", "input.rows_per_item=2",
            "generation.max_new_tokens=4", "summarize.max_document_tokens=48", "dart.prefill.first_block_tokens=16",
            "dart.prefill.block_tokens=16", f"output.dir={tmp_path / 'out'}", "control.progress=false",
            f"control.log_dir={tmp_path / 'logs'}", f"pool.num_actors={actors}"]
    code, out, err = run_cli(capsys, "summarize", args)
    assert code == 0 and "run complete" in out, err[-3000:]
    table = pq.read_table(next((tmp_path / "out").glob("summarize-*")) / "parts")
    assert sorted(table.column("id").to_pylist()) == ids
    status = dict(zip(table.column("id").to_pylist(), table.column("error").to_pylist()))
    assert all(status[i] is None for i in ids if i != "a-1")
    if "a-1" in status:
        assert "over input.max_text_chars=200000" in status["a-1"]

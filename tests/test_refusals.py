"""Configs and inputs that can never run are refused before any work, each with one `error:` line
naming the key and exit code 2, never a traceback and never a started Ray."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_fixtures import write_docs

from jobs.cli import main


def run_cli(capsys, task: str, args: list[str]) -> tuple[int, str]:
    """Exit code and the job's own `error:` line (stderr may also hold log lines of a session Ray)."""
    code = main(task, args)
    lines = capsys.readouterr().err.splitlines()
    start = next((k for k, line in enumerate(lines) if line.startswith("error: ")), len(lines))
    return code, "\n".join(lines[start:])


@pytest.fixture
def tiny_args(tiny_model_dir, tmp_path):
    paths = write_docs(tmp_path / "in")
    return [f"model.source={tiny_model_dir}", "model.device=cpu", f"input.paths=[{paths[0]}]",
            "input.text_column=document", f"output.dir={tmp_path / 'out'}", "control.progress=false"]


BOMB = """a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
task: summarize
"""


@pytest.mark.parametrize("text, says", [
    (BOMB, "aliases and anchors are not allowed"),
    ("task: summarize\ninput: {paths: [a.parquet]}\ntask: qa\n", "key 'task' is given twice"),
    ("<<: {task: summarize}\n", "merge keys (<<) are not allowed"),
])
def test_yaml_that_is_not_plain_data_is_refused(capsys, tmp_path, text, says):
    config = tmp_path / "job.yaml"
    config.write_text(text)
    code, err = run_cli(capsys, "summarize", ["--config", str(config)])
    assert code == 2 and err.startswith("error: ") and says in err and "Traceback" not in err


@pytest.mark.parametrize("override, says", [
    ("control.log_level=LOUD", "control.log_level"),
    ("pool.cpus_per_actor=true", "pool.cpus_per_actor: Value error, expected a number, got true"),
    ("dart.keep_ratio=.inf", "dart.keep_ratio: Input should be a finite number"),
    ("dart.drift.kappa=.nan", "dart.drift.kappa: Input should be a finite number"),
    ("generation.temperature=1e-30", "generation.temperature: Value error, temperature 1e-30 is below"),
    ("generation.top_p=1e-300", "generation.top_p: Input should be greater than or equal to"),
    ("generation.max_new_tokens=100000", "generation.max_new_tokens=100000 does not fit the model's context of 256"),
    ("summarize.max_document_tokens=300", "summarize.max_document_tokens=300 does not fit"),
    ("model.source=/nonexistent/model", "model.source: model directory '/nonexistent/model' does not exist"),
    ("model.source=/nonexistent/weights.gguf", "GGUF file '/nonexistent/weights.gguf' does not exist"),
])
def test_settings_that_can_never_run_are_refused(capsys, monkeypatch, tiny_args, override, says):
    monkeypatch.setattr("pipeline.driver.run_items", no_work)
    code, err = run_cli(capsys, "summarize", [*tiny_args, override])
    assert code == 2 and err.startswith("error: ") and says in err and "Traceback" not in err


def no_work(*args):
    raise AssertionError("work started (Ray, actors) although the job should have been refused")


@pytest.mark.parametrize("where", ["a file", "under /proc", "a read-only folder"])
def test_unusable_output_location_is_refused(capsys, monkeypatch, tiny_args, tmp_path, where):
    monkeypatch.setattr("pipeline.driver.run_items", no_work)
    if where == "a file":
        out = tmp_path / "taken"
        out.write_text("")
    elif where == "under /proc":
        out = "/proc/dart-outputs"
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        out = folder / "out"
        monkeypatch.setattr("os.mkdir", read_only_mkdir)      # root ignores permission bits
    code, err = run_cli(capsys, "summarize", [*tiny_args, f"output.dir={out}"])
    assert code == 2 and err.startswith("error: output.dir") and "cannot hold a run" in err


def read_only_mkdir(path, *args, **kwargs):
    raise PermissionError(13, "Permission denied", str(path))


def test_input_with_a_repeated_column_name_is_refused(capsys, tiny_args, tmp_path):
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["doc"]), pa.array(["x"])],
                                 names=["id", "document", "document"])
    pq.write_table(table, tmp_path / "dup.parquet")
    code, err = run_cli(capsys, "summarize", [*tiny_args, f"input.paths=[{tmp_path / 'dup.parquet'}]"])
    assert code == 2 and "column name(s) ['document'] more than once" in err


def test_defaults_larger_than_a_small_context_still_run(tiny_model_dir, tmp_path):
    from pipeline.checks import check_model
    from pipeline.config import load_config

    config = load_config(None, [f"model.source={tiny_model_dir}", "input.paths=[x.parquet]",
                                "input.question_column=q", "input.choices_column=c"], task="label")
    assert config.label.max_question_tokens > 256
    check_model(config)       # the default only means truncation never binds

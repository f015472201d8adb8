"""What nobody may do: load pickles or remote code unasked, write into an input path, expose a
job-started Ray beyond loopback, or evaluate a config value as code."""
from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from pipeline_fixtures import job_config, write_docs
from safetensors.torch import load_file

from dart import loading
from jobs.cli import main
from pipeline.config import load_config
from pipeline.driver import run_job
from pipeline.run import Job
from pipeline.tasks import render

ROOT = Path(__file__).parents[1]


# ---- model files -----------------------------------------------------------------------------
def _pickle_only(tiny_model_dir: Path, directory: Path) -> Path:
    shutil.copytree(tiny_model_dir, directory, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(tiny_model_dir / "model.safetensors"), directory / "pytorch_model.bin")
    return directory


def test_job_refuses_pickle_weights_unless_allowed(ray_cluster, tiny_model_dir, tmp_path):
    paths = write_docs(tmp_path / "in", bad_rows=False)[:1]
    pickled = _pickle_only(tiny_model_dir, tmp_path / "pickled")
    cfg = job_config("summarize", pickled, paths, tmp_path / "out", pool={"num_actors": 1, "max_restarts": 0})
    assert cfg.model.allow_pickle is False and cfg.model.trust_remote_code is False     # the defaults
    with pytest.raises(RuntimeError, match=r"actor could not load model .*refusing to load pickle weights"):
        run_job(cfg)
    assert not list(Job.open(cfg).run.parts.glob("*.parquet"))
    allowed = job_config("summarize", pickled, paths, tmp_path / "out", model={"allow_pickle": True})
    model, _ = loading.load_model(allowed.model)                    # explicitly allowed: it loads
    assert model.config.num_hidden_layers == 3


@pytest.fixture
def load_calls(monkeypatch) -> list[dict]:
    """kwargs of every from_pretrained call (they fail fast after being recorded)."""
    calls: list[dict] = []

    def spy(location, **kwargs):
        calls.append({"location": location, **kwargs})
        raise RuntimeError("recorded")

    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", spy)
    return calls


@pytest.mark.parametrize("overrides, remote, safetensors_only", [
    ([], False, True),
    (["model.trust_remote_code=true"], True, True),
    (["model.allow_pickle=true"], False, False),
])
def test_job_config_decides_remote_code_and_weight_formats(overrides, remote, safetensors_only,
                                                          tiny_model_dir, monkeypatch):
    """From the job config as the worker receives it: remote code off and safetensors only unless set."""
    cfg = load_config(None, ["input.paths=[a.parquet]", "input.text_column=d", f"model.source={tiny_model_dir}",
                             "model.device=cpu", *overrides], task="summarize")
    captured: dict = {}

    def spy(location, **kwargs):
        captured.update(kwargs)
        raise RuntimeError("recorded")

    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", lambda location, **kwargs: object())
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", spy)
    with pytest.raises(RuntimeError, match="recorded"):
        loading.load_model(cfg.model)
    assert captured["trust_remote_code"] is remote
    assert captured.get("use_safetensors", False) is safetensors_only


def test_gguf_needs_no_pickle_permission(tmp_path, load_calls):
    gguf = tmp_path / "model.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    cfg = load_config(None, ["input.paths=[a.parquet]", "input.text_column=d", f"model.source={gguf}",
                             "model.device=cpu"], task="summarize")
    with pytest.raises(RuntimeError, match="recorded"):
        loading.load_model(cfg.model)
    assert load_calls[0]["gguf_file"] == gguf.name and load_calls[0]["trust_remote_code"] is False


# ---- output location ---------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["inside-dir", "same-dir", "under-glob", "under-recursive-glob",
                                    "input-inside-output", "symlink-into-input"])
def test_output_never_inside_an_input_path(layout, tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    paths = write_docs(data)
    inputs, out = {
        "inside-dir": ([data], data / "out"),
        "same-dir": ([data], data),
        "under-glob": ([data / "*.parquet"], data / "runs"),
        "under-recursive-glob": ([data / "**" / "*.parquet"], data / "deep" / "runs"),
        "input-inside-output": (paths, tmp_path),
        "symlink-into-input": ([data], tmp_path / "link" / "out"),
    }[layout]
    (tmp_path / "link").symlink_to(data)
    with pytest.raises(ValueError, match="inside (input directory|output.dir)"):
        run_job(job_config("summarize", tiny_model_dir, inputs, out))
    assert not list(tmp_path.rglob("plan.json"))                    # nothing was written


# ---- local Ray on loopback ---------------------------------------------------------------------------
PROBE = r"""
import json, sys, psutil, ray
from pipeline.cluster import connect_ray
from pipeline.config import load_config

join = ray.init
def init(*args, **kwargs):   # no running cluster to join: the session's (and anyone else's) stay hidden
    if kwargs.get("address") == "auto":
        raise ConnectionError("hidden by the test")
    return join(*args, **kwargs)
ray.init = init
connect_ray(load_config(None, ["input.paths=[a.parquet]", "input.text_column=d", "pool.local_num_cpus=1"],
                        task="summarize"))
node = ray._private.worker.global_worker.node
procs = psutil.Process().children(recursive=True)
listening = sorted({f"{c.laddr.ip}" for p in procs for c in p.net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN})
info = {"node_ip": node.node_ip_address, "gcs": node.gcs_address, "listening": listening,
        "nodes": [n["NodeManagerAddress"] for n in ray.nodes()]}
ray.shutdown()
print("PROBE " + json.dumps(info))
"""
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_job_started_ray_listens_on_loopback_only():
    """A job with no cluster to join starts its own Ray: node IP, GCS and every listening socket on loopback."""
    temp = tempfile.mkdtemp(prefix="rlb", dir="/tmp")               # short: Ray's socket paths are limited
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=temp, PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    probe = subprocess.Popen([sys.executable, "-c", PROBE], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = probe.communicate(timeout=180)
    finally:
        _stop_group(probe)
        shutil.rmtree(temp, ignore_errors=True)
    lines = [line for line in output.splitlines() if line.startswith("PROBE ")]
    assert lines, output[-3000:]
    info = json.loads(lines[-1][len("PROBE "):])
    assert info["node_ip"] == "127.0.0.1" and info["gcs"].startswith("127.0.0.1:")
    assert info["nodes"] == ["127.0.0.1"]
    assert info["listening"] and set(info["listening"]) <= LOOPBACK, info["listening"]


def _stop_group(proc: subprocess.Popen) -> None:
    """The probe and anything of its Ray left behind: they share the probe's own process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


# ---- no config value is code -------------------------------------------------------------------
def test_yaml_tags_and_override_values_are_never_run(tmp_path, capsys):
    sentinel = tmp_path / "pwned"
    config_file = tmp_path / "job.yaml"
    config_file.write_text(f'task: summarize\ninput: {{paths: [a.parquet], text_column: d}}\n'
                           f'summarize: {{system_prompt: !!python/object/apply:os.system ["touch {sentinel}"]}}\n')
    with pytest.raises(ValueError, match="not a plain YAML config"):
        load_config(config_file)
    assert main("summarize", ["--config", str(config_file)]) == 2 and "python/object" in capsys.readouterr().err
    code = f"__import__('os').system('touch {sentinel}')"
    cfg = load_config(None, ["input.paths=[a.parquet]", "input.text_column=d", f"summarize.system_prompt={code}",
                             f"output.dir={code}"], task="summarize")
    assert cfg.summarize.system_prompt == code and cfg.output.dir == code           # plain strings
    for template in ["{document.__class__}", "{document!r}", "{document:>{width}}", "{__import__}"]:
        with pytest.raises(ValueError, match="summarize.prompt_template"):
            load_config(None, ["input.paths=[a.parquet]", "input.text_column=d",
                               f"summarize.prompt_template={template}"], task="summarize")
    assert render("Sum: {document}", {"document": "{document.__class__} {0}"}) == "Sum: {document.__class__} {0}"
    assert not sentinel.exists()


def test_no_code_path_evaluates_or_unpickles():
    """Static check of dart/, pipeline/ and jobs/: no eval/exec/compile, no pickle or unsafe YAML loads."""
    banned_calls = {"eval", "exec", "compile", "__import__"}
    banned_attrs = {("pickle", "load"), ("pickle", "loads"), ("yaml", "load"), ("yaml", "unsafe_load"),
                    ("yaml", "full_load"), ("yaml", "Loader"), ("yaml", "UnsafeLoader"), ("yaml", "FullLoader"),
                    ("torch", "load"), ("marshal", "loads")}
    found = []
    for path in sorted(p for d in ("dart", "pipeline", "jobs") for p in (ROOT / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in banned_calls:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.id}()")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and (node.value.id, node.attr) in banned_attrs:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not found, found

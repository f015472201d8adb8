"""`ray job submit` of the unchanged summarize job to a `ray start --head` cluster on loopback."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from pipeline_fixtures import FILE_ROWS, ROWS_PER_ITEM, write_docs

ROOT = Path(__file__).parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def head_cluster():
    """A head node of our own (its own temp dir and ports), stopped by process group at the end."""
    temp = tempfile.mkdtemp(prefix="rayh", dir="/tmp")   # short: Ray's socket paths have a length limit
    port, dash = _free_port(), _free_port()
    # Every fixed default port made free too: another cluster on this machine may hold the defaults.
    ports = [f"--{name}={_free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port")]
    # Ray 2.60 clusters want a token by default; the CLI reads ~/.ray/auth_token only in token mode.
    # Single-machine mode keeps every Ray process on 127.0.0.1 (cluster mode would bind the host's IP).
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [_ray_cli(), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", f"--temp-dir={temp}",
         "--disable-usage-stats", "--include-dashboard=true", *ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            probe = subprocess.run([_ray_cli(), "job", "list", "--address", address], env=env,
                                   capture_output=True, text=True, timeout=60)
            if probe.returncode == 0:
                break
            if head.poll() is not None:
                pytest.fail(f"ray start --head exited with {head.returncode}")
            time.sleep(2)
        else:
            pytest.fail("the head node's job server did not come up in 120 s")
        yield address, env
    finally:
        _stop_group(head)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_group(head: subprocess.Popen) -> None:
    """SIGTERM then SIGKILL to the process group of `ray start` (ours alone: it has its own session)."""
    for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 0)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + grace
        while time.time() < deadline and head.poll() is None:
            time.sleep(0.5)
    head.wait(timeout=10)


def _submit(head_cluster, tiny_model_dir, tmp_path, output_dir: str) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir . -- python -m jobs.summarize --config <job.yaml>` as the README says."""
    address, env = head_cluster
    inputs = write_docs(tmp_path / "in", bad_rows=False)
    conf = tmp_path / "job.yaml"
    conf.write_text(yaml.safe_dump({
        "task": "summarize",
        "model": {"source": str(tiny_model_dir), "device": "cpu"},
        "generation": {"max_new_tokens": 3},
        "input": {"paths": [str(p) for p in inputs], "text_column": "document", "reference_column": "summary",
                  "rows_per_item": ROWS_PER_ITEM},
        "output": {"dir": output_dir},
        "pool": {"num_actors": 2, "batch_size": 2},
        "summarize": {"max_document_tokens": 32},
    }))
    command = [_ray_cli(), "job", "submit", "--address", address, "--working-dir", ".", "--",
               "python", "-m", "jobs.summarize", "--config", str(conf), "control.progress=false"]
    for _ in range(10):   # the job agent may come up a little after the job server answers
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        if "No available agent to submit job" not in proc.stdout + proc.stderr:
            break
        time.sleep(2)
    return proc


def test_submitted_job_refuses_a_relative_output_dir(head_cluster, tiny_model_dir, tmp_path):
    """A relative output.dir would land in Ray's temporary copy of the working dir: refused before work."""
    proc = _submit(head_cluster, tiny_model_dir, tmp_path, "outputs")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "failed" in text, text[-3000:]
    assert "output.dir 'outputs' would resolve to" in text and "working_dir_files" in text
    assert "absolute path on storage every node shares" in text and "s3://" in text
    assert "work items" not in text                         # nothing was planned


def test_ray_job_submit_runs_the_unchanged_job(head_cluster, tiny_model_dir, tmp_path):
    proc = _submit(head_cluster, tiny_model_dir, tmp_path, str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout and "ROUGE-L" in proc.stdout
    (run_dir,) = (tmp_path / "out").iterdir()
    assert (run_dir / "_SUCCESS").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rows"] == sum(FILE_ROWS) and summary["error_rows"] == 0
    ids = pq.read_table(run_dir / "parts", columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == sum(FILE_ROWS)

"""Failures during a run (issue 27): a model the actors cannot load, a disk that fills or turns
read-only, an object store that goes away. Each ends in one `error:` line naming the cause, the way
forward and the log file that holds the traceback (exit 1), and the rerun completes every row once."""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq
import pytest
from pipeline_fixtures import FILE_ROWS, fresh_s3_clients, write_docs

from jobs.cli import main
from pipeline.run import Storage

ALL_IDS = [f"doc-{i:03d}" for i in range(FILE_ROWS[0])]     # the first file's rows: 4 items of 2


def job_args(model_dir: Path, inputs: Path, out: str, logs: Path) -> list[str]:
    """A small summarize job on the tiny model: 4 items on one actor, each slowed so that a fault lands
    mid-run."""
    return [f"model.source={model_dir}", "model.device=cpu", "dart.keep_ratio=0.5", "generation.max_new_tokens=4",
            f"input.paths=[{inputs}]", "input.text_column=document", "input.reference_column=summary",
            "input.rows_per_item=2", "input.max_text_chars=2000", "summarize.max_document_tokens=48",
            f"output.dir={out}", "pool.num_actors=1", "pool.batch_size=2", "testing.delay_seconds=0.3",
            "control.progress=false", f"control.log_dir={logs}"]


def failed_line(capsys, args: list[str]) -> str:
    """The one `error:` line of a run that fails (exit 1); its log file holds the traceback."""
    code = main("summarize", args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err[-3000:]
    log_file = Path(errors[0].rsplit("(full log: ", 1)[1].rstrip(")"))
    assert "Traceback" in log_file.read_text()
    return errors[0]


def rerun_ids(capsys, args: list[str], read: Callable[[], list[str]]) -> list[str]:
    """Rerun the same command: it completes; the ids of every row of the run, sorted."""
    code = main("summarize", args)
    captured = capsys.readouterr()
    assert code == 0 and "run complete" in captured.out, captured.err[-3000:]
    return sorted(read())


def after_first_marker(markers: Callable[[], int], fault: Callable[[], None]) -> threading.Thread:
    """A thread that brings `fault` about once the run has written its first marker."""
    def watch() -> None:
        deadline = time.time() + 120
        while markers() < 1 and time.time() < deadline:
            time.sleep(0.05)
        fault()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_docs(tmp_path_factory.mktemp("docs"), bad_rows=False)[0]


def test_model_that_cannot_load_stops_the_job_at_once(ray_cluster, capsys, tiny_model_dir, inputs, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    began = time.perf_counter()
    line = failed_line(capsys, job_args(broken, inputs, str(tmp_path / "out"), tmp_path / "logs"))
    assert line.startswith(f"error: actor could not load model '{broken}': ") and "(full log: " in line
    assert time.perf_counter() - began < 60                       # not retried pool.max_attempts times
    assert not list((tmp_path / "out").glob("*/markers/*.json"))


def test_a_worker_keeps_its_load_error_and_a_restarted_one_stops_the_job(tiny_model_dir, inputs, tmp_path):
    """In-process: the actor answers configure with its load error (Ray would print a raised one with
    a native stack dump and restart the actor); an item sent to a restarted actor that failed to load
    raises WorkerSetupError, which dispatch raises at once instead of retrying."""
    import ray

    from pipeline.cluster import DartWorker, dispatch
    from pipeline.config import load_config
    from pipeline.failures import WorkerSetupError
    from pipeline.run import Job

    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    job = Job.open(load_config(None, job_args(broken, inputs, str(tmp_path / "out"), tmp_path / "logs"),
                               task="summarize"))
    worker = DartWorker(*job.worker_args())
    line, trace = worker.configure(*job.worker_args())["load_error"]
    assert line.startswith(f"actor could not load model '{broken}': ") and "Traceback" in trace
    with pytest.raises(WorkerSetupError, match="actor could not load model"):
        worker.run_item(job.plan[0], job.rows(job.plan[0]), 1)

    class Restarted:                        # what ray.wait/ray.get see from such an actor's item
        class run_item:
            @staticmethod
            def remote(*args):
                return "ref"

    error = ray.exceptions.RayTaskError("run_item", "tb", WorkerSetupError(line))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray, "wait", lambda refs, num_returns: (refs[:1], refs[1:]))
        patch.setattr(ray, "get", lambda ref: (_ for _ in ()).throw(error))
        with pytest.raises(WorkerSetupError, match="actor could not load model"):
            dispatch(job, job.plan, [Restarted()], None)
    assert not list((tmp_path / "out").glob("*/markers/*.json"))        # no item written as failed


@pytest.fixture
def tmpfs(tmp_path):
    """A 64 MiB tmpfs of our own (root only), unmounted after the test."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> None:
    """Write one file until the disk has no byte left."""
    with open(disk / "ballast", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass


def read_only(folder: Path) -> None:
    """`folder` turns read-only: a read-only bind mount of itself (the disk's other files stay open)."""
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)


@pytest.mark.parametrize("fault, says", [("full", "no space left on the device"),
                                         ("read-only", "the file system is read-only")])
def test_disk_fault_mid_run_is_one_line_and_the_rerun_completes(fault, says, ray_cluster, capsys, tiny_model_dir,
                                                                 inputs, tmp_path, tmpfs):
    out = tmpfs / "runs"
    args = job_args(tiny_model_dir, inputs, str(out), tmp_path / "logs")
    thread = after_first_marker(lambda: len(list(out.glob("*/markers/*.json"))),
                                lambda: fill(tmpfs) if fault == "full" else read_only(next(out.glob("*/parts"))))
    line = failed_line(capsys, args)
    thread.join()
    assert line.startswith(f"error: cannot write the run at {out}/summarize-") and says in line
    assert "rerun the same command: finished items are kept" in line
    run = next(out.glob("summarize-*"))
    if fault == "full":
        (tmpfs / "ballast").unlink()
    else:
        subprocess.run(["umount", str(run / "parts")], check=True)
    assert 1 <= len(list(run.glob("markers/*.json"))) < 4           # stopped mid-run, finished items kept
    assert rerun_ids(capsys, args, lambda: pq.read_table(run / "parts").column("id").to_pylist()) == ALL_IDS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fresh_s3():
    """s3fs clients made for this test's S3 server only."""
    fresh_s3_clients()
    yield
    fresh_s3_clients()


def test_object_store_lost_mid_run_is_one_line_and_the_rerun_completes(ray_cluster, capsys, tiny_model_dir, inputs,
                                                                        tmp_path, monkeypatch, fresh_s3):
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)     # the server's request lines
    port = free_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                       "AWS_MAX_ATTEMPTS": "2"}.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        fs = Storage("s3://lost-store").fs
        fs.mkdir("lost-store")
        args = [*job_args(tiny_model_dir, inputs, "s3://lost-store/runs", tmp_path / "logs"), "output.lease_seconds=5"]

        def markers() -> int:
            fs.invalidate_cache()
            return len(fs.glob("lost-store/runs/*/markers/*.json"))

        thread = after_first_marker(markers, server.stop)
        line = failed_line(capsys, args)
        thread.join()
        assert line.startswith("error: cannot write the run at s3://lost-store/runs/summarize-")
        assert "EndpointConnectionError" in line and "check that it is reachable" in line
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)   # the same store, back
        server.start()
        assert 1 <= markers() < 4
        lease = json.loads(fs.cat_file(next(iter(fs.glob("lost-store/runs/*/lock.json")))))
        time.sleep(max(0.0, lease["expires"] - time.time() + 0.2))   # the lease this process held expires (a
                                                                       # rerun in a new process takes it at once)

        def ids() -> list[str]:
            fs.invalidate_cache()
            return [i for p in fs.glob("lost-store/runs/*/parts/*.parquet")
                    for i in pq.read_table(p, filesystem=fs).column("id").to_pylist()]

        assert rerun_ids(capsys, args, ids) == ALL_IDS
    finally:
        server.stop()

"""Faults on one local Ray: a worker or the driver killed mid-run, half-written parts, an item that
always fails. Each ends in a complete run whose rows equal an uninterrupted run's (greedy decoding)."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from pipeline_fixtures import FILE_ROWS, ROOT, WorkerKiller, driver_env, job_config, our_workers, same_rows, write_docs

from pipeline.config import dump_config
from pipeline.driver import run_job
from pipeline.run import Job



@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_docs(tmp_path_factory.mktemp("docs"))


@pytest.fixture(scope="module")
def reference(ray_cluster, inputs, tiny_model_dir, tmp_path_factory):
    """The uninterrupted run every fault is compared with: 10 items, 2 actors."""
    summary = run_job(job_config("summarize", tiny_model_dir, inputs, tmp_path_factory.mktemp("reference")))
    assert summary["complete"] and summary["rows"] == sum(FILE_ROWS)
    return summary


def _parts(run_dir: str) -> pa.Table:
    return pq.read_table(f"{run_dir}/parts")


def _assert_equals_reference(summary: dict, reference: dict, inputs: list[Path]) -> pa.Table:
    assert summary["complete"] and summary["config_fingerprint"] == reference["config_fingerprint"]
    table = pq.read_table(f"{summary['run_dir']}/parts")
    expected = [i for p in inputs for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()]
    assert sorted(table.column("id").to_pylist()) == sorted(expected)               # each row exactly once
    assert same_rows(_parts(summary["run_dir"]), _parts(reference["run_dir"]))
    return table


@pytest.mark.parametrize("num_actors, max_restarts, says", [(1, 1, "is back"), (2, 0, "is dead")],
                         ids=["restarted", "dropped"])
def test_actor_killed_mid_item(num_actors, max_restarts, says, reference, inputs, tiny_model_dir, tmp_path, caplog):
    """The only actor, restarted by Ray; or one of two, with no restarts, dropped from the pool.
    Either way its items run again and the job finishes."""
    cfg = job_config("summarize", tiny_model_dir, inputs, tmp_path / "out", testing={"delay_seconds": 0.5},
                     pool={"num_actors": num_actors, "cpus_per_actor": 1, "batch_size": 2,
                           "max_restarts": max_restarts})
    killer = WorkerKiller()
    killer.start()
    with caplog.at_level(logging.WARNING, logger="pipeline.cluster.pool"):
        try:
            summary = run_job(cfg)
        finally:
            killer.stop.set()
            killer.join()
    assert killer.killed is not None
    table = _assert_equals_reference(summary, reference, inputs)
    assert pc.max(table["attempt"]).as_py() == 2                   # the killed item ran again
    assert summary["error_rows"] == reference["error_rows"] == 3   # only the bad documents
    assert says in caplog.text


@pytest.mark.parametrize("stop, exit_code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 143),
                                             (signal.SIGINT, 130)])
def test_driver_killed_then_rerun_resumes(stop, exit_code, ray_cluster, reference, inputs, tiny_model_dir, tmp_path):
    """`python -m jobs.summarize` stopped once some items are done (killed, or asked to stop as
    schedulers and Ctrl-C do); the rerun redoes only the rest."""
    out = tmp_path / "out"
    # 3 s an item, two at a time on the actor: the 7 items left after the third marker take 9 s or
    # more, so a stop sent by a test process starved of CPU (a full run on 2 cores: 1.5 s was too
    # little twice) still lands before the job's end
    cfg = job_config("summarize", tiny_model_dir, inputs, out, testing={"delay_seconds": 3.0},
                     pool={"num_actors": 1, "cpus_per_actor": 1, "batch_size": 2})
    config_file = tmp_path / "job.yaml"
    config_file.write_text(dump_config(cfg))
    markers = Job.open(cfg).run.markers
    log = open(tmp_path / "driver.log", "wb")
    # SIGINT at its default, as from a shell: a child inherits an ignored SIGINT (Python then keeps it
    # ignored), and in a full test run the test process has had it ignored
    driver = subprocess.Popen([sys.executable, "-m", "jobs.summarize", "--config", str(config_file)],
                              cwd=ROOT, env=driver_env(ray_cluster), stdout=log, stderr=subprocess.STDOUT,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    actors: set[int] = set()
    try:
        deadline = time.time() + 180
        while len(list(markers.glob("*.json"))) < 3:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.time() < deadline, "the driver wrote no markers in 180 s"
            actors |= {p.pid for p in our_workers()}
            time.sleep(0.05)
        driver.send_signal(stop)
        assert driver.wait(timeout=60) == exit_code
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
        _reap(actors)
    said = (tmp_path / "driver.log").read_text()
    if stop != signal.SIGKILL:     # a clean stop: one line, no stack dump
        assert "finished items are kept" in said and "SIGTERM received" not in said and "Traceback" not in said
    done_before = {p.name: p.stat().st_mtime_ns for p in markers.glob("*.json")}
    assert 3 <= len(done_before) < 10

    summary = run_job(cfg)
    assert summary["skipped_items"] == len(done_before)
    assert {p.name: p.stat().st_mtime_ns for p in markers.glob("*.json") if p.name in done_before} == done_before
    _assert_equals_reference(summary, reference, inputs)


STOPPED_WHILE_BLOCKED = """
import os, signal
from jobs.cli import stopped
from pipeline.cluster import stop_on_sigterm
stop_on_sigterm()
try:
    os.kill(os.getpid(), signal.SIGTERM)
except KeyboardInterrupt:
    pass
raise SystemExit(stopped(KeyboardInterrupt()))   # what Ray's native wait raises when a signal lands in it
"""


def test_sigterm_is_reported_as_sigterm_when_ray_turns_it_into_a_keyboard_interrupt():
    said = subprocess.run([sys.executable, "-c", STOPPED_WHILE_BLOCKED], cwd=ROOT, capture_output=True, text=True)
    assert said.returncode == 143 and "stopped by SIGTERM" in said.stderr
    plain = subprocess.run([sys.executable, "-c", "from jobs.cli import stopped\n"
                            "raise SystemExit(stopped(KeyboardInterrupt()))"], cwd=ROOT, capture_output=True, text=True)
    assert plain.returncode == 130 and "stopped by interrupt" in plain.stderr


def _reap(pids: set[int], grace: float = 30) -> None:
    """The killed driver's actors: Ray ends them when their owner dies; kill any left after `grace`."""
    deadline = time.time() + grace
    left = set(pids)
    while left and time.time() < deadline:
        left = {pid for pid in left if _running(pid)}
        time.sleep(0.2)
    for pid in left:
        logging.getLogger(__name__).warning("killing orphaned actor process %d", pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_half_written_parts_are_redone(reference, inputs, tiny_model_dir, tmp_path):
    """A truncated part, a part without its marker, a marker without its part and a temp file."""
    out = tmp_path / "out"
    run_dir = out / Path(reference["run_dir"]).name
    shutil.copytree(reference["run_dir"], run_dir)
    cfg = job_config("summarize", tiny_model_dir, inputs, out, pool={"num_actors": 1})
    job = Job.open(cfg)
    truncated, unmarked, missing = job.plan[0], job.plan[4], job.plan[9]
    part = job.run.part_path(truncated)
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    job.run.marker_path(unmarked).unlink()
    job.run.part_path(missing).unlink()
    (job.run.parts / f".{job.run.part_path(unmarked).name}.tmp-deadbeef").write_bytes(b"PAR1 half")
    assert [it for it in job.plan if not job.run.is_done(it)] == [truncated, unmarked, missing]

    summary = run_job(cfg)
    assert summary["skipped_items"] == 7 and not list(job.run.parts.glob(".*"))
    _assert_equals_reference(summary, reference, inputs)


def test_always_failing_item_becomes_error_rows(ray_cluster, inputs, tiny_model_dir, tmp_path):
    cfg = job_config("summarize", tiny_model_dir, inputs[:1], tmp_path / "out", testing={"fail_ids": ["doc-001"]},
                     pool={"num_actors": 1, "cpus_per_actor": 1, "batch_size": 2, "max_attempts": 2})
    summary = run_job(cfg)
    assert summary["complete"] and summary["rows"] == FILE_ROWS[0] and summary["error_rows"] == 3
    table = pq.read_table(f"{summary['run_dir']}/parts").sort_by("id")
    failed = table.filter(pc.equal(table["status"], "error")).to_pylist()
    assert [r["id"] for r in failed] == ["doc-000", "doc-001", "doc-002"]          # the item holding doc-001
    assert all(r["attempt"] == 2 and "testing.fail_ids" in r["error"] for r in failed)
    assert set(table.filter(pc.equal(table["status"], "ok"))["attempt"].to_pylist()) == {1}
    assert yaml.safe_load((Path(summary["run_dir"]) / "summary.json").read_text())["error_rows"] == 3

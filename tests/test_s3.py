"""Input and output on a real S3 API: a moto server on 127.0.0.1 started here, reached through s3fs
with the standard AWS environment variables (AWS_ENDPOINT_URL...), as a cluster's driver would."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_fixtures import FILE_ROWS, job_config, same_rows, write_docs

from pipeline.config import dump_config
from pipeline.driver import run_job
from pipeline.run import Job, RunBusy, RunDir, RunLost, Storage, json_bytes

ROOT = Path(__file__).parents[1]
BUCKET = "dart-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(s3fs filesystem, input glob URI): a moto S3 server on loopback holding the test documents."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        fs = Storage(f"s3://{BUCKET}").fs
        fs.mkdir(BUCKET)
        for path in write_docs(tmp_path_factory.mktemp("docs")):
            fs.put_file(str(path), f"{BUCKET}/in/{path.name}")
        yield fs, f"s3://{BUCKET}/in/*.parquet"
    server.stop()


def _parts(fs, run_url: str) -> pa.Table:
    """Every row of a run on S3."""
    fs.invalidate_cache()
    return pa.concat_tables(pq.read_table(p, filesystem=fs) for p in sorted(fs.glob(f"{run_url}/parts/*.parquet")))


def _markers(fs, run: RunDir) -> dict[str, str]:
    fs.invalidate_cache()
    return {p: fs.info(p)["ETag"] for p in fs.glob(f"{run.path}/markers/*.json")}


def _job_env(ray_cluster) -> dict:
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _kill_after_markers(cmd: list[str], env: dict, fs, run: RunDir, log_path: Path, count: int) -> None:
    """Start the driver, SIGKILL it once `count` items are done (Ray ends the actors it owned)."""
    with open(log_path, "wb") as log:
        driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 180
            while len(_markers(fs, run)) < count:
                assert driver.poll() is None, log_path.read_text()[-3000:]
                assert time.time() < deadline, "the driver wrote no markers in 180 s"
                time.sleep(0.2)
            driver.send_signal(signal.SIGKILL)
            driver.wait(timeout=30)
        finally:
            if driver.poll() is None:
                driver.kill()


def test_driver_killed_mid_run_on_s3_resumes_to_the_uninterrupted_output(s3, ray_cluster, tiny_model_dir,
                                                                          tmp_path, caplog):
    fs, inputs = s3
    reference = run_job(job_config("summarize", tiny_model_dir, [inputs], f"s3://{BUCKET}/reference"))
    assert reference["complete"] and reference["run_dir"].startswith(f"s3://{BUCKET}/reference/")
    cfg = job_config("summarize", tiny_model_dir, [inputs], f"s3://{BUCKET}/runs", testing={"delay_seconds": 0.5},
                     pool={"num_actors": 1, "cpus_per_actor": 1, "batch_size": 2})
    config_file = tmp_path / "job.yaml"
    config_file.write_text(dump_config(cfg))
    run = Job.open(cfg).run
    _kill_after_markers([sys.executable, "-m", "jobs.summarize", "--config", str(config_file)],
                        _job_env(ray_cluster), fs, run, tmp_path / "driver.log", 3)
    before = _markers(fs, run)
    assert 3 <= len(before) < 10
    assert json.loads(fs.cat_file(f"{run.path}/lock.json"))["host"] == socket.gethostname()   # left by the dead

    with caplog.at_level(logging.WARNING, logger="pipeline.run.runlock"):
        summary = run_job(cfg)
    assert "taking over the lease" in caplog.text and "its process is gone" in caplog.text
    assert summary["complete"] and summary["skipped_items"] == len(before)
    assert summary["config_fingerprint"] == reference["config_fingerprint"]
    after = _markers(fs, run)
    assert {p: after[p] for p in before} == before                      # finished items were not redone
    table = _parts(fs, summary["run_dir"])
    assert sorted(table.column("id").to_pylist()) == [f"doc-{i:03d}" for i in range(sum(FILE_ROWS))]
    assert same_rows(table, _parts(fs, reference["run_dir"]))
    assert fs.exists(f"{run.path}/_SUCCESS") and not fs.exists(f"{run.path}/lock.json")


@pytest.fixture
def s3_job(s3, tiny_model_dir, request):
    """A run on S3 whose every part is written (as error rows: no model runs)."""
    fs, inputs = s3
    cfg = job_config("summarize", tiny_model_dir, [inputs], f"s3://{BUCKET}/{request.node.name[:40]}")
    job = Job.open(cfg)
    for item in job.plan:
        job.write_failure(item, job.rows(item), "boom", 1)
    return cfg, job, fs


def test_replaced_part_object_is_redone(s3_job):
    cfg, job, fs = s3_job
    victim, donor = job.plan[0], job.plan[1]
    fs.pipe_file(job.run.part_key(victim), fs.cat_file(job.run.part_key(donor)))
    assert Job.open(cfg).unfinished() == [victim]
    fs.rm_file(job.run.marker_key(job.plan[2]))
    assert Job.open(cfg).unfinished() == [victim, job.plan[2]]


def test_lease_refuses_a_live_holder_takes_an_expired_one_and_is_renewed(s3_job, caplog):
    cfg, job, fs = s3_job
    lease = f"{job.run.path}/lock.json"
    foreign = {"token": "t", "host": "other-node", "pid": 1, "since": "2026-01-01T00:00:00+00:00",
               "expires": time.time() + 60}
    fs.pipe_file(lease, json_bytes(foreign))
    with pytest.raises(RunBusy, match=f"{job.run.root}.*host other-node, pid 1, since 2026-01-01"):
        with job.run.lock():
            pass
    fs.pipe_file(lease, json_bytes({**foreign, "expires": time.time() - 1}))
    with caplog.at_level(logging.WARNING, logger="pipeline.run.runlock"), job.run.lock(lease_seconds=1.5):
        held = json.loads(fs.cat_file(lease))
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(RunBusy, match=f"pid {os.getpid()}"):
            with Job.open(cfg).run.lock():
                pass
        time.sleep(1.3)
        assert json.loads(fs.cat_file(lease))["expires"] > held["expires"]     # renewed
    assert "lease expired" in caplog.text and not fs.exists(lease)


def test_driver_that_lost_its_lease_stops_writing(s3_job):
    cfg, job, fs = s3_job
    item = job.plan[0]
    with job.run.lock(lease_seconds=1.5):
        taker = {"token": "other", "host": "other-node", "pid": 2, "since": "now", "expires": time.time() + 60}
        fs.pipe_file(f"{job.run.path}/lock.json", json_bytes(taker))
        time.sleep(1.0)                                   # a renewal finds the lease taken
        with pytest.raises(RunLost, match="other-node"):
            job.write_failure(item, job.rows(item), "late", 2)
    assert json.loads(fs.cat_file(job.run.marker_key(item)))["error"] == "boom"   # nothing overwritten
    assert json.loads(fs.cat_file(f"{job.run.path}/lock.json"))["token"] == "other"  # theirs, left alone

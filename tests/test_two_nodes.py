"""A job on a Ray cluster of two nodes on this machine (a head and a worker node, each started with
`ray start` on 127.0.0.1 with one CPU): actors on both, then the worker node's raylet is SIGKILLed
mid-run; the job finishes on the head node and its output equals an uninterrupted run's."""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pipeline_fixtures import FILE_ROWS, same_rows, write_docs


ROOT = Path(__file__).parents[1]
PORT_FLAGS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
              "runtime-env-agent-port", "node-manager-port", "object-manager-port")
# `ray start` of each node, with the two changes that keep it on loopback: Ray's CLI refuses a
# worker node in single-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which keeps every process
# it starts on 127.0.0.1), and in cluster mode it turns --node-ip-address=127.0.0.1 into the host's
# routable IP, where GCS, raylet and agents then listen on every interface.
RAY_START_ON_LOOPBACK = """
import sys
from ray._private import ray_constants, services
ray_constants.ENABLE_RAY_CLUSTER = True                 # this process only: allow a worker node
services.resolve_ip_for_localhost = lambda host: host   # keep 127.0.0.1 as the node's address
from ray.scripts.scripts import main
sys.argv = ["ray", *sys.argv[1:]]
main()
"""
NODES = """
import json, sys, time, ray
from pipeline.cluster import check_placement
from pipeline.settings import PoolConfig
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.time() + 120
while time.time() < deadline and sum(n["Alive"] for n in ray.nodes()) < 2:
    time.sleep(0.5)
try:     # 2 CPUs in the cluster, but no node has 2
    check_placement(PoolConfig(num_actors=1, cpus_per_actor=2))
    refusal = None
except ValueError as err:
    refusal = str(err)
print(json.dumps({"nodes": [{"id": n["NodeID"], "port": n["NodeManagerPort"]} for n in ray.nodes() if n["Alive"]],
                  "refusal": refusal}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], env: dict) -> tuple[subprocess.Popen, int]:
    """`ray start --block` in a session of its own (its process group is ours to stop), every port
    chosen free on loopback; returns the process and its raylet's node manager port."""
    ports = {flag: free_port() for flag in PORT_FLAGS}
    proc = subprocess.Popen([sys.executable, "-c", RAY_START_ON_LOOPBACK, "start", "--block",
                             "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats", *args,
                             *(f"--{k}={v}" for k, v in ports.items())],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return proc, ports["node-manager-port"]


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the node's process group (raylet, GCS, workers: all in it)."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + grace
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
    proc.wait(timeout=10)


@pytest.fixture
def two_nodes():
    """(address, env, {"head"|"worker": node id}, worker `ray start` process), both nodes stopped after."""
    temp = tempfile.mkdtemp(prefix="ray2n", dir="/tmp")         # short: socket paths have a length limit
    port = free_port()
    # Token mode as Ray 2.60 clusters want; single-machine mode keeps every Ray process on 127.0.0.1.
    # A dead node is noticed after 3 missed health checks a second apart (Ray's default: 5 of 3 s).
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_health_check_period_ms": "1000",
           "RAY_health_check_failure_threshold": "3"}
    env.pop("RAY_ADDRESS", None)
    started = []
    try:
        head, head_port = start_node(["--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
                                      f"--ray-client-server-port={free_port()}"], env)
        started.append(head)
        wait_for_port(port, head, seconds=120)
        worker, worker_port = start_node([f"--address=127.0.0.1:{port}"], env)
        started.append(worker)
        try:
            probe = subprocess.run([sys.executable, "-c", NODES, f"127.0.0.1:{port}"], cwd=ROOT, env=env,
                                   capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired as err:
            stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else err.stderr or ""
            pytest.fail(f"the probe of the 2-node cluster ran past 240 s; its stderr ends:\n{stderr[-2000:]}")
        found = json.loads(probe.stdout.strip().splitlines()[-1])
        nodes = {n["port"]: n["id"] for n in found["nodes"]}
        assert set(nodes) == {head_port, worker_port}, (nodes, probe.stderr[-2000:])
        assert "pool.cpus_per_actor=2 CPU(s)" in found["refusal"] and "(at most 0 fit)" in found["refusal"]
        wide = [s for node in started for s in listening(node) if not loopback(s[0])]
        assert not wide, f"Ray processes listening beyond loopback: {wide}"
        yield f"127.0.0.1:{port}", env, {"head": nodes[head_port], "worker": nodes[worker_port]}, worker
    finally:
        spawned = [c for proc in started for c in descendants(proc)]
        for proc in reversed(started):
            stop_group(proc)
        for child in spawned:          # anything that left its node's process group
            with contextlib.suppress(psutil.Error):
                child.kill()
        shutil.rmtree(temp, ignore_errors=True)


def wait_for_port(port: int, node: subprocess.Popen, seconds: float) -> None:
    """Until the head's GCS accepts connections on `port` (a fixed sleep is too short on a loaded machine)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert node.poll() is None, f"`ray start --head` exited with {node.returncode}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.5)
    pytest.fail(f"the head node's GCS did not listen on 127.0.0.1:{port} within {seconds:.0f} s")


def descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        return []


def listening(node: subprocess.Popen) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of a node's processes."""
    found = set()
    for proc in [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]:
        try:
            found |= {(c.laddr.ip, c.laddr.port, proc.name()) for c in proc.net_connections("tcp")
                      if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            continue
    return found


def loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def raylet_of(node: subprocess.Popen) -> psutil.Process:
    (raylet,) = [p for p in psutil.Process(node.pid).children(recursive=True) if p.name() == "raylet"]
    return raylet


def job_data(model_dir: Path, inputs: list[Path], out: Path, **pool) -> dict:
    """Items of two rows that each take a second (testing.delay_seconds), so the kill lands mid-run."""
    return {
        "task": "summarize", "model": {"source": str(model_dir), "device": "cpu"},
        "dart": {"method": "dart", "keep_ratio": 0.5}, "generation": {"max_new_tokens": 4},
        "input": {"paths": [str(p) for p in inputs], "text_column": "document", "reference_column": "summary",
                  "rows_per_item": 2, "max_text_chars": 2000},
        "output": {"dir": str(out)}, "summarize": {"max_document_tokens": 48},
        "pool": {"num_actors": 2, "cpus_per_actor": 1, "batch_size": 2, **pool},
        "control": {"progress": False}, "testing": {"delay_seconds": 1.0}}


def driver(data: dict, address: str, env: dict, tmp_path: Path) -> subprocess.Popen:
    """The job's driver, joining the cluster through pool.ray_address."""
    conf = tmp_path / f"{Path(data['output']['dir']).name}.yaml"
    conf.write_text(yaml.safe_dump(data))
    return subprocess.Popen([sys.executable, "-m", "jobs.summarize", "--config", str(conf),
                             f"pool.ray_address={address}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        pytest.fail(f"the driver did not finish in {timeout} s:\n{proc.communicate()[0][-3000:]}")
    return proc.returncode, out


def nodes_so_far(out: Path) -> set[str]:
    """node_id of every part written so far (a part is renamed into place whole)."""
    found = set()
    for part in out.glob("*/parts/*.parquet"):
        found |= set(pq.read_table(part, columns=["node_id"]).column("node_id").to_pylist())
    return found


def parts(run_dir: str) -> pa.Table:
    return pq.read_table(f"{run_dir}/parts")


def test_a_job_finishes_on_the_remaining_node_when_a_raylet_dies(two_nodes, ray_cluster, tiny_model_dir, tmp_path):
    from pipeline.config import parse_config
    from pipeline.driver import run_job

    address, env, node_ids, worker_node = two_nodes
    inputs = write_docs(tmp_path / "in", bad_rows=False)
    proc = driver(job_data(tiny_model_dir, inputs, tmp_path / "out"), address, env, tmp_path)
    reference: list[dict] = []     # one uninterrupted run on the session's local Ray, meanwhile
    local = threading.Thread(target=lambda: reference.append(run_job(parse_config(
        {**job_data(tiny_model_dir, inputs, tmp_path / "reference"), "testing": {"delay_seconds": 0}}))), daemon=True)
    local.start()
    try:
        deadline = time.time() + 180
        while nodes_so_far(tmp_path / "out") != set(node_ids.values()):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"no parts from both nodes (got {nodes_so_far(tmp_path / 'out')}):\n"
                            f"{finish(proc, 10)[1][-3000:]}")
            time.sleep(0.2)
        raylet_of(worker_node).send_signal(signal.SIGKILL)      # mid-run: items are in flight on both nodes
        code, said = finish(proc, 300)
    finally:
        if proc.poll() is None:
            stop_group(proc)
    assert code == 0, said[-3000:]

    (run_dir,) = (tmp_path / "out").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["rows"] == sum(FILE_ROWS) and summary["error_rows"] == 0
    table = pq.read_table(run_dir / "parts")
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == sum(FILE_ROWS)                      # nothing lost or doubled
    assert set(table.column("node_id").to_pylist()) == set(node_ids.values())
    assert max(table.column("attempt").to_pylist()) >= 2                    # an item lost with the node ran again

    local.join(300)
    (reference,) = reference
    assert reference["config_fingerprint"] == summary["config_fingerprint"]
    assert same_rows(parts(str(run_dir)), parts(reference["run_dir"]))

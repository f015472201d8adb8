"""Conformance with the authors' (corrected) DART code: `python -m dart.replay` on ../shared/golden."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import requires_shared, shared_dir

ROOT = Path(__file__).parents[1]
GOLDEN = shared_dir() / "golden" / "reference_runs.json"


def replay(golden: Path, out: Path) -> None:
    subprocess.run([sys.executable, "-m", "dart.replay", str(golden), str(out)], cwd=ROOT, check=True)


def compare(golden: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(shared_dir() / "golden" / "compare.py"), str(golden), str(out)],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("replay") / "replay.json"
    replay(GOLDEN, out)
    return out


@requires_shared
def test_every_golden_run_conforms(replayed):
    result = compare(GOLDEN, replayed)
    assert result.returncode == 0, result.stdout
    assert f"conform {len(json.loads(GOLDEN.read_text()))}/" in result.stdout


@requires_shared
def test_replay_writes_the_golden_fields(replayed):
    golden = {run["name"]: run for run in json.loads(GOLDEN.read_text())}
    for run in json.loads(replayed.read_text()):
        expected = {"name", "generated", "mask_formations", "kept_per_forward", "drift_windows"}
        if golden[run["name"]].get("proxies"):
            expected.add("proxies")
        assert set(run) == expected
        assert {w["kind"] for w in run["drift_windows"]} <= {"baseline", "monitor", "fired"}


@requires_shared
def test_another_golden_file_of_the_same_format(tmp_path):
    """A golden file elsewhere, with its own model folder name and a subset of runs, replays unchanged."""
    runs = json.loads(GOLDEN.read_text())
    picked = [run for run in runs if run["name"] in ("drift_auto50_m1_max", "perlayer_m0_mean")]
    for run in picked:
        target = tmp_path / f"copy-of-{run['model_dir']}"
        if not target.exists():
            shutil.copytree(GOLDEN.parent / run["model_dir"], target)
        run["model_dir"] = target.name
    golden = tmp_path / "other.json"
    golden.write_text(json.dumps(picked))
    out = tmp_path / "out.json"
    replay(golden, out)
    result = compare(golden, out)
    assert result.returncode == 0, result.stdout
    assert "conform 2/2" in result.stdout

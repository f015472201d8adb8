"""The layers' import promises: a driver plans without a model library; the run path carries no study code."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def imported_after(statement: str) -> set[str]:
    """Top-level modules loaded by a fresh interpreter running `statement`."""
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("statement", [
    "import pipeline.config",
    "import jobs.cli, pipeline.driver, pipeline.job, pipeline.pool, pipeline.worker",
])
def test_driver_plans_without_model_or_study_libraries(statement):
    loaded = imported_after(statement)
    assert not loaded & {"torch", "transformers", "pandas", "matplotlib", "ray"}


def test_engine_needs_no_pipeline():
    loaded = imported_after("import dart.engine, dart.loading, dart.cli")
    assert "torch" in loaded and not loaded & {"pipeline", "jobs", "ray", "pyarrow"}

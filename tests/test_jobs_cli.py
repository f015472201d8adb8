"""The jobs' command line, without a cluster: bad configs fail fast with the key named."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from jobs.cli import format_table

ROOT = Path(__file__).parents[1]


def test_bad_override_fails_before_anything_runs():
    proc = subprocess.run([sys.executable, "-m", "jobs.summarize", "--config", "conf/summarize.yaml",
                           "pool.num_actors=0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "pool.num_actors" in proc.stderr


def test_task_mismatch_is_refused():
    proc = subprocess.run([sys.executable, "-m", "jobs.qa", "--config", "conf/summarize.yaml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "task" in proc.stderr


def test_final_table_has_the_issue_columns():
    table = format_table({"task": "summarize", "items": 6, "rows": 24, "error_rows": 0, "rouge_l": 0.1534,
                          "mean_applied_sparsity": 0.5, "ffn_flops_executed_fraction": 0.7712, "drift_events": 3,
                          "tokens_per_second": 12.34})
    titles, values = table.splitlines()
    for word in ("items", "ROUGE-L", "applied sparsity", "FFN FLOPs vs dense", "drift events", "tokens/s"):
        assert word in titles
    assert "0.153" in values and "0.771" in values and "12.3" in values

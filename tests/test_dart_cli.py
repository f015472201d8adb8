"""`python -m dart`: one prompt or a file of prompts, text and telemetry out."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "dart", *args], cwd=ROOT, capture_output=True, text=True)


def test_file_of_prompts_prints_text_and_telemetry(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello there\n\nsecond prompt\n")
    out = run_cli("--prompts-file", str(prompts), "--model", str(tiny_model_dir), "--device", "cpu",
                  "--max-new-tokens", "6", "--set", "budget=uniform", "--set", "gen.stop_on_eos=false", "--json")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["prompt"] for r in records] == ["hello there", "second prompt"]
    assert all(r["telemetry"]["generated_tokens"] == 6 for r in records)
    assert records[0]["telemetry"]["applied_sparsity"] > 0.4


def test_human_readable_output(tiny_model_dir):
    out = run_cli("hi", "--model", str(tiny_model_dir), "--device", "cpu", "--max-new-tokens", "4",
                  "--method", "static", "--set", "budget=uniform")
    assert out.returncode == 0, out.stderr
    assert "applied FFN sparsity per generated token" in out.stdout


def test_bad_settings_are_named():
    out = run_cli("hi", "--method", "magic")
    assert out.returncode == 2 and "method" in out.stderr
    out = run_cli("hi", "--keep-ratio", "1.5")
    assert out.returncode == 2 and "keep_ratio" in out.stderr

"""The GPU benchmark script runs end to end on a tiny shape on CPU (its --smoke option)."""
from bench import gpu_llama8b_shape


def test_gpu_script_smoke_prints_its_tables(capsys):
    gpu_llama8b_shape.main(["--smoke", "--tokens", "2"])
    out = capsys.readouterr().out
    for title in ("Bench 1 (GPU script)", "Bench 2 (GPU script)", "Bench 4a (GPU script)", "Bench 4b (GPU script)"):
        assert title in out
    assert "| 8     | dart auto 70%" in out


def test_gpu_check_smoke_runs_the_job_and_the_engine_benches(ray_cluster, tiny_model_dir, capsys):
    from bench import gpu_check

    gpu_check.main(["--smoke", f"model.source={tiny_model_dir}", "summarize.max_document_tokens=48"])
    out = capsys.readouterr().out
    assert "GPU check: summarize job, 2 documents" in out and "Bench 1 (GPU script)" in out
    job_table = out.split("GPU check: summarize job")[1].split("Bench 1 (GPU script)")[0]
    lines = [line for line in job_table.splitlines() if line.startswith(("| dense", "| DART 50%"))]
    assert len(lines) == 2 and all("| float32" in line for line in lines)     # the tiny model stays float32

"""The GPU benchmark script runs end to end on a tiny shape on CPU (its --smoke option)."""
from bench import gpu_llama8b_shape


def test_gpu_script_smoke_prints_its_tables(capsys):
    gpu_llama8b_shape.main(["--smoke", "--tokens", "2"])
    out = capsys.readouterr().out
    for title in ("Bench 1 (GPU script)", "Bench 2 (GPU script)", "Bench 4a (GPU script)", "Bench 4b (GPU script)"):
        assert title in out
    assert "| 8     | dart auto 70%" in out

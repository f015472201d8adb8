"""bench.raydata_baseline end to end on the tiny model: every side runs and the table says how many
outputs the dense job shares with Hugging Face greedy generation (all: the same model, prompts, batches)."""
from pipeline_fixtures import job_config, write_docs

from bench import raydata_baseline
from pipeline.config import dump_config


def test_baseline_bench_prints_every_side(ray_cluster, tiny_model_dir, tmp_path, capsys):
    config = job_config("summarize", tiny_model_dir, write_docs(tmp_path / "docs", bad_rows=False), tmp_path / "out",
                        dart={"method": "dense"},                 # two sides (a DART side runs the same code)
                        pool={"num_actors": 1, "batch_size": 2})  # the session's Ray has 2 CPUs: one for reads
    path = tmp_path / "job.yaml"
    path.write_text(dump_config(config))
    raydata_baseline.main(["--config", str(path), "--limit", "4"])
    lines = capsys.readouterr().out.splitlines()
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines if line.startswith("| ")}
    assert set(cells) == {"side", raydata_baseline.BASELINE, "job, dense"}
    assert cells["job, dense"][3] == "4/4" and cells["job, dense"][4] == "0.000"
    assert all(float(cells[side][0]) > 0 for side in cells if side != "side")

"""Every shipped config under conf/ validates and runs from a user's clone, without ../shared.

A clone is stood in for by a temporary directory holding only conf/ and data/. Each study runs
every cell on 4 rows and each embedded job on 4 rows, through the real pipeline on Ray, with the
tiny test model in place of the embedded SmolLM2. Configs that need a hub model only validate.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import JobConfig, load_config
from pipeline.study.config import StudyConfig, expand, load_study
from pipeline.study.sweep import run_study

REPO = Path(__file__).parents[1]
CONF = REPO / "conf"
ALL = sorted(CONF.glob("*.yaml"))
HUB = [p for p in ALL if "_llama31_8b" in p.name]           # need a hub model: validate only
# study_xsum first: study_remask's XSum cells are the same configs, so it finds them done.
STUDIES = sorted((p for p in ALL if p.name.startswith("study_") and p not in HUB),
                 key=lambda p: p.name != "study_xsum.yaml")
JOBS = [p for p in ALL if not p.name.startswith("study_") and p not in HUB]
ROWS = 4


def job_configs(path: Path) -> list[JobConfig]:
    """The job config of a job YAML, or every cell of a study YAML."""
    if path.name.startswith("study_"):
        return [run.config for run in expand(load_study(path))]
    return [load_config(path, task=yaml.safe_load(path.read_text())["task"])]


def test_conf_ships_studies_and_jobs():
    assert {p.stem for p in STUDIES} >= {"study_xsum", "study_quoref", "study_remask"}
    assert {p.stem for p in JOBS} >= {"summarize", "qa", "label"}


@pytest.mark.parametrize("path", ALL, ids=[p.name for p in ALL])
def test_shipped_config_validates_and_reads_only_files_in_the_repo(path):
    assert path.read_text().startswith("#"), "each YAML starts with its launch instructions"
    configs = job_configs(path)
    assert configs
    if path in HUB:
        return
    for config in configs:
        for name in config.input.paths:
            assert not Path(name).is_absolute() and ".." not in Path(name).parts, name
            assert (REPO / name).resolve().is_relative_to(REPO.resolve()), name
            assert (REPO / name).is_file(), f"{path.name} reads {name}, which is not in the repo"


# ---- real runs from a clone without ../shared ------------------------------------------------
@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """conf/ and data/ copied to a fresh directory with no ../shared beside it."""
    root = tmp_path_factory.mktemp("clone") / "repo"
    for folder in ("conf", "data"):
        shutil.copytree(REPO / folder, root / folder)
    assert not (root.parent / "shared").exists()
    return root


@pytest.fixture(scope="module")
def model_dir(tiny_model_factory) -> Path:
    """The tiny Llama with a context long enough for the shipped prompts (MMLU, Quoref passages)."""
    return tiny_model_factory(max_positions=2048)


def tiny_overrides(model_dir: Path, prefix: str) -> list[str]:
    return [f"{prefix}model.source={model_dir}", f"{prefix}model.device=cpu", f"{prefix}generation.max_new_tokens=2",
            f"{prefix}pool.num_actors=1", f"{prefix}pool.cpus_per_actor=1", f"{prefix}control.progress=false"]


def reduced(study: StudyConfig) -> StudyConfig:
    """Every dataset of the study, but only its baseline and its first compared variant at the first
    budget that variant runs at: each cell starts its own Ray actors (seconds each), and every cell's
    config is validated above. SHIPPED_FULL_SWEEP=1 runs every cell."""
    if os.environ.get("SHIPPED_FULL_SWEEP") == "1":
        return study
    baseline = study.study.baseline
    first = study.study.compare[0][0] if study.study.compare else \
        next(v.name for v in study.variants if v.name != baseline)
    variant = next(v for v in study.variants if v.name == first)
    budget = next(b for b in study.budgets if variant.budgets is None or b.name in variant.budgets)
    data = study.model_dump(mode="json")
    data["variants"] = [{**v, "budgets": None} for v in data["variants"] if v["name"] in (baseline, first)]
    data["budgets"] = [budget.model_dump(mode="json")]
    data["study"]["compare"] = [[first, baseline]]
    return StudyConfig.model_validate(data)


@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_shipped_study_runs_from_a_clone(path, clone, model_dir, ray_cluster, monkeypatch, capsys):
    from jobs.study import main

    monkeypatch.chdir(clone)
    conf, overrides = f"conf/{path.name}", [f"study.limit={ROWS}", *tiny_overrides(model_dir, "base.")]
    if load_study(path).models:     # the tiny model in place of every model of the axis (its own test: test_study_ray)
        overrides.append("models=[]")
    study = reduced(load_study(conf, overrides))
    out = run_study(study)
    cells = expand(study)
    assert out["complete"] and {r.dataset for r in cells} == {d.name for d in study.datasets}
    results = pq.read_table(study.directory / "results.parquet").to_pandas()
    assert len(results) == ROWS * len(cells) and (results["status"] == "ok").all(), results["error"].dropna()
    assert all(len(group) == ROWS for _, group in results.groupby(["dataset", "config"]))
    if "quoref" in set(results["dataset"]):   # ids come from the file, not from where the clone is
        assert set(results.loc[results["dataset"] == "quoref", "id"]) == {f"quoref-dev-{i}" for i in range(ROWS)}
    assert main(["--config", conf, "--report-only", *overrides]) == 0, capsys.readouterr().err
    for name in ("report.md", "summary.csv", "comparisons.csv"):
        assert (study.directory / name).stat().st_size > 0, name


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_shipped_job_runs_from_a_clone(path, clone, model_dir, ray_cluster, monkeypatch, capsys):
    from jobs.cli import main

    monkeypatch.chdir(clone)
    task = yaml.safe_load(path.read_text())["task"]
    args = ["--config", f"conf/{path.name}", f"input.limit={ROWS}", "output.dir=outputs/jobs",
            *tiny_overrides(model_dir, "")]
    assert main(task, args) == 0, capsys.readouterr().err
    runs = list((clone / "outputs" / "jobs").glob(f"{task}-*"))
    assert len(runs) == 1
    rows = pq.read_table(runs[0] / "parts").to_pandas()
    assert len(rows) == ROWS and (rows["status"] == "ok").all(), rows["error"].dropna()

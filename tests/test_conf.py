"""Every shipped YAML under conf/ validates, and its job accepts it."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config

CONF = Path(__file__).parents[1] / "conf"
SHIPPED = sorted(p for p in CONF.glob("*.yaml") if not p.name.startswith("study_"))  # studies: test_study_*


def test_conf_has_one_default_per_job():
    assert {p.stem for p in SHIPPED} >= {"summarize", "qa", "label"}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_config_validates(path):
    task = yaml.safe_load(path.read_text())["task"]
    config = load_config(path, task=task)
    assert config.task == task
    assert path.read_text().startswith("#"), "each YAML starts with its launch instructions"


@pytest.mark.parametrize("name", ["summarize", "qa", "label"])
def test_embedded_defaults_read_data_shipped_in_the_repo(name):
    config = load_config(CONF / f"{name}.yaml", task=name)
    assert config.model.source == "smollm2-135m-instruct"
    for path in config.input.paths:
        assert (CONF.parent / path).is_file()

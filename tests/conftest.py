"""Shared fixtures: tiny random models on disk, the embedded SmolLM2, and the ../shared data."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub; read when huggingface_hub imports

from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import pytest  # noqa: E402

from tinymodels import make_tiny_model_dir  # noqa: E402


def shared_dir() -> Path:
    """../shared next to the checkout: golden runs and evaluation data."""
    return Path(__file__).parents[1].parent / "shared"


requires_shared = pytest.mark.skipif(
    not shared_dir().exists(), reason="../shared (golden runs and evaluation data) is absent in this checkout")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (3 layers, hidden 48, intermediate 37) with its tokenizer."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """(model, tokenizer) of the tiny Llama, loaded once per test module."""
    from dart.loading import load_model
    from dart.model_config import ModelConfig

    return load_model(ModelConfig(source=str(tiny_model_dir), device="cpu", dtype="float32"))


@pytest.fixture
def engine_of(tiny):
    """make(cfg) -> an engine on the tiny model; making one closes the one before (one patch at a time)."""
    engines = []

    def make(cfg):
        if engines:
            engines.pop().close()
        from dart.engine import DartEngine

        engines.append(DartEngine(*tiny, cfg))
        return engines[-1]

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`make(**make_tiny_model_dir kwargs) -> dir`; each distinct variant is built once per session."""
    built: dict[tuple, Path] = {}

    def make(**kwargs) -> Path:
        key = tuple(sorted((name, str(value)) for name, value in kwargs.items()))
        if key not in built:
            directory = tmp_path_factory.mktemp(f"tiny-{kwargs.get('arch', 'llama')}")
            built[key] = make_tiny_model_dir(directory, **kwargs)
        return built[key]

    return make


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """Safetensors copy of the embedded SmolLM2-135M-Instruct (converted from its GGUF on first use)."""
    from dart.loading import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session, listening on loopback only, without the dashboard."""
    import ray

    from pipeline.cluster import start_local_ray

    if not ray.is_initialized():
        start_local_ray(2)
    yield ray
    ray.shutdown()

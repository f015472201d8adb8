"""A CPU actor's memory, estimated in the driver before any actor starts (pipeline/checks/actor_memory.py),
and a pool the nodes' memory cannot hold started smaller, on the session's real local Ray."""
from __future__ import annotations

import logging
import re

import pytest
import torch
from tinymodels import make_tiny_model_dir
from test_placement import run_cli

from dart.config import DartConfig
from dart.model_config import ModelConfig
from pipeline.checks.actor_memory import RUNTIME_BYTES, actor_bytes, model_size

GB = 1e9


@pytest.mark.parametrize("arch, tie, kv_heads", [("llama", False, 2), ("llama", True, 4), ("mistral", False, 1)])
def test_a_directory_is_sized_from_its_config_as_loading_counts_it(tmp_path, arch, tie, kv_heads):
    from transformers import AutoModelForCausalLM

    directory = make_tiny_model_dir(tmp_path / arch, arch=arch, tie=tie, kv_heads=kv_heads, layers=2, hidden=64,
                                    intermediate=80)
    model = AutoModelForCausalLM.from_pretrained(directory)
    size = model_size(ModelConfig(source=str(directory)))
    assert size.params == sum(p.numel() for p in model.parameters())
    assert size.ffn_params == sum(m.weight.numel() for layer in model.model.layers
                                  for m in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj))
    assert size.layer_linear_params == sum(m.weight.numel() for m in model.model.layers.modules()
                                           if isinstance(m, torch.nn.Linear))


def test_sources_the_driver_cannot_size_give_none(tmp_path):
    assert model_size(ModelConfig(source="HuggingFaceTB/SmolLM2-135M-Instruct")) is None
    assert model_size(ModelConfig(source=str(tmp_path))) is None             # no config.json
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')           # not a Llama-family config
    assert model_size(ModelConfig(source=str(tmp_path))) is None


def test_the_estimate_grows_with_what_an_actor_holds():
    model = ModelConfig(source="qwen2.5-coder-1.5b-instruct", dtype="bfloat16")
    dart = DartConfig(method="dart", prefill={"mode": "blockwise"})
    dense = DartConfig(method="dense")
    blockwise = actor_bytes(model, dart)
    # measured on the 1.5B in bf16 (docs/studies/scale/): 7.1 GB between prompts, 11.7 GB with the
    # block-wise prompt's copies at their cap
    assert 11.0 * GB < blockwise < 12.5 * GB
    assert 6.5 * GB < actor_bytes(model, dense) < 8.0 * GB
    assert actor_bytes(model, dense.model_copy(update={"linear_kernel": "torch"})) < actor_bytes(model, dense)
    float32 = actor_bytes(model.model_copy(update={"dtype": "float32"}), dart)
    assert float32 - RUNTIME_BYTES == pytest.approx(2 * (blockwise - RUNTIME_BYTES))
    assert actor_bytes(model.model_copy(update={"dtype": "auto"}), dart) == float32     # auto: float32 on a CPU
    assert actor_bytes(ModelConfig(source="smollm2-135m-instruct"), dart) < 3 * GB


def node_memory(ray_cluster) -> float:
    return ray_cluster.nodes()[0]["Resources"]["memory"]


def actors_started(text: str) -> int:
    return len(set(re.findall(r"actor (\w{8}) \(pid \d+\) on node", text)))


@pytest.mark.parametrize("share, actors, threads, says", [
    (0.6, 1, 2, "pool.num_actors=2 lowered to 1, of 2 CPU(s) each"),
    (1.5, 1, 2, "starting one actor of 2 CPU(s), which may run out of memory"),
    (0.3, 2, 1, None),
])
def test_a_pool_the_memory_cannot_hold_starts_smaller_and_finishes(ray_cluster, tiny_model_dir, tmp_path, caplog,
                                                                   share, actors, threads, says):
    """On the session's 2-CPU Ray: fewer actors get the CPUs the others would have had."""
    gb = round(share * node_memory(ray_cluster) / GB, 2)
    with caplog.at_level(logging.INFO):
        code, _ = run_cli(tmp_path, tiny_model_dir, {"num_actors": 2, "memory_per_actor_gb": gb})
    assert code == 0
    assert actors_started(caplog.text) == actors
    assert f"device cpu, {threads} thread(s)" in caplog.text
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "GB" in r.getMessage()]
    if says is None:
        assert not warned
    else:
        assert len(warned) == 1 and says in warned[0] and f"{gb:.1f} GB" in warned[0]
        assert "pool.memory_per_actor_gb" in warned[0]

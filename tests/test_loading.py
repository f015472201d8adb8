"""dart.loading: local dirs, pickle refusal, hub errors, the embedded SmolLM2, fingerprints."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import huggingface_hub.constants
import pydantic
import pytest
import torch
from safetensors.torch import load_file

from dart import loading
from dart.embedded import embedded_spec
from dart.model_config import EMBEDDED_MODEL, ModelConfig
from dart.loading import (
    embedded_model_dir,
    load_model,
    model_fingerprint,
    publish_dir,
    resolve_device,
)


def _load(directory: Path, **kwargs):
    return load_model(ModelConfig(source=str(directory), device="cpu", **kwargs))


def test_tiny_model_loads_with_tokenizer(tiny_model_dir):
    model, tokenizer = _load(tiny_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert model.config.intermediate_size == 37
    assert tokenizer.pad_token == "<pad>" and tokenizer.padding_side == "left"
    text = "héllo wörld\n"
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    batch = tokenizer(["a", "abc"], padding=True, return_tensors="pt")
    assert batch.input_ids[0, 0].item() == tokenizer.pad_token_id  # left padded
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    with torch.inference_mode():
        logits = model(**batch).logits  # [B, T, V]
    assert logits.shape == (2, 3, model.config.vocab_size) and torch.isfinite(logits).all()


def test_missing_pad_token_falls_back_to_eos(tiny_model_dir, tmp_path, caplog):
    directory = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, directory)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(directory)
    with caplog.at_level(logging.INFO, logger="dart.loading"):
        _, tokenizer = _load(directory)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert "no pad token" in caplog.text


def _pickle_dir(tiny_model_dir: Path, directory: Path) -> Path:
    shutil.copytree(tiny_model_dir, directory, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(tiny_model_dir / "model.safetensors"), directory / "pytorch_model.bin")
    return directory


def test_pickle_weights_refused_unless_allowed(tiny_model_dir, tmp_path):
    directory = _pickle_dir(tiny_model_dir, tmp_path / "pickled")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*allow_pickle"):
        _load(directory)
    pickled, _ = _load(directory, allow_pickle=True)
    reference, _ = _load(tiny_model_dir)
    assert model_fingerprint(pickled) == model_fingerprint(reference)


def test_pickle_beside_safetensors_is_ignored(tiny_model_dir, tmp_path):
    directory = tmp_path / "both"
    shutil.copytree(tiny_model_dir, directory)
    (directory / "training_args.bin").write_bytes(b"not read")
    model, _ = _load(directory)
    assert model.config.num_hidden_layers == 3


def test_trust_remote_code_passed_as_configured(tiny_model_dir, monkeypatch):
    calls: list[dict] = []
    for auto in (loading.AutoModelForCausalLM, loading.AutoTokenizer):
        original = auto.from_pretrained

        def spy(*args, _original=original, **kwargs):
            calls.append(kwargs)
            return _original(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", spy)
    _load(tiny_model_dir)
    assert [call["trust_remote_code"] for call in calls] == [False, False]
    assert calls[1]["use_safetensors"] is True
    calls.clear()
    _load(tiny_model_dir, trust_remote_code=True)
    assert [call["trust_remote_code"] for call in calls] == [True, True]


def test_gguf_path_is_loaded_with_gguf_file(tmp_path, monkeypatch):
    gguf = tmp_path / "model.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    seen: dict = {}

    def fake(location, **kwargs):
        seen.update(location=location, **kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", fake)
    with pytest.raises(RuntimeError, match="stop"):
        load_model(ModelConfig(source=str(gguf), device="cpu"))
    assert seen["location"] == str(tmp_path) and seen["gguf_file"] == gguf.name


@pytest.mark.parametrize("name", ["nope", "nested/dir/model", "weights.gguf"])
def test_missing_path_names_it(tmp_path, name):
    missing = tmp_path / name
    with pytest.raises(ValueError, match="does not exist") as info:
        load_model(ModelConfig(source=str(missing), device="cpu"))
    assert str(missing) in str(info.value)


def test_hub_id_failure_says_so(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, no retries
    with pytest.raises(OSError, match=r"could not load model 'no-such-org/no-such-model' from the "
                       r"Hugging Face hub \(offline\?\)"):
        load_model(ModelConfig(source="no-such-org/no-such-model", device="cpu"))


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_each_arch_loads(tiny_model_factory, arch):
    model, tokenizer = _load(tiny_model_factory(arch=arch))
    assert model.config.model_type == arch
    assert model.model.layers[0].mlp.down_proj.weight.shape == (48, 37)
    batch = tokenizer(["hello", "hi"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**batch).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] >= len(tokenizer)


def test_fingerprint_stable_across_loads_and_seeds(tiny_model_dir, tiny_model_factory):
    first, _ = _load(tiny_model_dir)
    again, _ = _load(tiny_model_dir)
    other, _ = _load(tiny_model_factory(seed=1))
    assert model_fingerprint(first) == model_fingerprint(again)
    assert len(model_fingerprint(first)) == 16
    assert model_fingerprint(other) != model_fingerprint(first)
    half, _ = _load(tiny_model_dir, dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    assert model_fingerprint(half) != model_fingerprint(first)  # the dtype is part of the weights


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    with pytest.raises(pydantic.ValidationError, match="auto, cpu, cuda or cuda:N"):
        ModelConfig(device="gpu")
    with pytest.raises(pydantic.ValidationError):
        ModelConfig(sourc="x")


def test_publish_dir_keeps_the_first_copy(tmp_path):
    target = tmp_path / "model"
    for n, name in enumerate(["first", "second"]):
        tmp = tmp_path / name
        tmp.mkdir()
        (tmp / "config.json").write_text(name)
        (tmp / "model.safetensors").write_text("")
        assert publish_dir(tmp, target) is (n == 0)
    assert (target / "config.json").read_text() == "first"


@pytest.mark.real_model
def test_embedded_model_converts_and_loads(smollm2_dir):
    assert smollm2_dir == embedded_model_dir()
    assert (smollm2_dir / "model.safetensors").is_file()
    assert not list(smollm2_dir.glob("*.bin"))
    model, tokenizer = load_model(ModelConfig(source=EMBEDDED_MODEL, device="cpu"))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.intermediate_size) == (
        30, 576, 1536)
    assert getattr(model.config, "quantization_config", None) is None
    assert sum(p.numel() for p in model.parameters()) == embedded_spec(EMBEDDED_MODEL).params   # sizes actors
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])

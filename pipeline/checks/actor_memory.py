"""Host memory one CPU actor needs, estimated in the driver before any actor starts, without a model
library: the weights in the run's dtype, oneDNN's packed copy of the decoder's Linears
(`dart.linear_kernel` other than torch), the gathered FFN copies DART keeps (a block-wise prompt's
per-row copies, at most ROWWISE_MAX_FFN_COPIES times the FFN weights; a decode set and its packed
copy), and the runtime. On Qwen2.5-Coder-1.5B in bf16 under block-wise DART it gives 11.8 GB against
7.1 GB measured between prompts and 11.7 GB at the copies' cap (docs/studies/scale/)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dart.config import ROWWISE_MAX_FFN_COPIES, DartConfig
from dart.cpu_info import native_bf16_flags
from dart.embedded import EMBEDDED_MODELS
from dart.model_config import ModelConfig, source_kind

RUNTIME_BYTES = 1 << 30           # Python, torch, Ray's worker, activations and KV cache of a batch


@dataclass(frozen=True)
class ModelSize:
    params: int                 # every parameter
    layer_linear_params: int    # the decoder layers' Linears (what oneDNN packs)
    ffn_params: int             # gate, up and down of every layer (what DART gathers)


def size_from_config(config: dict) -> ModelSize:
    """Parameter counts of a Llama-family model from its config.json values."""
    hidden, ffn, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads") or heads
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim
    ffn_params = layers * 3 * hidden * ffn
    embeddings = config["vocab_size"] * hidden * (1 if config.get("tie_word_embeddings", False) else 2)
    linears = layers * attention + ffn_params
    return ModelSize(embeddings + linears + (2 * layers + 1) * hidden, linears, ffn_params)


def model_size(model: ModelConfig) -> ModelSize | None:
    """The model's size where the driver can tell it (embedded models; local directories with a
    config.json); None for hub ids and GGUF files, which only loading would tell."""
    kind = source_kind(model.source)
    if kind == "embedded":
        spec = EMBEDDED_MODELS[model.source]
        shape = dict(spec.shape)
        layers, hidden = shape["num_hidden_layers"], shape["hidden_size"]
        ffn_params = layers * 3 * hidden * shape["intermediate_size"]
        return ModelSize(spec.params, ffn_params + layers * 2 * hidden * hidden, ffn_params)   # k, v left out
    config = Path(model.source).expanduser() / "config.json"
    if kind != "dir" or not config.is_file():
        return None
    try:
        return size_from_config(json.loads(config.read_text()))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def bytes_per_weight(model: ModelConfig) -> int:
    """Bytes per weight on a CPU: `auto` is float32 there, `native` bf16 where the CPU has native bf16
    (what its measurement picks on the CPUs measured so far)."""
    if model.dtype in ("bfloat16", "float16"):
        return 2
    if model.dtype == "native" and native_bf16_flags():
        return 2
    return 4


def actor_bytes(model: ModelConfig, dart: DartConfig) -> int | None:
    """Resident bytes one CPU actor of `model` may reach running `dart`; None where the size is unknown."""
    size = model_size(model)
    if size is None:
        return None
    weight = bytes_per_weight(model)
    packed = size.layer_linear_params if dart.linear_kernel != "torch" else 0
    copies = ROWWISE_MAX_FFN_COPIES * size.ffn_params if dart.prunes else 0
    return int((size.params + packed + copies) * weight) + RUNTIME_BYTES

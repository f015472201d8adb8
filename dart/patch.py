"""Model patching, kept apart from the algorithm: swap each layer's MLP for a thin wrapper that
reuses its Linears, and read the last layer's attention output and pre-FFN residual with hooks."""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


class ForwardHandler(Protocol):
    """What a patched model calls during one forward (implemented by dart.runtime.ForwardPass)."""

    def ffn(self, layer: int, mlp: "DartMLP", hidden: torch.Tensor) -> torch.Tensor: ...
    def residual(self, layer: int, residual: torch.Tensor) -> None: ...
    def attention_output(self, layer: int, output: torch.Tensor) -> None: ...


class Runtime:
    """Points the patched modules at the forward in progress; None runs the model unchanged."""

    def __init__(self) -> None:
        self.current: ForwardHandler | None = None


class DartMLP(nn.Module):
    """Gate/up/down FFN that hands its computation to the current forward's handler."""

    def __init__(self, mlp: nn.Module, layer: int, runtime: Runtime) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.act_fn = mlp.act_fn
        self.layer = layer
        self.original = [mlp]          # a list, so the original is not registered twice
        self.runtime = runtime

    def activations(self, hidden: torch.Tensor) -> torch.Tensor:
        """Neuron activations a = act(W_gate x) * (W_up x): [B, T, N]."""
        return self.act_fn(self.gate_proj(hidden)) * self.up_proj(hidden)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        current = self.runtime.current
        if current is None:
            return self.down_proj(self.activations(hidden))
        return current.ffn(self.layer, self, hidden)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no model.layers: DART supports decoder-only "
                         f"Llama-family models ({', '.join(SUPPORTED_MODEL_TYPES)})")
    return layers


def check_supported(model: nn.Module) -> None:
    """Refuse models without the gated gate/up/down FFN and pre-norm residual layout DART assumes."""
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model type {model_type!r} is not supported: DART needs a Llama-family model with a "
                         f"gated FFN (gate_proj/up_proj/down_proj); supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    for index, layer in enumerate(decoder_layers(model)):
        mlp = getattr(layer, "mlp", None)
        mlp = mlp.original[0] if isinstance(mlp, DartMLP) else mlp
        missing = [n for n in ("gate_proj", "up_proj", "down_proj", "act_fn") if not hasattr(mlp, n)]
        if missing or not hasattr(layer, "post_attention_layernorm") or not hasattr(layer, "self_attn"):
            raise ValueError(f"layer {index} of {model_type!r} lacks a gated FFN ({', '.join(missing) or 'layout'}); "
                             "DART cannot prune it")


def patch_model(model: nn.Module, runtime: Runtime, signal_layers: int = 1) -> list[torch.utils.hooks.RemovableHandle]:
    """Install the wrappers and hooks (attention output of the last `signal_layers` layers).
    Returns hook handles; `unpatch_model` undoes everything."""
    check_supported(model)
    layers = decoder_layers(model)
    if not 1 <= signal_layers <= len(layers):
        raise ValueError(f"drift.signal_layers must be in 1..{len(layers)} for this model, got {signal_layers}")
    if any(isinstance(layer.mlp, DartMLP) for layer in layers):
        raise ValueError("this model is already patched by another DartEngine: close that engine first")
    handles = []
    for index, layer in enumerate(layers):
        layer.mlp = DartMLP(layer.mlp, index, runtime)

        def residual_hook(_module, args, index=index):
            if runtime.current is not None:
                runtime.current.residual(index, args[0])

        handles.append(layer.post_attention_layernorm.register_forward_pre_hook(residual_hook))

    for index in range(len(layers) - signal_layers, len(layers)):
        def attention_hook(_module, _args, output, index=index):
            if runtime.current is not None:
                runtime.current.attention_output(index, output[0] if isinstance(output, tuple) else output)

        handles.append(layers[index].self_attn.register_forward_hook(attention_hook))
    return handles


def unpatch_model(model: nn.Module, handles: list[torch.utils.hooks.RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()
    for layer in decoder_layers(model):
        if isinstance(layer.mlp, DartMLP):
            layer.mlp = layer.mlp.original[0]

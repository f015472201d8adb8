"""Compact FFN: compute only the kept neurons, from gathered rows of W_gate/W_up and columns of W_down.

Masking multiplies pruned activations by zero and saves nothing; the gathered weights read and compute
k/N of the layer. Gathering costs one pass over the kept weights, so it is done once per mask (epoch)
and cached with the sequence's mask version.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .patch import DartMLP


@dataclass(frozen=True)
class CompactWeights:
    gate: torch.Tensor               # [k, d]
    up: torch.Tensor                 # [k, d]
    down: torch.Tensor               # [d, k]
    gate_bias: torch.Tensor | None
    up_bias: torch.Tensor | None
    down_bias: torch.Tensor | None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.gate, self.up, self.down))


def gather_layer(mlp: DartMLP, kept: torch.Tensor) -> CompactWeights:
    def rows(linear):
        bias = None if linear.bias is None else linear.bias.index_select(0, kept).contiguous()
        return linear.weight.index_select(0, kept).contiguous(), bias

    gate, gate_bias = rows(mlp.gate_proj)
    up, up_bias = rows(mlp.up_proj)
    down = mlp.down_proj.weight.index_select(1, kept).contiguous()
    return CompactWeights(gate, up, down, gate_bias, up_bias, mlp.down_proj.bias)


def compact_ffn(mlp: DartMLP, hidden: torch.Tensor, weights: CompactWeights) -> torch.Tensor:
    """y = W_down[:, K] (act(W_gate[K] x) * W_up[K] x) for hidden [B, T, d] sharing one kept set K."""
    act = mlp.act_fn(F.linear(hidden, weights.gate, weights.gate_bias)) * F.linear(hidden, weights.up, weights.up_bias)
    return F.linear(act, weights.down, weights.down_bias)


def compact_pays(groups: int, keep_fraction: float, path: str) -> bool:
    """Gathered weights of G distinct mask sets read G*k/N of the dense bytes: worth it below 1."""
    if path == "masked" or keep_fraction >= 1.0:
        return False
    if path == "compact":
        return groups == 1
    return groups * keep_fraction < 0.9

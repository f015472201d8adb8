"""Per-layer keep counts k_l (DART_SPEC section 4): uniform, per_layer, depth-aware auto."""
from __future__ import annotations

import math

import torch

from .config import AutoBudgetConfig, DartConfig
from .per_layer import parse_items

_EPS = 1e-6


def uniform_counts(keep_ratio: float, num_layers: int, width: int) -> list[int]:
    """k_l = floor(r * N) for every layer (as the reference)."""
    k = max(1, math.floor(keep_ratio * width + 1e-9))
    return [k] * num_layers


def fixed_counts(config: DartConfig, num_layers: int, width: int) -> list[int] | None:
    """Keep counts known before any token (uniform, per_layer, griffin); None for `auto`."""
    if config.method == "griffin" or config.budget == "uniform":
        return uniform_counts(config.keep_ratio, num_layers, width)
    if config.budget == "per_layer":
        return per_layer_counts(config.per_layer, num_layers, width)
    return None


def _count(value: float, width: int) -> int:
    if value > 1:
        if value != int(value):
            raise ValueError(f"per_layer count {value} must be a whole number")
        return min(int(value), width)
    return max(1, math.floor(value * width + 1e-9))


def per_layer_counts(spec: str | dict[int, float], num_layers: int, width: int) -> list[int]:
    """Keep counts from {layer: ratio|count} or the reference strings '0:0.9,1-3:0.5', 'all:0.3'.

    Layers the spec does not name stay dense.
    """
    counts = [width] * num_layers
    for key, value in parse_items(spec):
        if value == "auto":
            raise ValueError("per_layer value 'auto' means budget: auto; set budget instead")
        if key == "all":
            layers = range(num_layers)
        elif "-" in key:
            lo, hi = (int(x) for x in key.split("-"))
            if lo > hi:
                raise ValueError(f"per_layer range {key} is empty")
            layers = range(lo, hi + 1)
        else:
            layers = [int(key)]
        for layer in layers:
            if not 0 <= layer < num_layers:
                raise ValueError(f"per_layer names layer {layer}, but the model has layers 0..{num_layers - 1}")
            counts[layer] = _count(value, width)
    return counts


def depth_weights(num_layers: int, cfg: AutoBudgetConfig) -> torch.Tensor:
    """D_l of step 4: ramps up over the first w_e of depth and down over the last w_l."""
    out = torch.ones(num_layers, dtype=torch.float64, device="cpu")     # host-side: a handful of numbers
    for layer in range(num_layers):
        z = layer / (num_layers - 1) if num_layers > 1 else 0.0
        if z < cfg.early_width:
            out[layer] = cfg.alpha + (1 - cfg.alpha) * z / cfg.early_width
        elif z > 1 - cfg.late_width:
            out[layer] = cfg.beta + (1 - cfg.beta) * (1 - z) / cfg.late_width
    return out


def token_dots(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x.x, y.y and x.y per token of x, y [T, d], in float32. Half-precision inputs are copied side by side
    into one float32 [T, 2, d] and their 2x2 Gram matrices come from one batched matmul: for 450 tokens of
    SmolLM2 in bfloat16 on an AMX Xeon, 0.28 ms a layer against 0.7-1.3 ms for three reductions over d
    (bench/README.md section 24). Float32 inputs keep the three dot products, so float32 runs sum as they
    always have."""
    if x.dtype == torch.float32 and y.dtype == torch.float32:
        return torch.linalg.vecdot(x, x), torch.linalg.vecdot(y, y), torch.linalg.vecdot(x, y)
    pair = torch.empty(x.shape[0], 2, x.shape[1], dtype=torch.float32, device=x.device)
    pair[:, 0].copy_(x)
    pair[:, 1].copy_(y)
    gram = torch.bmm(pair, pair.transpose(1, 2))                     # [T, 2, 2]
    return gram[:, 0, 0], gram[:, 1, 1], gram[:, 0, 1]


def residual_sums(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over tokens of cos(x, y) and ||y - x|| / ||x|| (x: residual entering the FFN's norm, y: FFN
    output, [T, d]), in float32 from three dot products per token, as float64 scalars."""
    xx, yy, xy = token_dots(x, y)
    cos = xy / (xx * yy).sqrt().clamp_min(1e-8)
    ratio = (xx - 2 * xy + yy).clamp_min(0).sqrt() / xx.sqrt().clamp_min(1e-12)
    return cos.sum().double(), ratio.sum().double()


def auto_sparsities(cos: torch.Tensor, ratio: torch.Tensor, target: float, cfg: AutoBudgetConfig) -> torch.Tensor:
    """Per-layer sparsity p_l (steps 1-8) from per-layer mean cos(x, y) and ||y - x|| / ||x||."""
    cos, ratio = cos.double(), ratio.double()
    num_layers = cos.numel()
    s = (1 - cos) * ratio
    s_hat = (s - s.min()) / (s.max() - s.min() + _EPS)
    p_weight = (1 - s_hat) * depth_weights(num_layers, cfg)
    total = target * num_layers
    p = (total * p_weight / p_weight.sum()).clamp(cfg.min_sparsity, cfg.max_sparsity)
    for _ in range(cfg.rounds):
        delta = total - p.sum().item()
        if abs(delta) < _EPS:
            break
        movable = p < cfg.max_sparsity - _EPS if delta > 0 else p > cfg.min_sparsity + _EPS
        if not movable.any():
            break
        weight = torch.where(movable, p_weight, torch.zeros_like(p_weight))
        if weight.sum() <= _EPS:
            weight = movable.double()
        p = (p + delta * weight / weight.sum()).clamp(cfg.min_sparsity, cfg.max_sparsity)
    return p


def auto_counts(cos: torch.Tensor, ratio: torch.Tensor, target: float, width: int,
                cfg: AutoBudgetConfig) -> list[int]:
    """k_l = round((1 - p_l) * N)."""
    p = auto_sparsities(cos, ratio, target, cfg)
    return [max(1, int(round((1 - float(x)) * width))) for x in p]

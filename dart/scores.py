"""Neuron statistics, rankings and selection (DART_SPEC sections 2-3). Pure functions over tensors."""
from __future__ import annotations

import torch

from .config import Ranking, Selection


def _add(stat: torch.Tensor, per_neuron: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
    return stat + per_neuron if ids is None else stat.index_add(0, ids, per_neuron)


def float_squares(act: torch.Tensor) -> torch.Tensor:
    """act squared in float32, in one new tensor whatever act's dtype (a bf16 act is not copied twice)."""
    squares = act.to(torch.float32, copy=True)
    return squares.mul_(squares)


# Half-precision activations are squared in float32 this many tokens at a time: the float32 copy stays
# in cache instead of a fresh [T, N] buffer per layer (bench/README.md section 25).
SQUARE_CHUNK_TOKENS = 64


def l2_update(sum_sq: torch.Tensor, act: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Add tokens' squared activations, in float32. sum_sq: [N]; act: [T, N] (any float dtype), or [T, k]
    of the neurons `ids` alone (the others computed nothing: 0). Float32 activations are summed whole, so
    float32 runs sum as they always have."""
    if act.dtype == torch.float32 or act.shape[0] <= SQUARE_CHUNK_TOKENS:
        per_neuron = float_squares(act).sum(dim=0)
    else:
        per_neuron = torch.zeros(act.shape[1], dtype=torch.float32, device=act.device)
        for part in act.split(SQUARE_CHUNK_TOKENS):
            per_neuron += float_squares(part).sum(dim=0)
    return _add(sum_sq, per_neuron, ids)


def griffin_update(sum_sq: torch.Tensor, act: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """GRIFFIN: each token's activation scaled to unit L2 norm before the L2 over tokens (act and ids as
    in l2_update: neurons left out are 0 and add nothing to the norm)."""
    unit = act / act.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return _add(sum_sq, unit.square().sum(dim=0), ids)


def scattered(act: torch.Tensor, ids: torch.Tensor, width: int) -> torch.Tensor:
    """Activations of the neurons `ids` [T, k] placed among all `width` neurons [T, N] float32, 0 elsewhere."""
    full = torch.zeros(act.shape[0], width, dtype=torch.float32, device=act.device)
    full[:, ids] = act.float()
    return full


def ema_first_block(act: torch.Tensor, decay: float) -> torch.Tensor:
    """First block of k tokens: weights d^(k-1-j) / sum over |a_j|. act: [T, N] -> [N]."""
    k = act.shape[0]
    exponents = torch.arange(k - 1, -1, -1, dtype=torch.float64, device=act.device)
    weights = torch.pow(torch.tensor(decay, dtype=torch.float64, device=act.device), exponents)
    weights = (weights / weights.sum()).to(act.dtype)
    return (weights[:, None] * act.abs()).sum(dim=0)


def ema_update(mean_abs: torch.Tensor, act: torch.Tensor, decay: float) -> torch.Tensor:
    """Each later token: m = d*m + (1-d)*|a_t|, in token order."""
    for token in act.abs():
        mean_abs = decay * mean_abs + (1 - decay) * token
    return mean_abs


def carried_statistic(stat: torch.Tensor, tokens: int | list[int], old_mean: torch.Tensor, weight: float,
                      decay: float | None) -> torch.Tensor:
    """Mix a new epoch's statistic with the previous epoch's per-token one, the old epoch counting as
    `weight` times the new epoch's tokens. L2: sums of squares (old_mean = mean square per token);
    EMA: means of |a|. [N] -> [N], or [L, N] with `tokens` per layer."""
    if decay is None:
        if isinstance(tokens, int):
            return stat + weight * max(tokens, 1) * old_mean
        factors = torch.tensor([weight * max(t, 1) for t in tokens], dtype=stat.dtype, device=stat.device)
        return stat + factors[:, None] * old_mean
    return (stat + weight * old_mean) / (1 + weight)


def magnitude(stat: torch.Tensor, decay: float | None) -> torch.Tensor:
    """m[i]: L2 norm over tokens from a sum of squares, or the EMA of |a| itself."""
    return stat.sqrt() if decay is None else stat


def rank_scores(m: torch.Tensor, ranking: Ranking, pmax: torch.Tensor, pmean: torch.Tensor) -> torch.Tensor:
    """Proxy-weighted scores of spec section 2 for one layer (max, mean, combined, product). All inputs [N].
    `magnitude` ranks by m itself and needs no proxies: callers use m directly."""
    if ranking == "max":
        return pmax * m
    if ranking == "mean":
        return pmean * m
    if ranking == "combined":
        return (pmax + pmean) * m
    if ranking == "product":
        return pmax * pmean * m.square()
    raise ValueError(f"ranking {ranking!r} is not proxy-weighted; choose max, mean, combined or product")


def select(scores: torch.Tensor, keep: int, selection: Selection) -> torch.Tensor:
    """Sorted indices of kept neurons. Ties go to the lower index (stable sort)."""
    if selection == "mean_threshold":
        kept = torch.nonzero(scores >= scores.mean()).flatten()
        return kept
    if selection != "topk":
        raise ValueError(f"unknown selection {selection!r}; choose topk or mean_threshold")
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:keep].sort().values


def select_layers(scores: torch.Tensor, keeps: list[int], selection: Selection) -> list[torch.Tensor]:
    """`select(scores[l], keeps[l], selection)` of every layer of scores [L, N]. On a CPU topk finds each
    layer's k-th largest score (a selection, 3x faster than the sort) and keeps what is above it, then the
    lowest-index ties: the same ids. Elsewhere each layer sorts: the ids' count would need a host sync."""
    layers, width = scores.shape
    if selection != "topk" or scores.device.type != "cpu":
        return [select(layer, keep, selection) for layer, keep in zip(scores, keeps)]
    if len(set(keeps)) == 1:
        kth = torch.kthvalue(scores, width - keeps[0] + 1, dim=-1, keepdim=True).values         # [L, 1]
    else:
        kth = torch.stack([torch.kthvalue(row, width - keep + 1).values for row, keep in zip(scores, keeps)])[:, None]
    keep = torch.tensor(keeps, device=scores.device)[:, None]
    above, tied = (scores > kth) | scores.isnan(), scores == kth          # a sort ranks NaN above all
    chosen = above | (tied & (tied.cumsum(dim=-1) <= keep - above.sum(dim=-1, keepdim=True)))
    ids = torch.arange(width, device=scores.device).expand(layers, width).masked_select(chosen)
    if ids.numel() != sum(keeps):           # NaN the k-th largest: each layer on its own
        return [select(layer, k, selection) for layer, k in zip(scores, keeps)]
    return list(ids.split(keeps))


def shared_selection(row_scores: torch.Tensor, keep: int) -> torch.Tensor:
    """One kept set for several rows: the top `keep` of their scores [G, N] summed after scaling each row
    to sum 1 (rows weigh alike whatever their activations' scale). Sorted ids [keep]; ties to the lower id."""
    scaled = row_scores / row_scores.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(row_scores.dtype).tiny)
    return select(scaled.sum(dim=0), keep, "topk")

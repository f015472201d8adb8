"""Forward proxies pmax/pmean (DART_SPEC section 1): static, data-free, cached per model."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .model_config import cache_root

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Proxies:
    pmax: torch.Tensor    # [L, N] float32
    pmean: torch.Tensor   # [L, N] float32


@torch.no_grad()   # the weights are Parameters: with autograd on, every chunk's product would be kept
def layer_proxies(down_weight: torch.Tensor, embed: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """max_v / mean_v |C[i, v]| of C = W_down^T E^T, chunked over V so N x V is never held.

    down_weight: [d, N] (nn.Linear(N, d).weight); embed: [V, d].
    """
    w = down_weight.float().T                                  # [N, d]
    vocab = embed.shape[0]
    pmax = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device)
    psum = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    for start in range(0, vocab, chunk):
        block = (w @ embed[start:start + chunk].float().T).abs_()   # [N, Vc]
        pmax = torch.maximum(pmax, block.amax(dim=1))
        psum += block.sum(dim=1, dtype=torch.float64)
    return pmax, (psum / vocab).float()


def compute_proxies(down_weights: list[torch.Tensor], embed: torch.Tensor) -> Proxies:
    pairs = [layer_proxies(w, embed) for w in down_weights]
    return Proxies(torch.stack([p for p, _ in pairs]).cpu(), torch.stack([m for _, m in pairs]).cpu())


def default_cache_dir() -> Path:
    return cache_root() / "proxies"


def load_or_compute(down_weights: list[torch.Tensor], embed: torch.Tensor, fingerprint: str | None,
                    cache_dir: Path | None = None) -> Proxies:
    """Proxies from the disk cache keyed by the model's fingerprint, else computed and stored atomically."""
    if fingerprint is None:
        return compute_proxies(down_weights, embed)
    path = (cache_dir or default_cache_dir()) / f"{fingerprint}.safetensors"
    if path.exists():
        try:
            tensors = load_file(str(path))
            if tensors["pmax"].shape == (len(down_weights), down_weights[0].shape[1]):
                return Proxies(tensors["pmax"], tensors["pmean"])
        except Exception as exc:  # a corrupt cache entry is recomputed, never trusted
            log.warning("ignoring unreadable proxy cache %s: %s", path, exc)
    log.info("computing forward proxies for %d layers (cached at %s)", len(down_weights), path)
    proxies = compute_proxies(down_weights, embed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({"pmax": proxies.pmax.contiguous(), "pmean": proxies.pmean.contiguous()}, str(tmp))
    os.replace(tmp, path)
    return proxies

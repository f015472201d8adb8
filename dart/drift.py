"""Drift detection on the last layer's attention output (DART_SPEC section 6)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .config import DriftConfig


@dataclass(frozen=True)
class Baseline:
    mu_vec: torch.Tensor            # [d], mean signal of the epoch so far
    cosines: list[float]            # c_w of each baseline window
    tau: float | None               # None: a single window has no spread, the epoch is not monitored


def form_baseline(mu_vec: torch.Tensor, window_means: torch.Tensor, cfg: DriftConfig) -> Baseline:
    """Window cosines against mu_vec and tau = mu - max(kappa*sigma, delta). window_means: [n, d]."""
    cos = F.cosine_similarity(window_means.float(), mu_vec.float()[None, :], dim=-1)
    if cos.numel() < 2:
        return Baseline(mu_vec, cos.tolist(), None)
    tau = cos.mean().item() - max(cfg.kappa * cos.std(unbiased=True).item(), cfg.delta)
    return Baseline(mu_vec, cos.tolist(), tau)


@dataclass
class DriftMonitor:
    """Window accumulation and pressure of one sequence's epoch, after its baseline formed."""

    baseline: Baseline
    cfg: DriftConfig
    window_sum: torch.Tensor = field(init=False)
    window_count: int = 0
    pressure: int = 0

    def __post_init__(self) -> None:
        self.window_sum = torch.zeros_like(self.baseline.mu_vec)

    def observe(self, token_signal: torch.Tensor) -> tuple[float | None, bool]:
        """Add one token's signal [d]. Returns (window cosine if a window completed, drift fired)."""
        self.window_sum += token_signal.float()
        self.window_count += 1
        if self.window_count < self.cfg.window:
            return None, False
        mean = self.window_sum / self.window_count
        cos = F.cosine_similarity(mean, self.baseline.mu_vec, dim=0).item()
        self.window_sum.zero_()
        self.window_count = 0
        if self.baseline.tau is None:
            return cos, False
        self.pressure = self.pressure + 1 if cos < self.baseline.tau else max(0, self.pressure - 1)
        return cos, self.pressure >= self.cfg.pressure

    def state_bytes(self) -> int:
        return (self.baseline.mu_vec.numel() + self.window_sum.numel()) * 4

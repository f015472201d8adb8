"""Running sums of the drift signal over an epoch's calibration tokens, in O(T/W * d) memory."""
from __future__ import annotations

import torch


class SignalAccumulator:
    """Keeps the epoch's signal sum and the means of its complete W-token windows."""

    def __init__(self, hidden: int, window: int, device: torch.device) -> None:
        self.window = window
        self.total = torch.zeros(hidden, dtype=torch.float32, device=device)
        self.count = 0
        self.partial = torch.zeros(hidden, dtype=torch.float32, device=device)
        self.partial_count = 0
        self.window_means: list[torch.Tensor] = []

    def add(self, signal: torch.Tensor) -> None:
        """signal: [T, d] tokens in order."""
        signal = signal.float()
        self.total += signal.sum(dim=0)
        self.count += signal.shape[0]
        start = 0
        while start < signal.shape[0]:
            take = min(self.window - self.partial_count, signal.shape[0] - start)
            self.partial += signal[start:start + take].sum(dim=0)
            self.partial_count += take
            start += take
            if self.partial_count == self.window:
                self.window_means.append(self.partial / self.window)
                self.partial = torch.zeros_like(self.partial)
                self.partial_count = 0

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu_vec [d], window means [n, d]); one window of all tokens if fewer than W."""
        mu = self.total / max(1, self.count)
        if not self.window_means:
            return mu, mu[None, :]
        return mu, torch.stack(self.window_means)

    def state_bytes(self) -> int:
        return (3 + len(self.window_means)) * self.total.numel() * 4

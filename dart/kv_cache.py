"""A KV cache whose full-attention layers append in place into spare capacity.

transformers' `DynamicLayer` concatenates every new token onto the whole cache, so each decode step
copies (and allocates) all cached keys and values of every layer: O(S) per token, and on a CPU at
batch 4 with 700-token prompts the largest cost of a step after the matmuls. `GrowingLayer` keeps a
buffer with room to spare and writes the new positions into it; it reallocates, with headroom, only
when the room runs out. Its `keys`/`values` are views of the filled positions, and assigning them
(as `DecodeBatch.join`/`trim`, `batch_select_indices` and `reset` do) installs the given tensor as a
buffer that is full, so every transformers operation on a `DynamicLayer` still works.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def capacity(needed: int, appended: int) -> int:
    """Positions to allocate for `needed` when `appended` of them are new. A decode step's token gets a
    quarter more room (at least 64), so appends cost O(1) amortized; a prompt or block gets exactly
    its positions, so attention reads a contiguous tensor (no slower than DynamicLayer's)."""
    return needed + max(64, needed // 4) if appended == 1 else needed


class GrowingBuffer:
    """Positions [B, H, S, D] filled from the start of a buffer [B, H, capacity, D]."""

    def __init__(self, tensor: torch.Tensor | None = None) -> None:
        self.assign(tensor)

    def assign(self, tensor: torch.Tensor | None) -> None:
        """Hold `tensor` (None or an empty placeholder: nothing) as a full buffer."""
        self.buffer = tensor if tensor is not None and tensor.dim() == 4 else None
        self.length = 0 if self.buffer is None else tensor.shape[-2]
        self.placeholder = tensor if self.buffer is None else None

    def view(self) -> torch.Tensor | None:
        return self.placeholder if self.buffer is None else self.buffer[..., :self.length, :]

    def spare(self) -> int:
        return 0 if self.buffer is None else self.buffer.shape[-2] - self.length

    def append(self, states: torch.Tensor) -> torch.Tensor:
        """Write `states` [B, H, T, D] after the filled positions; returns the view of all of them."""
        new = states.shape[-2]
        if self.buffer is None or self.buffer.shape[:2] != states.shape[:2] or new > self.spare():
            fresh = states.new_empty((*states.shape[:2], capacity(self.length + new, new), states.shape[-1]))
            if self.length:
                fresh[..., :self.length, :].copy_(self.buffer[..., :self.length, :])
            self.buffer = fresh
        self.buffer[..., self.length:self.length + new, :].copy_(states)
        self.length += new
        return self.view()


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer that appends into preallocated room."""

    @property
    def keys(self) -> torch.Tensor | None:
        return self._keys.view()

    @keys.setter
    def keys(self, tensor: torch.Tensor | None) -> None:
        self._keys = GrowingBuffer(tensor)

    @property
    def values(self) -> torch.Tensor | None:
        return self._values.view()

    @values.setter
    def values(self, tensor: torch.Tensor | None) -> None:
        self._values = GrowingBuffer(tensor)

    def __copy__(self) -> "GrowingLayer":
        """A copy sharing the filled positions but not the spare room, so the two never write into one buffer."""
        twin = GrowingLayer.__new__(GrowingLayer)
        twin.__dict__.update(self.__dict__)
        twin.keys, twin.values = self.keys, self.values      # full buffers: the next append reallocates
        return twin

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        return self._keys.append(key_states), self._values.append(value_states)

    def spare(self) -> int:
        """Positions that can be appended before the next reallocation."""
        return self._keys.spare()


def growing_cache(model_config) -> DynamicCache:
    """A `DynamicCache` for `model_config` whose plain full-attention layers are `GrowingLayer`s (sliding
    window and other layer kinds are left as transformers builds them)."""
    cache = DynamicCache(config=model_config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache

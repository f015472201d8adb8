"""Rows in flight through one engine between forwards: what a decode loop or a scheduler holds."""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .kv_cache import GrowingLayer
from .state import SequenceState


class DecodeBatch:
    """Each row's DART state, the rows' shared KV cache, and per row the attention mask over every
    cached position and the position id of its next token.

    Masks and positions are explicit per row, so rows need not share a length: a prompt may enter
    in several chunks, and rows of different lengths may sit side by side (left padding, mask 0).
    Rows may share one state (continuations of one prompt, see `select`).
    """

    def __init__(self, states: Sequence[SequenceState], cache: DynamicCache, attention_mask: torch.Tensor,
                 positions: torch.Tensor) -> None:
        self.states = list(states)
        self.cache = cache
        self.attention_mask = attention_mask     # [B, S] long: 1 at a row's cached tokens, 0 at padding
        self.positions = positions               # [B] long: position id of each row's next token

    @classmethod
    def empty(cls, states: Sequence[SequenceState], cache: DynamicCache, device: torch.device) -> "DecodeBatch":
        """Rows that have seen no token yet."""
        rows = len(states)
        return cls(states, cache, torch.zeros(rows, 0, dtype=torch.long, device=device),
                   torch.zeros(rows, dtype=torch.long, device=device))

    def __len__(self) -> int:
        return len(self.states)

    def select(self, indices: Sequence[int]) -> None:
        """Keep the rows at `indices`, in that order: drop finished rows, or fork a row by repeating its
        index (the forks share its state and copy its cache). The other rows are left as they were."""
        index = torch.tensor(list(indices), dtype=torch.long, device=self.attention_mask.device)
        self.cache.batch_select_indices(index)
        self.attention_mask, self.positions = self.attention_mask[index], self.positions[index]
        self.states = [self.states[i] for i in indices]

    def fork(self, indices: Sequence[int], states: Sequence[SequenceState]) -> "DecodeBatch":
        """A new batch of copies of the rows at `indices`, with `states` as their states; this batch and
        its cache are left as they were."""
        index = torch.tensor(list(indices), dtype=torch.long, device=self.attention_mask.device)
        cache = copy.copy(self.cache)
        cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        cache.batch_select_indices(index)       # each copied layer takes new, indexed tensors
        return DecodeBatch(states, cache, self.attention_mask[index], self.positions[index])

    def append(self, token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask [B, S + T] and position ids [B, T] of T new tokens per row (token_mask [B, T]
        bool, False at padding), numbered on from each row's next position."""
        attention_mask = torch.cat([self.attention_mask, token_mask.long()], dim=1)
        position_ids = self.positions[:, None] + (token_mask.long().cumsum(-1) - 1).clamp_min(0)
        return attention_mask, position_ids

    def advance(self, attention_mask: torch.Tensor, token_mask: torch.Tensor) -> None:
        """Record that the tokens of `append` are in the cache."""
        self.attention_mask = attention_mask
        self.positions = self.positions + token_mask.long().sum(-1)

    @property
    def joinable(self) -> bool:
        """Whether rows can be added to this batch: every cache layer a plain growing one (a sliding
        window layer drops old positions by count, which padding would shift)."""
        return all(type(layer) in (DynamicLayer, GrowingLayer) for layer in self.cache.layers)

    def join(self, other: "DecodeBatch") -> None:
        """Append the rows of `other` (e.g. just prefilled) after these rows: both caches and masks are
        left-padded to the wider of the two, so every row keeps its cached positions, mask and position
        ids. `other` is consumed."""
        if not (self.joinable and other.joinable):
            raise ValueError("rows can join only a batch whose cache layers are all full-attention (DynamicLayer or GrowingLayer)")
        width = max(self.attention_mask.shape[1], other.attention_mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([left_pad(mine.keys, width, -2), left_pad(theirs.keys, width, -2)])
            mine.values = torch.cat([left_pad(mine.values, width, -2), left_pad(theirs.values, width, -2)])
        self.attention_mask = torch.cat([left_pad(self.attention_mask, width, 1), left_pad(other.attention_mask, width, 1)])
        self.positions = torch.cat([self.positions, other.positions])
        self.states += other.states

    def trim(self) -> None:
        """Drop the leading cache positions that no row attends to (padding left by rows that left)."""
        attended = self.attention_mask.any(0).nonzero()
        first = int(attended[0]) if len(attended) else self.attention_mask.shape[1]
        if first == 0 or not self.joinable:
            return
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
        self.attention_mask = self.attention_mask[:, first:]


def left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`tensor` zero-padded on the left of `dim` to `width`."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)

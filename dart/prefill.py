"""The prompt's forwards (docs/prefill.md): one dense forward, or blocks of real tokens per row.

A row's block i holds its prompt tokens [start_i, start_i+1) (the first `prefill.first_block_tokens`,
then `prefill.block_tokens` each), right-aligned in the block's tensor like a left-padded prompt, so its positions and attention mask follow on from the
cache; a row whose prompt has ended has no token in the block (it takes no part in that forward).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def block_inputs(prompts: Sequence[Sequence[int]], start: int, end: int, pad_id: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Tokens [start, end) of every prompt, left-padded to one width: input_ids [B, T], token_mask [B, T]
    (bool, False at padding), both built on the host and moved once, and each row's real tokens."""
    pieces = [list(prompt[start:end]) for prompt in prompts]
    width = max(len(piece) for piece in pieces)
    ids = [[pad_id] * (width - len(piece)) + piece for piece in pieces]
    real = [[False] * (width - len(piece)) + [True] * len(piece) for piece in pieces]
    return (torch.tensor(ids, dtype=torch.long, device=device), torch.tensor(real, dtype=torch.bool, device=device),
            [len(piece) for piece in pieces])


def run_blocks(step: Callable[[torch.Tensor, torch.Tensor, list[int], bool], torch.Tensor | None],
               prompts: Sequence[Sequence[int]], starts: list[int], pad_id: int, device: torch.device) -> torch.Tensor:
    """Feed the prompts block by block (`starts`: where each block starts, the first at 0) to
    `step(input_ids, token_mask, counts, logits) -> last-position logits [B, V]`, or None when `logits` is False:
    a block in which no prompt ends feeds no logits. Returns each row's logits after its last prompt
    token [B, V] (from the block its prompt ends in)."""
    logits = None
    ends = starts[1:] + [max(len(prompt) for prompt in prompts)]
    for start, end in zip(starts, ends):
        input_ids, token_mask, counts = block_inputs(prompts, start, end, pad_id, device)
        out = step(input_ids, token_mask, counts, any(start < len(prompt) <= end for prompt in prompts))
        if out is not None:
            logits = out if logits is None else torch.where(token_mask[:, -1:], out, logits)
    return logits

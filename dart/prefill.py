"""The prompt's forwards (docs/prefill.md): one dense forward, or blocks of real tokens per row.

A row's block i holds its prompt tokens [start_i, start_i+1) (the first `prefill.first_block_tokens`,
then `prefill.block_tokens` each), right-aligned in the block's tensor like a left-padded prompt, so its positions and attention mask follow on from the
cache; a row whose prompt has ended has no token in the block (it takes no part in that forward).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def block_inputs(prompts: Sequence[Sequence[int]], start: int, end: int, pad_id: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [start, end) of every prompt, left-padded to one width:
    input_ids [B, T] and token_mask [B, T] (bool, False at padding)."""
    pieces = [list(prompt[start:end]) for prompt in prompts]
    width = max(len(piece) for piece in pieces)
    input_ids = torch.full((len(pieces), width), pad_id, dtype=torch.long, device=device)
    token_mask = torch.zeros((len(pieces), width), dtype=torch.bool, device=device)
    for b, piece in enumerate(pieces):
        if piece:
            input_ids[b, width - len(piece):] = torch.tensor(piece, dtype=torch.long)
            token_mask[b, width - len(piece):] = True
    return input_ids, token_mask


def run_blocks(step: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor | None],
               prompts: Sequence[Sequence[int]], starts: list[int], pad_id: int, device: torch.device) -> torch.Tensor:
    """Feed the prompts block by block (`starts`: where each block starts, the first at 0) to
    `step(input_ids, token_mask, logits) -> last-position logits [B, V]`, or None when `logits` is False:
    a block in which no prompt ends feeds no logits. Returns each row's logits after its last prompt
    token [B, V] (from the block its prompt ends in)."""
    logits = None
    ends = starts[1:] + [max(len(prompt) for prompt in prompts)]
    for start, end in zip(starts, ends):
        input_ids, token_mask = block_inputs(prompts, start, end, pad_id, device)
        out = step(input_ids, token_mask, any(start < len(prompt) <= end for prompt in prompts))
        if out is not None:
            logits = out if logits is None else torch.where(token_mask[:, -1:], out, logits)
    return logits

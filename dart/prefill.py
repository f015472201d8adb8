"""The prompt's forwards (docs/prefill.md): one dense forward, or blocks of real tokens per row.

Each row's prompt is cut by its own plan (`PrefillConfig.starts` of its length), so a row's blocks are
the same alone and in any batch. Block i of a batch holds every row's i-th block, right-aligned in the
block's tensor like a left-padded prompt, so its positions and attention mask follow on from the
cache; a row whose prompt has ended has no token in the block (it takes no part in that forward).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def block_inputs(pieces: Sequence[Sequence[int]], pad_id: int, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Each row's tokens of a block, left-padded to one width: input_ids [B, T], token_mask [B, T] (bool,
    False at padding), both built on the host and moved once, and each row's real tokens."""
    width = max(len(piece) for piece in pieces)
    ids = [[pad_id] * (width - len(piece)) + list(piece) for piece in pieces]
    real = [[False] * (width - len(piece)) + [True] * len(piece) for piece in pieces]
    return (torch.tensor(ids, dtype=torch.long, device=device), torch.tensor(real, dtype=torch.bool, device=device),
            [len(piece) for piece in pieces])


def row_spans(prompt: Sequence[int], starts: list[int]) -> list[tuple[int, int]]:
    """A row's blocks as [start, end) token spans, from where each starts."""
    return list(zip(starts, starts[1:] + [len(prompt)]))


def run_blocks(step: Callable[[torch.Tensor, torch.Tensor, list[int], bool], torch.Tensor | None],
               prompts: Sequence[Sequence[int]], plans: Sequence[list[int]], pad_id: int,
               device: torch.device) -> torch.Tensor:
    """Feed the prompts block by block (`plans`: per row, where each of its blocks starts, the first at 0)
    to `step(input_ids, token_mask, counts, logits) -> last-position logits [B, V]`, or None when `logits`
    is False: a block in which no prompt ends feeds no logits. Returns each row's logits after its last
    prompt token [B, V] (from the block its prompt ends in)."""
    spans = [row_spans(prompt, starts) for prompt, starts in zip(prompts, plans)]
    logits = None
    for block in range(max(len(row) for row in spans)):
        pieces = [prompt[row[block][0]:row[block][1]] if block < len(row) else ()
                  for prompt, row in zip(prompts, spans)]
        input_ids, token_mask, counts = block_inputs(pieces, pad_id, device)
        out = step(input_ids, token_mask, counts, any(block == len(row) - 1 for row in spans))
        if out is not None:
            logits = out if logits is None else torch.where(token_mask[:, -1:], out, logits)
    return logits

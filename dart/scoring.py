"""Teacher-forced scoring on the engine's steps: log-probs of known continuations after a prompt, under
the masks DART forms from that prompt (no drift inside a continuation). `engine` is a
`dart.engine.DartEngine` (which calls these, so it is not imported here)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .batch import DecodeBatch


def forced_logprobs(engine, batch: DecodeBatch, first: torch.Tensor,
                    continuations: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Each continuation's log-probs [len(c), V] after the one row of `batch`: its first position from
    the prompt (`first`, [1, V]), the rest from one teacher-forced forward over all continuations, one
    row each sharing the state. `batch` becomes those rows."""
    longest = max(len(c) for c in continuations)
    if longest == 1:                     # every score comes from the prompt's forward
        return [first] * len(continuations)
    batch.select([0] * len(continuations))
    cont = torch.tensor([list(c) + [engine.pad_id] * (longest - len(c)) for c in continuations], dtype=torch.long,
                        device=engine.device)
    cont_mask = torch.tensor([[True] * len(c) + [False] * (longest - len(c)) for c in continuations],
                             dtype=torch.bool, device=engine.device)
    logprobs = torch.log_softmax(engine.teacher_force(batch, cont, cont_mask), dim=-1)   # [C, T, V]
    return [torch.cat([first, logprobs[i, :len(c) - 1]]) for i, c in enumerate(continuations)]


def totals(per_position: Sequence[torch.Tensor], continuations: Sequence[Sequence[int]]) -> list[float]:
    """Sum of each continuation's token log-probs, from its per-position log-probs [len(c), V]."""
    return [float(lp.gather(1, torch.tensor(list(c), device=lp.device)[:, None]).sum())
            for lp, c in zip(per_position, continuations)]


@torch.inference_mode()
def score_prefilled(engine, batch: DecodeBatch, row: int, logits: torch.Tensor,
                    continuation: Sequence[int]) -> float:
    """Sum of the log-probs of `continuation` after row `row` of a batch that has just been prefilled
    (`logits`: the prefill's next-token logits [B, V]), as `score_continuations` gives for that prompt,
    without a second prefill. It runs on a fork of the row, so the row, its cache and its state (its
    telemetry included) are left as they were."""
    if not continuation:
        raise ValueError("the continuation needs at least one token")
    if int(batch.positions[row]) + len(continuation) > engine.max_context:
        raise ValueError(f"prompt plus continuation ({int(batch.positions[row]) + len(continuation)} tokens) "
                         f"exceeds the context of {engine.max_context}")
    fork = engine.fork(batch, [row])
    first = torch.log_softmax(logits[row:row + 1].float(), -1)
    return totals(forced_logprobs(engine, fork, first, [continuation]), [continuation])[0]

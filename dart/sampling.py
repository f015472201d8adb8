"""Next-token choice: greedy, or temperature / top-p sampling from each row's own generator."""
from __future__ import annotations

import torch

from .config import GenerationConfig


def eos_token_ids(model, tokenizer) -> set[int]:
    """End-of-sequence ids named by the model's generation config, its config or the tokenizer."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        ids.update(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
    return ids


def row_generator(seed: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail outside the smallest set of tokens with mass >= top_p. probs: [V]."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(descending=True)
    outside = sorted_probs.cumsum(0) - sorted_probs >= top_p
    sorted_probs[outside] = 0.0
    return torch.zeros_like(probs).scatter_(0, order, sorted_probs)


def next_tokens(logits: torch.Tensor, gen: GenerationConfig, generators: list[torch.Generator]) -> torch.Tensor:
    """logits: [B, V] float32 -> [B] token ids. Each row draws from its own generator, so a row's
    tokens do not depend on the rows beside it."""
    if gen.temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / gen.temperature, dim=-1)
    picks = [torch.multinomial(top_p_filter(p, gen.top_p), 1, generator=g) for p, g in zip(probs, generators)]
    return torch.cat(picks)

"""Equivalences at the native dtype of bfloat16 weights. Keep 1.0 equals dense exactly, as in float32;
a padded batch or a block boundary changes the matmul shapes, hence the rounding (about 2^-8 relative
per product), so batch == alone and blocks == whole prompt hold to LOGPROB_ATOL on the log-probs
(exactly in float32: test_dart_engine, test_dart_prefill). Golden conformance runs in float32."""
from __future__ import annotations

import pytest
import torch

from dart.config import DartConfig, PrefillConfig
from dart.engine import DartEngine
from dart.loading import load_model
from dart.model_config import ModelConfig

# On log-probabilities of the tiny model in bfloat16: measured 0.023 (batch against alone) and 0.032
# (blocks against the whole prompt); bfloat16 against float32 weights differ by 0.053.
LOGPROB_ATOL = 0.05


@pytest.fixture(scope="module")
def tiny_bf16(tiny_model_dir):
    return load_model(ModelConfig(source=str(tiny_model_dir), device="cpu", dtype="bfloat16"))


def first_logprobs(model_tok, cfg, prompts, steps=6):
    """Log-probs [B, V] of the prefill and of `steps` greedy decode steps, one tensor per step."""
    engine = DartEngine(*model_tok, cfg)
    try:
        logits, batch = engine.prefill(prompts)
        out = [torch.log_softmax(logits, -1)]
        for _ in range(steps):
            logits = engine.decode_step(batch, out[-1].argmax(-1))
            out.append(torch.log_softmax(logits, -1))
        return out
    finally:
        engine.close()


def prompts(count=4):
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(4, 250, (n,), generator=gen).tolist() for n in (7, 19, 30, 12)[:count]]


def test_keep_one_equals_dense_in_bfloat16(tiny_bf16):
    dense = first_logprobs(tiny_bf16, DartConfig(method="dense"), prompts())
    kept = first_logprobs(tiny_bf16, DartConfig(method="dart", budget="uniform", keep_ratio=1.0), prompts())
    for a, b in zip(dense, kept):          # no neuron dropped, masks skipped: the same matmuls, exactly
        assert torch.equal(a, b)


@pytest.mark.parametrize("cfg", [DartConfig(method="dart", budget="uniform", keep_ratio=0.5, mask_step=0),
                                 DartConfig(method="dart", budget="auto", keep_ratio=0.5)])
def test_a_row_alone_is_close_to_it_inside_a_padded_batch_in_bfloat16(tiny_bf16, cfg):
    batch = prompts()
    together = first_logprobs(tiny_bf16, cfg, batch, steps=0)[0]
    for b, prompt in enumerate(batch):
        alone = first_logprobs(tiny_bf16, cfg, [prompt], steps=0)[0][0]
        assert (alone - together[b]).abs().max() <= LOGPROB_ATOL


def test_blockwise_at_keep_one_is_close_to_the_whole_prompt_in_bfloat16(tiny_bf16):
    whole = first_logprobs(tiny_bf16, DartConfig(method="dense"), prompts(), steps=2)
    blocks = first_logprobs(tiny_bf16, DartConfig(method="dart", budget="uniform", keep_ratio=1.0, mask_step=1,
                                                  prefill=PrefillConfig(mode="blockwise", first_block_tokens=5,
                                                                        block_tokens=8)), prompts(), steps=2)
    for a, b in zip(whole, blocks):
        assert (a - b).abs().max() <= LOGPROB_ATOL


@pytest.mark.parametrize("masked", [False, True])
def test_one_token_attention_packs_heads_and_matches_transformers(masked):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from dart.attention import attention, packs_one_token

    class Module(torch.nn.Module):
        num_key_value_groups, is_causal = 3, True

    gen = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(shape, generator=gen).to(torch.bfloat16)
                         for shape in ((2, 9, 1, 16), (2, 3, 40, 16), (2, 3, 40, 16)))
    mask = None
    if masked:                                       # the second row left-padded by 5 positions
        mask = torch.ones(2, 1, 1, 40, dtype=torch.bool)
        mask[1, ..., :5] = False
    assert packs_one_token(query, mask, {}) and not packs_one_token(query.float(), mask, {})
    ours, _ = attention(Module(), query, key, value, mask, scaling=0.25)
    reference, _ = sdpa_attention_forward(Module(), query.float(), key.float(), value.float(), mask, scaling=0.25)
    assert ours.shape == reference.shape == (2, 1, 9, 16)
    assert (ours.float() - reference).abs().max() < 0.02

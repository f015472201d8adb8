"""The growing KV cache (dart/kv_cache.py): appends in place hold what transformers' concatenating
DynamicLayer holds, copies never share spare room, and generation through it is unchanged."""
import copy

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from dart import engine as engine_module
from dart.config import DartConfig, DriftConfig, GenerationConfig
from dart.kv_cache import GrowingLayer, growing_cache
from dart.scheduler import Request, generate_continuously


def states(gen, batch=2, tokens=3):
    return torch.randn(batch, 2, tokens, 4, generator=gen), torch.randn(batch, 2, tokens, 4, generator=gen)


def test_appends_equal_concatenation_across_reallocations():
    gen = torch.Generator().manual_seed(0)
    mine, reference = GrowingLayer(), DynamicLayer()
    for tokens in (70, 1, 1, 30, 1, 5, 1, 1):       # blocks fill exactly, a single token gets headroom
        k, v = states(gen, tokens=tokens)
        keys, values = mine.update(k, v)
        want_k, want_v = reference.update(k, v)
        assert torch.equal(keys, want_k) and torch.equal(values, want_v)
        assert mine.get_seq_length() == reference.get_seq_length()
    assert mine.spare() > 0


def test_a_copy_never_writes_into_the_original_buffer():
    gen = torch.Generator().manual_seed(1)
    layer = GrowingLayer()
    layer.update(*states(gen, tokens=4))
    before = layer.keys.clone()
    twin = copy.copy(layer)
    twin.update(*states(gen, tokens=2))
    step_k, step_v = states(gen, tokens=1)
    keys, _ = layer.update(step_k, step_v)
    assert torch.equal(keys[..., :4, :], before) and torch.equal(keys[..., 4:, :], step_k)
    assert twin.get_seq_length() == 6 and torch.equal(twin.keys[..., :4, :], before)
    assert not torch.equal(twin.keys[..., 4:5, :], step_k)


def test_assigned_tensors_become_full_buffers():
    """DecodeBatch.join/trim and batch_select_indices assign keys and values; appends then continue."""
    gen = torch.Generator().manual_seed(2)
    layer = GrowingLayer()
    layer.update(*states(gen, tokens=5))
    layer.batch_select_indices(torch.tensor([1]))
    assert layer.keys.shape == (1, 2, 5, 4) and layer.spare() == 0
    old_k, old_v = layer.keys.clone(), layer.values.clone()
    k, v = states(gen, batch=1, tokens=1)
    keys, values = layer.update(k, v)
    assert torch.equal(keys, torch.cat([old_k, k], -2)) and torch.equal(values, torch.cat([old_v, v], -2))
    layer.keys, layer.values = keys[..., 2:, :], values[..., 2:, :]
    assert layer.get_seq_length() == 4 and torch.equal(layer.values, torch.cat([old_v, v], -2)[..., 2:, :])


def test_only_full_attention_layers_grow(tiny):
    cache = growing_cache(tiny[0].config)
    assert cache.layers and all(type(layer) is GrowingLayer for layer in cache.layers)


@pytest.mark.parametrize("cfg", [DartConfig(method="dense"),
                                 DartConfig(method="dart", budget="auto", keep_ratio=0.5,
                                            drift=DriftConfig(window=3, kappa=0.0, delta=0.0))])
def test_generation_equals_the_concatenating_cache(engine_of, monkeypatch, cfg):
    """Rows join and leave a running batch (prefill, join, select, trim): the same tokens, drift events
    and masks as through transformers' own DynamicCache."""
    gen_cfg = GenerationConfig(max_new_tokens=12, stop_on_eos=False)
    gen = torch.Generator().manual_seed(3)
    requests = [Request(i, torch.randint(6, 250, (n,), generator=gen).tolist(), 0)
                for i, n in enumerate((5, 31, 12, 20, 8))]
    engine = engine_of(cfg)
    grown = generate_continuously(engine, requests, gen_cfg, 2)
    monkeypatch.setattr(engine_module, "growing_cache", lambda config: DynamicCache(config=config))
    plain = generate_continuously(engine, requests, gen_cfg, 2)
    for key in grown:
        mine, theirs = grown[key].telemetry, plain[key].telemetry
        assert grown[key].token_ids == plain[key].token_ids
        assert (mine.drift_positions, mine.kept_fraction_per_layer) == (theirs.drift_positions, theirs.kept_fraction_per_layer)

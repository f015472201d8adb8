"""oneDNN on packed weights computes what torch's kernel does, on every FFN path; the engine routes the
model's Linears while it lives and restores them on close; auto and bad settings."""
import pytest
import torch
from torch import nn

from dart import compact, kernels, verdicts
from dart.compact import compact_ffn, gather_layer
from dart.config import DartConfig, GenerationConfig
from dart.engine import DartEngine
from dart.patch import decoder_layers

pytestmark = pytest.mark.skipif(not kernels.onednn_available(torch.device("cpu")),
                                reason="this torch has no oneDNN CPU kernels")
GREEDY = GenerationConfig(max_new_tokens=10, stop_on_eos=False)


def prompts(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 250, (n,), generator=gen).tolist() for n in [7, 40, 12, 33]]


def generate(tiny, cfg):
    engine = DartEngine(*tiny, cfg)
    try:
        return engine.kernel, engine.generate(prompts(), GREEDY)
    finally:
        engine.close()


@pytest.mark.parametrize("rows", [1, 4, 64])
def test_packed_linear_equals_f_linear(rows):
    gen = torch.Generator().manual_seed(rows)
    weight, bias = torch.randn(96, 80, generator=gen), torch.randn(96, generator=gen)
    x = torch.randn(2, rows, 80, generator=gen)
    packed = kernels.pack(weight)
    assert packed.is_mkldnn and tuple(packed.shape) == (96, 80)
    assert torch.allclose(kernels.linear(x, packed, bias), nn.functional.linear(x, weight, bias), atol=1e-4)
    assert torch.allclose(kernels.linear(x[:, ::2], packed), x[:, ::2] @ weight.T, atol=1e-4)   # strided input
    assert torch.allclose(kernels.linear(x, weight, bias, onednn=True), nn.functional.linear(x, weight, bias), atol=1e-4)
    assert torch.allclose(kernels.linear(x, weight.T.contiguous().T, onednn=True), x @ weight.T, atol=1e-4)


def test_packed_gathered_ffn_equals_the_plain_one(tiny):
    mlp = tiny[0].model.layers[1].mlp
    hidden = torch.randn(3, 5, mlp.gate_proj.in_features, generator=torch.Generator().manual_seed(3))
    kept = torch.tensor([0, 3, 4, 9, 20, 36])
    plain, packed = gather_layer(mlp, kept), gather_layer(mlp, kept).pack()
    assert packed.gate.is_mkldnn and packed.width == plain.width == 6
    assert torch.allclose(compact_ffn(mlp, hidden, packed), compact_ffn(mlp, hidden, plain), atol=1e-5)


def test_prompt_blocks_run_plain_gathered_weights_and_decoding_packs_them_once(tiny, monkeypatch):
    packs = []
    original = kernels.pack
    monkeypatch.setattr(compact, "pack_weight", lambda w: packs.append(tuple(w.shape)) or original(w))
    cfg = DartConfig(method="static", budget="uniform", keep_ratio=0.5, mask_step=1, ffn_path="compact",
                     linear_kernel="onednn", prefill={"mode": "blockwise", "block_tokens": 8})
    engine = DartEngine(*tiny, cfg)
    try:
        logits, batch = engine.prefill([prompts()[1]])            # 40 tokens: a calibrating block, then 4 pruned
        assert packs == [] and batch.states[0].ledger.compact_forwards == 4
        tokens = logits.argmax(-1)
        for _ in range(3):
            tokens = engine.decode_step(batch, tokens).argmax(-1)
        layers = len(decoder_layers(tiny[0]))
        assert len(packs) == 3 * layers                            # the prompt's gathered set, packed once
    finally:
        engine.close()


@pytest.mark.parametrize("cfg", [
    DartConfig(method="dense"),
    DartConfig(method="static", budget="uniform", keep_ratio=0.5, mask_step=0),                 # compact, union
    DartConfig(method="dart", budget="uniform", keep_ratio=0.5, ffn_path="masked"),
    DartConfig(method="dart", keep_ratio=0.5, prefill={"mode": "blockwise", "block_tokens": 16}),   # rowwise
    DartConfig(method="dart", keep_ratio=0.5, ffn_path="compact", prefill={"mode": "blockwise", "block_tokens": 16}),
], ids=["dense", "static-gathered", "dart-masked", "dart-blockwise", "dart-blockwise-compact"])
def test_generation_under_onednn_equals_torch_kernel(tiny, cfg):
    kernel, plain = generate(tiny, cfg.model_copy(update={"linear_kernel": "torch"}))
    assert kernel == "torch"
    kernel, routed = generate(tiny, cfg.model_copy(update={"linear_kernel": "onednn"}))
    assert kernel == "onednn"
    assert [r.token_ids for r in routed] == [r.token_ids for r in plain]
    for a, b in zip(routed, plain):
        assert a.telemetry.applied_sparsity == pytest.approx(b.telemetry.applied_sparsity)
        assert (a.telemetry.compact_forwards, a.telemetry.union_forwards) == \
            (b.telemetry.compact_forwards, b.telemetry.union_forwards)


def test_engine_routes_linears_while_open_and_restores_them(tiny):
    model = tiny[0]
    before = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    engine = DartEngine(*tiny, DartConfig(linear_kernel="onednn"))
    layer = decoder_layers(model)[0]
    assert isinstance(layer.self_attn.q_proj, kernels.PackedLinear)
    assert isinstance(layer.mlp.gate_proj, kernels.PackedLinear)          # inside the DART wrapper
    assert isinstance(model.get_output_embeddings(), kernels.PackedLinear)
    assert layer.mlp.gate_proj.weight is before["model.layers.0.mlp.gate_proj"].weight   # no copy of the original
    engine.close()
    after = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert not any(isinstance(m, kernels.PackedLinear) for m in model.modules())


def test_second_engine_on_a_patched_model_leaves_the_first_intact(tiny):
    first = DartEngine(*tiny, DartConfig(linear_kernel="onednn"))
    try:
        with pytest.raises(ValueError, match="already patched"):
            DartEngine(*tiny, DartConfig(linear_kernel="onednn"))
        assert isinstance(decoder_layers(tiny[0])[0].self_attn.q_proj, kernels.PackedLinear)
    finally:
        first.close()


def test_auto_keeps_torch_kernel_on_a_small_model_without_measuring(tiny, monkeypatch):
    monkeypatch.setattr(kernels, "measured_choice", lambda weight: pytest.fail("measured a tiny model"))
    assert generate(tiny, DartConfig(method="dense"))[0] == "torch"


def test_auto_measures_a_large_enough_model(monkeypatch):
    weights = [torch.randn(512, 256) for _ in range(3)]
    assert kernels.measured_choice(weights) in ("torch", "onednn")
    seen = []
    monkeypatch.setattr(kernels, "measured_choice", lambda w: seen.append(len(w)) or "onednn")
    assert kernels.choose_kernel("auto", weights, hidden=256) == "onednn" and seen == [3]
    assert kernels.choose_kernel("torch", weights, hidden=256) == "torch" and seen == [3]


def test_auto_measures_once_per_cpu_and_shape_then_reads_the_cached_verdict(tmp_path, monkeypatch):
    weights = [torch.randn(512, 256) for _ in range(3)]
    seen = []
    monkeypatch.setattr(kernels, "measured_choice", lambda w: seen.append(tuple(w[0].shape)) or "onednn")
    assert [kernels.choose_kernel("auto", weights, 256, tmp_path) for _ in range(2)] == ["onednn", "onednn"]
    assert seen == [(512, 256)]                                   # the second engine read the verdict
    other = [torch.randn(640, 256) for _ in range(3)]             # another shape is measured for itself
    assert kernels.choose_kernel("auto", other, 256, tmp_path) == "onednn" and len(seen) == 2
    for entry in tmp_path.glob("*.json"):                         # a corrupt verdict is measured again
        entry.write_text("{not json")
    assert kernels.choose_kernel("auto", weights, 256, tmp_path) == "onednn" and len(seen) == 3
    assert kernels.choose_kernel("auto", weights, 256, tmp_path) == "onednn" and len(seen) == 3
    monkeypatch.setattr(verdicts, "cpu_model", lambda: "")       # CPU unknown: never cached
    kernels.choose_kernel("auto", weights, 256, tmp_path)
    kernels.choose_kernel("auto", weights, 256, tmp_path)
    assert len(seen) == 5


def test_onednn_off_a_cpu_is_a_config_error():
    with pytest.raises(ValueError, match="dart.linear_kernel"):
        kernels.choose_kernel("onednn", [torch.empty(8, 8, device="meta")], hidden=8)
    assert kernels.choose_kernel("auto", [torch.empty(8, 8, device="meta")], hidden=1024) == "torch"


def test_bad_kernel_name_names_the_key():
    with pytest.raises(ValueError, match="linear_kernel"):
        DartConfig(linear_kernel="mkl")

"""Engine equivalences and errors on tiny random models loaded through the real loading path."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from dart.config import DartConfig, DriftConfig, GenerationConfig
from dart.engine import DartEngine
from dart.loading import load_model
from dart.model_config import ModelConfig

GREEDY = GenerationConfig(max_new_tokens=24, stop_on_eos=False)
METHODS = {
    "dart_uniform_m0": DartConfig(method="dart", budget="uniform", keep_ratio=0.5, mask_step=0),
    "dart_auto": DartConfig(method="dart", budget="auto", keep_ratio=0.5, ranking="max"),
    "static_m2_ema": DartConfig(method="static", budget="uniform", keep_ratio=0.3, mask_step=2, decay=0.9),
    "griffin": DartConfig(method="griffin", keep_ratio=0.5),
    "dart_carry_replay": DartConfig(method="dart", budget="auto", keep_ratio=0.5, drift=DriftConfig(
        window=3, kappa=0.0, delta=0.0, baseline_tokens=6, replay_tokens=4)),
    "dense": DartConfig(method="dense"),
}


def prompts(count=8, vocab=250, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = [3, 9, 14, 21, 30, 41, 5, 17][:count]
    return [torch.randint(4, vocab, (n,), generator=gen).tolist() for n in lengths]


def run(model_tok, cfg, batch, gen=GREEDY, **kwargs):
    engine = DartEngine(*model_tok, cfg)
    try:
        return engine.generate(batch, gen, **kwargs)
    finally:
        engine.close()


def comparable(telemetry):
    """Telemetry without timings and the FFN path, which depend on the batch around a row."""
    data = telemetry.to_dict()
    for key in ("prefill_seconds", "decode_seconds", "compact_forwards", "union_forwards", "ffn_flops_executed",
                "ffn_bytes_dense", "ffn_bytes_executed", "dart_overhead_flops"):
        data.pop(key)
    return data


def assert_close(a, b, path="telemetry"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=1e-5), path
    else:
        assert a == b, path


@pytest.mark.parametrize("name", METHODS)
def test_each_prompt_alone_equals_it_inside_a_padded_batch(tiny, name):
    batch = prompts()
    together = run(tiny, METHODS[name], batch)
    for prompt, in_batch in zip(batch, together):
        alone = run(tiny, METHODS[name], [prompt])[0]
        assert alone.token_ids == in_batch.token_ids
        assert_close(comparable(alone.telemetry), comparable(in_batch.telemetry))


def test_seeded_sampling_is_per_row(tiny):
    gen = GenerationConfig(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=7, stop_on_eos=False)
    batch = prompts(4)
    together = run(tiny, METHODS["dart_uniform_m0"], batch, gen, seeds=[1, 2, 3, 4])
    alone = [run(tiny, METHODS["dart_uniform_m0"], [p], gen, seeds=[s])[0] for p, s in zip(batch, [1, 2, 3, 4])]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    greedy = run(tiny, METHODS["dart_uniform_m0"], batch, GenerationConfig(max_new_tokens=16, stop_on_eos=False))
    assert [r.token_ids for r in together] != [r.token_ids for r in greedy]


@pytest.mark.parametrize("cfg", [
    DartConfig(method="static", budget="uniform", keep_ratio=1.0),
    DartConfig(method="dart", budget="auto", keep_ratio=1.0),
    DartConfig(method="dart", budget="uniform", keep_ratio=1.0, decay=0.5, ranking="product"),
])
def test_keep_ratio_one_equals_the_unpatched_model(tiny, cfg):
    model, tokenizer = tiny
    prompt, continuation = prompts(1)[0] + [5, 6, 7], [8, 9, 10, 11, 12]
    with torch.inference_mode():
        full = torch.tensor([prompt + continuation])
        reference = torch.log_softmax(model(full).logits[0].float(), -1)[len(prompt) - 1:-1]
        expected = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                  max_new_tokens=12, do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
    engine = DartEngine(model, tokenizer, cfg)
    try:
        per_position, _ = engine.continuation_logprobs(prompt, [continuation])
        tokens = engine.generate([prompt], GenerationConfig(max_new_tokens=12, stop_on_eos=False))[0].token_ids
    finally:
        engine.close()
    assert torch.allclose(per_position[0], reference, atol=1e-5)
    assert tokens == expected


@pytest.mark.parametrize("path", ["masked", "compact"])
def test_cached_decode_equals_recomputation(tiny, path):
    model, tokenizer = tiny
    cfg = DartConfig(method="static", budget="uniform", keep_ratio=0.5, mask_step=0, ffn_path=path)
    prompt = prompts(1, seed=3)[0] + [7] * 10
    engine = DartEngine(model, tokenizer, cfg)
    try:
        generated = engine.generate([prompt], GREEDY)[0].token_ids
        per_position, _ = engine.continuation_logprobs(prompt, [generated])
    finally:
        engine.close()
    assert per_position[0].argmax(-1).tolist() == generated


def test_compact_path_equals_masked_path(tiny):
    batch = prompts(3)
    masked = run(tiny, DartConfig(method="dart", budget="uniform", keep_ratio=0.4, ffn_path="masked"), batch[:1])[0]
    compact = run(tiny, DartConfig(method="dart", budget="uniform", keep_ratio=0.4, ffn_path="compact"), batch[:1])[0]
    assert compact.token_ids == masked.token_ids
    assert compact.telemetry.compact_forwards == len(compact.token_ids) - 1
    assert masked.telemetry.compact_forwards == 0
    # the prefill forms its masks layer by layer (mask_step 0), so only it runs the masked path
    prefill_excess = 6 * 48 * 3 * (37 - 14) * len(batch[0])
    assert compact.telemetry.ffn_flops_executed - compact.telemetry.ffn_flops_kept == prefill_excess
    assert compact.telemetry.ffn_flops_executed < masked.telemetry.ffn_flops_executed


def test_static_telemetry_reports_the_sparsity_asked_for(tiny):
    result = run(tiny, DartConfig(method="static", budget="uniform", keep_ratio=0.5, mask_step=0), prompts(1))[0]
    t = result.telemetry
    assert t.generated_tokens == len(result.token_ids) == 24
    assert t.sparsity_per_token == pytest.approx([1 - 18 / 37] * 24)
    assert t.kept_fraction_per_layer == pytest.approx([18 / 37] * 3)
    assert t.drift_events == 0 and t.epochs == 1 and t.dart_state_bytes > 0
    assert t.ffn_flops_kept == pytest.approx(t.ffn_flops_dense * 18 / 37)


def test_release_step_runs_dense_after_it(tiny):
    cfg = DartConfig(method="static", budget="uniform", keep_ratio=0.5, release_step=10)
    t = run(tiny, cfg, prompts(1))[0].telemetry
    assert all(s > 0.4 for s in t.sparsity_per_token[:10]) and t.sparsity_per_token[10:] == [0.0] * 14


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_statistics_stay_float32_under_half_precision_weights(tiny_model_dir, dtype):
    model, tokenizer = load_model(ModelConfig(source=str(tiny_model_dir), device="cpu", dtype=dtype))
    engine = DartEngine(model, tokenizer, METHODS["dart_auto"])
    try:
        state = engine.new_state()
        assert state.stat.dtype == torch.float32 and engine.proxies.pmax.dtype == torch.float32
        result = engine.generate(prompts(2), GREEDY)
    finally:
        engine.close()
    assert all(len(r.token_ids) == 24 for r in result)
    assert 0.3 < result[0].telemetry.applied_sparsity < 0.6


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "qwen3"])
def test_llama_family_architectures(tiny_model_factory, arch):
    model_tok = load_model(ModelConfig(source=str(tiny_model_factory(arch=arch)), device="cpu", dtype="float32"))
    batch = prompts(3)
    together = run(model_tok, METHODS["dart_uniform_m0"], batch)
    assert [r.token_ids for r in together] == [run(model_tok, METHODS["dart_uniform_m0"], [p])[0].token_ids
                                               for p in batch]
    assert together[0].telemetry.applied_sparsity == pytest.approx(1 - 18 / 37)


def test_unpatching_restores_the_model(tiny):
    model, tokenizer = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine = DartEngine(model, tokenizer, METHODS["dart_auto"])
    assert set(model.state_dict()) == set(before)
    engine.close()
    assert all(type(layer.mlp).__name__ != "DartMLP" for layer in model.model.layers)


def test_bad_prompts_are_named(tiny):
    engine = DartEngine(*tiny, METHODS["dart_auto"])
    try:
        with pytest.raises(ValueError, match="empty prompt"):
            engine.generate([[]], GREEDY)
        with pytest.raises(ValueError, match="does not fit the model's context"):
            engine.generate([[5] * (engine.max_context + 1)], GREEDY)
        with pytest.raises(ValueError, match="at least one token"):
            engine.score_continuations([5, 6], [[7], []])
    finally:
        engine.close()


def test_per_layer_budget_naming_a_missing_layer(tiny):
    with pytest.raises(ValueError, match="layer 9"):
        DartEngine(*tiny, DartConfig(budget="per_layer", per_layer="0:0.5,9:0.5"))


def test_model_without_gated_ffn_is_refused(tiny):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="gpt2.*not supported.*gated FFN"):
        DartEngine(gpt2, tiny[1], METHODS["dart_auto"])


def test_label_scoring_prefers_the_likely_continuation(tiny):
    engine = DartEngine(*tiny, METHODS["dart_auto"])
    try:
        prompt = prompts(1, seed=5)[0]
        greedy = engine.generate([prompt], GenerationConfig(max_new_tokens=1, stop_on_eos=False))[0].token_ids
        other = [(greedy[0] + 1) % 200 + 4]
        scores = engine.score_continuations(prompt, [other, greedy])
    finally:
        engine.close()
    assert scores.logprobs[1] > scores.logprobs[0]
    assert scores.token_counts == [1, 1]


@pytest.mark.parametrize("mask_step, prompt_forward", [(0, 1 - 18 / 37), (1, 0.0)])
def test_scoring_reports_the_sparsity_applied_to_the_scored_tokens(tiny, mask_step, prompt_forward):
    """A continuation's first token comes from the prompt's forward, the rest from the masked forward after it."""
    engine = DartEngine(*tiny, DartConfig(method="static", budget="uniform", keep_ratio=0.5, mask_step=mask_step))
    try:
        scores = engine.score_continuations(prompts(1)[0], [[7], [8, 9, 10]])
    finally:
        engine.close()
    masked = 1 - 18 / 37
    assert scores.telemetry.applied_sparsity == pytest.approx((2 * prompt_forward + 2 * masked) / 4)
    assert scores.telemetry.generated_tokens == 0 and scores.telemetry.sparsity_per_token == []


def test_single_token_choices_are_scored_from_the_prompt_alone(tiny):
    """One-token continuations (a label's letter) read the prompt's next-token log-probs: no forward over them."""
    engine = DartEngine(*tiny, DartConfig(method="dart", keep_ratio=0.5))
    prompt = prompts(1)[0]
    try:
        logits, _ = engine.prefill([prompt])
        expected = torch.log_softmax(logits[0], -1)
        one = engine.score_continuations(prompt, [[7]])
        four = engine.score_continuations(prompt, [[7], [8], [9], [10]])
    finally:
        engine.close()
    assert four.logprobs == pytest.approx([float(expected[t]) for t in (7, 8, 9, 10)], abs=1e-5)
    assert four.telemetry.ffn_flops_dense == one.telemetry.ffn_flops_dense      # the prompt's forward only

"""Block-wise prefill (docs/prefill.md): the prompt runs in blocks through the KV cache, the first
calibrating and the following ones on each row's kept neurons; equivalences with dense prefill."""
import pytest
import torch
from pydantic import ValidationError

from dart.compact import GATHER_COST_IN_FORWARDS
from dart.config import DartConfig, DriftConfig, GenerationConfig, PrefillConfig
from pipeline.config import dart_settings

TOKENS = 8
TIMINGS = ("prefill_seconds", "decode_seconds")
# what differs between a row alone and the same row in a batch: weight reads are shared among a
# forward's rows, and the path a forward takes (and so its mask multiplies) depends on its rows
BATCH_DEPENDENT = ("ffn_flops_executed", "ffn_bytes_dense", "ffn_bytes_executed", "compact_forwards", "union_forwards",
                   "rowwise_forwards", "dart_overhead_flops")
DRIFT = DriftConfig(window=3, kappa=0.0, delta=0.0)
CONFIGS = {
    "dart_auto_drift": DartConfig(method="dart", budget="auto", keep_ratio=0.5, drift=DRIFT),
    "dart_reset": DartConfig(method="dart", budget="auto", keep_ratio=0.5,
                             drift=DRIFT.model_copy(update={"policy": "reset"})),
    "static_uniform_step0": DartConfig(method="static", budget="uniform", keep_ratio=0.4, mask_step=0),
    "griffin": DartConfig(method="griffin", keep_ratio=0.5),
}


def blockwise(cfg: DartConfig, block_tokens: int, **update) -> DartConfig:
    """cfg with its prompt in blocks. A fixed gather cost: a block's FFN path by neuron-tokens, as the paths
    these tests compare would not be chosen on a tiny model by measured seconds."""
    return cfg.model_copy(update={"prefill": PrefillConfig(mode="blockwise", block_tokens=block_tokens),
                                  "gather_cost": GATHER_COST_IN_FORWARDS, **update})


def prompts(lengths=(9, 30, 17)):
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(6, 250, (n,), generator=gen).tolist() for n in lengths]


def generate(engine, batch_prompts):
    return engine.generate(batch_prompts, GenerationConfig(max_new_tokens=TOKENS, stop_on_eos=False))


def telemetry(result, drop=()):
    return {k: v for k, v in result.telemetry.to_dict().items() if k not in TIMINGS + tuple(drop)}


def assert_close(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_close(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_close(x, y)
    else:
        assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize("budget", ["auto", "uniform"])
def test_blockwise_at_keep_ratio_one_equals_dense(engine_of, budget):
    prompt, continuations = prompts()[1], [[7, 8, 9], [10, 11]]
    dense = engine_of(DartConfig(method="dense"))
    expected, _ = dense.continuation_logprobs(prompt, continuations)
    dense_tokens = [r.token_ids for r in generate(dense, prompts())]
    pruned = engine_of(blockwise(DartConfig(method="dart", budget=budget, keep_ratio=1.0, mask_step=0,
                                            drift=DRIFT), 4))
    got, scored = pruned.continuation_logprobs(prompt, continuations)
    assert scored.prefill_blocks == 8
    for a, b in zip(expected, got):
        assert (a - b).abs().max() < 1e-5
    assert [r.token_ids for r in generate(pruned, prompts())] == dense_tokens


@pytest.mark.parametrize("name", CONFIGS)
def test_a_block_as_long_as_the_prompt_equals_dense_prefill(engine_of, name):
    batch_prompts = prompts()
    today = generate(engine_of(CONFIGS[name]), batch_prompts)
    one_block = generate(engine_of(blockwise(CONFIGS[name], max(map(len, batch_prompts)))), batch_prompts)
    for a, b in zip(today, one_block):
        assert a.token_ids == b.token_ids
        assert telemetry(a) == telemetry(b)
        assert a.telemetry.prefill_blocks == 1


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("ffn_path", ["auto", "masked"])
def test_a_prompt_alone_equals_it_inside_a_padded_batch(engine_of, name, ffn_path):
    engine = engine_of(blockwise(CONFIGS[name], 4, ffn_path=ffn_path))
    batch_prompts = prompts()
    together = generate(engine, batch_prompts)
    for prompt, in_batch in zip(batch_prompts, together):
        alone = generate(engine, [prompt])[0]
        assert alone.token_ids == in_batch.token_ids
        assert_close(telemetry(alone, BATCH_DEPENDENT), telemetry(in_batch, BATCH_DEPENDENT))
        assert in_batch.telemetry.prefill_blocks == -(-len(prompt) // 4)


@pytest.mark.parametrize("name", ["dart_auto_drift", "static_uniform_step0"])
def test_a_short_first_block_then_longer_blocks(engine_of, name):
    cfg = CONFIGS[name].model_copy(update={"prefill": PrefillConfig(mode="blockwise", block_tokens=12,
                                                                      first_block_tokens=5)})
    engine, batch_prompts = engine_of(cfg), prompts()
    together = generate(engine, batch_prompts)
    for prompt, in_batch in zip(batch_prompts, together):
        alone = generate(engine, [prompt])[0]
        assert alone.token_ids == in_batch.token_ids
        assert_close(telemetry(alone, BATCH_DEPENDENT), telemetry(in_batch, BATCH_DEPENDENT))
        assert in_batch.telemetry.prefill_blocks == 1 + -(-(len(prompt) - 5) // 12)
    if name == "dart_auto_drift" and together[1].telemetry.drift_events == 0:   # 30 tokens: 5 dense, 25 pruned
        state_sparsity = 1 - sum(together[1].telemetry.kept_fraction_per_layer) / 3
        assert together[1].telemetry.prompt_applied_sparsity == pytest.approx(state_sparsity * 25 / 30)


def test_rowwise_gathered_blocks_equal_masked_blocks(engine_of):
    cfg = CONFIGS["static_uniform_step0"]
    masked = generate(engine_of(blockwise(cfg, 4, ffn_path="masked")), prompts())
    gathered = generate(engine_of(blockwise(cfg, 4, ffn_path="auto")), prompts())
    for a, b in zip(masked, gathered):
        assert a.token_ids == b.token_ids
        assert b.telemetry.rowwise_forwards > 0 and a.telemetry.rowwise_forwards == 0
        assert b.telemetry.ffn_flops_executed < a.telemetry.ffn_flops_executed
        assert b.telemetry.ffn_flops_kept == a.telemetry.ffn_flops_kept


def test_telemetry_counts_prompt_and_generated_tokens_apart(engine_of):
    engine = engine_of(blockwise(CONFIGS["static_uniform_step0"], 4))
    shape = engine.shape
    for prompt, result in zip(prompts(), generate(engine, prompts())):
        t = result.telemetry
        sparsity = 1 - (int(0.4 * shape.width) / shape.width)      # uniform: every layer keeps floor(r*N)
        assert t.prompt_applied_sparsity == pytest.approx(sparsity)   # mask_step 0: from the first block on
        assert t.applied_sparsity == pytest.approx(sparsity) and len(t.sparsity_per_token) == TOKENS
        fed = len(prompt) + TOKENS - 1                                  # the last token is never fed
        assert t.ffn_flops_dense == 6 * shape.hidden * shape.width * shape.num_layers * fed
        assert t.ffn_flops_kept < t.ffn_flops_dense


def test_auto_budget_calibrates_on_the_first_block_only(engine_of):
    engine = engine_of(blockwise(CONFIGS["dart_auto_drift"], 8, drift=DriftConfig(window=3)))
    prompt = prompts()[1]
    t = generate(engine, [prompt])[0].telemetry
    state_sparsity = 1 - sum(t.kept_fraction_per_layer) / len(t.kept_fraction_per_layer)
    pruned_tokens = len(prompt) - 8                                  # the first block runs dense
    if t.drift_events == 0:
        assert t.prompt_applied_sparsity == pytest.approx(state_sparsity * pruned_tokens / len(prompt), abs=1e-9)
    assert 0 < t.prompt_applied_sparsity < state_sparsity


def test_drift_in_a_block_re_forms_masks(engine_of):
    engine = engine_of(blockwise(CONFIGS["dart_reset"], 3))
    state = engine.new_state()
    engine.prefill([prompts((60,))[0]], [state])
    in_prompt = [f for f in state.drift_positions if f < state.prompt_forwards - 1]
    assert in_prompt, "kappa = delta = 0 puts tau at the baseline mean: some window falls below it"
    # reset: the forward after an event starts an epoch that calibrates densely, then masks re-form
    assert state.ledger.sparsity[in_prompt[0] + 1] == 0.0
    assert state.epoch >= 1


@pytest.mark.parametrize("policy", ["reset", "carry"])
def test_drift_in_prompt_false_watches_generated_tokens_only(engine_of, policy):
    cfg = blockwise(CONFIGS["dart_reset"], 3, drift=DRIFT.model_copy(update={"policy": policy}))
    runs, prefilled = {}, {}
    for watch in (True, False):
        engine = engine_of(cfg.model_copy(update={"prefill": cfg.prefill.model_copy(update={"drift_in_prompt": watch})}))
        runs[watch] = generate(engine, prompts((60,)))[0].telemetry
        prefilled[watch] = engine.new_state()
        engine.prefill(prompts((60,)), [prefilled[watch]])
    blocks = runs[False].prefill_blocks
    assert any(f < blocks for f in runs[True].drift_positions)              # events in the prompt
    assert runs[False].drift_cosine_positions and min(runs[False].drift_cosine_positions) >= blocks
    assert all(f >= blocks for f in runs[False].drift_positions)
    # the prompt alone: no block after an event re-forms (carry) or recalibrates (reset) on every neuron
    assert prefilled[False].ledger.flops_executed < prefilled[True].ledger.flops_executed


def test_scoring_runs_blockwise(engine_of):
    engine = engine_of(blockwise(CONFIGS["static_uniform_step0"], 4))
    _, t = engine.continuation_logprobs(prompts()[1], [[7, 8], [9]])
    assert t.prefill_blocks == 8 and t.prompt_applied_sparsity > 0.5


@pytest.mark.parametrize("update, key", [
    ({"prefill": {"mode": "blockwise", "block_tokens": 0}}, "prefill.block_tokens"),
    ({"prefill": {"mode": "blockwise", "block_tokens": -3}}, "prefill.block_tokens"),
    ({"prefill": {"mode": "blockwise", "first_block_tokens": 0}}, "prefill.first_block_tokens"),
    ({"prefill": {"mode": "chunked"}}, "prefill.mode"),
])
def test_config_errors_name_the_key(update, key):
    with pytest.raises(ValidationError, match=key.replace(".", r"\.")):
        DartConfig(**update)


def test_run_identity_reads_prefill_only_when_blockwise():
    assert "prefill" not in dart_settings(DartConfig())
    assert "prefill" not in dart_settings(DartConfig(prefill={"block_tokens": 32}))
    assert dart_settings(DartConfig(prefill={"mode": "blockwise"}))["prefill"] == {
        "mode": "blockwise", "block_tokens": 64, "first_block_tokens": None}
    quiet = {"mode": "blockwise", "drift_in_prompt": False}
    assert dart_settings(DartConfig(prefill=quiet))["prefill"]["drift_in_prompt"] is False
    assert "drift_in_prompt" not in dart_settings(DartConfig(method="static", prefill=quiet))["prefill"]


def test_dense_runs_dense_whatever_prefill_says(engine_of):
    """The dense baseline of a block-wise config: `dart.method=dense` alone, prefill settings unread
    (and out of the run's identity)."""
    block = {"mode": "blockwise", "block_tokens": 4, "first_block_tokens": 3}
    cfg = DartConfig(method="dense", prefill=block)
    assert not cfg.blockwise and dart_settings(cfg) == dart_settings(DartConfig(method="dense"))
    plain = generate(engine_of(DartConfig(method="dense")), prompts())
    told = generate(engine_of(cfg), prompts())
    for a, b in zip(plain, told):
        assert a.token_ids == b.token_ids and b.telemetry.prefill_blocks == 1
        assert_close(telemetry(a), telemetry(b))

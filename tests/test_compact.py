"""Compact and union FFN paths equal the masked path; auto picks them where they pay; accounting."""
import pytest
import torch

from dart.compact import (GATHER_COST_IN_FORWARDS, choose_path, compact_block, compact_ffn, forwards_to_amortize,
                          gather_layer, union_kept)
from dart.config import DartConfig, GenerationConfig
from dart import compact
from dart.engine import DartEngine
from dart.kernels import onednn_available
from dart.accounting import ModelShape, overhead_flops
from dart.phase import ForwardPhase

GREEDY = GenerationConfig(max_new_tokens=12, stop_on_eos=False)
L, D, N = 3, 48, 37          # the tiny model: layers, hidden, FFN width


def prompts(count, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 250, (n,), generator=gen).tolist() for n in [7, 19, 12, 25][:count]]


def run(tiny, cfg, batch, gen=GREEDY):
    engine = DartEngine(*tiny, cfg)
    try:
        return engine.generate(batch, gen)
    finally:
        engine.close()


def static(keep, path):
    """A fixed gather cost (the default one) so that auto's waits do not depend on the machine."""
    return DartConfig(method="static", budget="uniform", keep_ratio=keep, mask_step=0, ffn_path=path,
                      gather_cost=GATHER_COST_IN_FORWARDS)


def test_gathered_ffn_equals_masked_ffn_for_shared_and_distinct_masks(tiny):
    model, _ = tiny
    mlp = model.model.layers[1].mlp
    hidden = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(1))
    kept = [torch.tensor([0, 3, 4, 9, 20, 36]), torch.tensor([1, 3, 9, 10]), torch.tensor([3, 4, 5])]
    masks = torch.zeros(3, 1, N)
    for b, k in enumerate(kept):
        masks[b, 0, k] = 1
    act = mlp.act_fn(mlp.gate_proj(hidden)) * mlp.up_proj(hidden)
    masked = mlp.down_proj(act * masks)                                        # [B, T, d]
    shared = compact_ffn(mlp, hidden, gather_layer(mlp, kept[0]))
    assert torch.allclose(shared, mlp.down_proj(act * masks[:1]), atol=1e-5)
    union = union_kept([[k] for k in kept], N)[0]
    assert union.tolist() == [0, 1, 3, 4, 5, 9, 10, 20, 36]
    row_mask = masks.index_select(2, union)                                    # [B, 1, |U|]
    assert torch.allclose(compact_ffn(mlp, hidden, gather_layer(mlp, union, row_mask)), masked, atol=1e-5)


@pytest.mark.parametrize("tile,row_tile,width", [(8, 4, 8), (16, 8, 16), (64, 32, N)])
def test_zero_neurons_and_rows_padding_a_gathered_set_change_no_output(tiny, tile, row_tile, width):
    mlp = tiny[0].model.layers[1].mlp
    hidden = torch.randn(1, 11, D, generator=torch.Generator().manual_seed(2))
    kept = torch.tensor([0, 3, 4, 9, 20, 36])
    plain, padded = gather_layer(mlp, kept), gather_layer(mlp, kept, tile=tile, row_tile=row_tile)
    assert (plain.width, padded.width, padded.kept) == (6, width, 6)      # at most N: 37 neurons
    assert padded.gate[6:].abs().sum() == 0 and padded.up[6:].abs().sum() == 0
    assert padded.down.shape in ((width, D), (D, width))
    act, out = compact_block(mlp, hidden, padded)
    plain_act, plain_out = compact_block(mlp, hidden, plain)
    assert act.shape == plain_act.shape == (1, 11, 6)
    assert torch.allclose(act, plain_act, atol=1e-6) and torch.allclose(out, plain_out, atol=1e-6)
    masks = torch.zeros(3, 1, N)
    masks[0, 0, :10], masks[2, 0, 3:] = 1, 1
    rows = torch.randn(3, 1, D, generator=torch.Generator().manual_seed(4))    # a decode step under the union's row masks
    union = compact_ffn(mlp, rows, gather_layer(mlp, kept, masks.index_select(2, kept), tile=tile, row_tile=row_tile))
    assert torch.allclose(union, compact_ffn(mlp, rows, gather_layer(mlp, kept, masks.index_select(2, kept))), atol=1e-6)


@pytest.mark.skipif(not onednn_available(torch.device("cpu")), reason="this torch build has no oneDNN linear ops")
def test_onednn_pads_gathered_widths_and_counts_the_padding_as_executed(tiny):
    ledgers = {}
    for kernel in ("torch", "onednn"):
        engine = DartEngine(*tiny, DartConfig(method="dart", keep_ratio=0.5, linear_kernel=kernel, ffn_path="compact",
                                              prefill={"mode": "blockwise", "block_tokens": 8}))
        try:
            assert engine.gathers.tile == (compact.GATHER_TILE if kernel == "onednn" else 1)
            _, batch = engine.prefill(prompts(4)[3:])
            ledgers[kernel] = batch.states[0].ledger
        finally:
            engine.close()
    assert ledgers["onednn"].flops_kept == ledgers["torch"].flops_kept
    assert ledgers["onednn"].flops_executed > ledgers["torch"].flops_executed    # 37 neurons computed per pruned layer


def test_compact_generation_equals_masked_generation_at_batch_one(tiny):
    masked = run(tiny, static(0.2, "masked"), prompts(1))[0]
    compact = run(tiny, static(0.2, "auto"), prompts(1))[0]
    assert compact.token_ids == masked.token_ids
    # the prefill forms its masks inside the forward (masked path); auto's decode forwards run masked
    # until the mask set has paid for its gather, then compact
    kept = round(sum(compact.telemetry.kept_fraction_per_layer) / L * N)
    waited = forwards_to_amortize(kept / N)
    assert 0 < waited < len(compact.token_ids) - 1
    assert compact.telemetry.compact_forwards == len(compact.token_ids) - 1 - waited
    assert compact.telemetry.union_forwards == 0 and masked.telemetry.compact_forwards == 0


def test_auto_gathers_in_decode_once_the_mask_set_has_lasted_long_enough_to_pay(tiny):
    assert [forwards_to_amortize(f) for f in (0.2, 0.5, 0.85)] == [3, 12, 68]
    batch, long = prompts(4), GenerationConfig(max_new_tokens=40, stop_on_eos=False)
    masked = run(tiny, static(0.2, "masked"), batch, long)
    auto = run(tiny, static(0.2, "auto"), batch, long)
    forced = run(tiny, static(0.2, "compact"), batch, long)
    assert [r.token_ids for r in auto] == [r.token_ids for r in masked]
    decode = len(auto[0].token_ids) - 1
    assert all(0 < r.telemetry.union_forwards < decode for r in auto)     # waited, then the union
    assert all(r.telemetry.union_forwards == decode for r in forced)      # a forced path never waits
    assert masked[0].telemetry.ffn_flops_executed > auto[0].telemetry.ffn_flops_executed \
        > forced[0].telemetry.ffn_flops_executed


def test_union_path_equals_masked_path_in_a_batch_with_distinct_masks(tiny):
    batch = prompts(4)
    masked = run(tiny, static(0.3, "masked"), batch)
    union = run(tiny, static(0.3, "compact"), batch)
    assert [r.token_ids for r in union] == [r.token_ids for r in masked]
    assert all(r.telemetry.union_forwards == len(r.token_ids) - 1 for r in union)
    assert all(r.telemetry.ffn_flops_executed < m.telemetry.ffn_flops_executed for r, m in zip(union, masked))


def test_label_scoring_continuations_share_one_compact_forward(tiny):
    engine = DartEngine(*tiny, static(0.5, "auto"))
    try:
        scores = engine.score_continuations(prompts(1)[0], [[5, 6], [7], [8, 9, 10]])
    finally:
        engine.close()
    assert scores.telemetry.compact_forwards == 1 and scores.telemetry.union_forwards == 0


def test_auto_takes_a_gathered_path_only_where_it_reads_fewer_bytes():
    assert choose_path(1, 0.5, "auto") == "compact"
    assert choose_path(8, 0.6, "auto") == "union"
    assert choose_path(8, 0.95, "auto") == "masked"        # the union of eight kept sets is near N
    assert choose_path(8, 0.95, "compact") == "union"      # forced
    assert choose_path(1, 1.0, "compact") == "masked"      # keep ratio 1.0: nothing to skip
    assert choose_path(1, 0.3, "masked") == "masked"


def test_keep_ratio_one_multiplies_by_no_mask(tiny):
    """After the prefill (masks form inside it, on the masked path), a keep ratio of 1.0 neither
    multiplies by masks nor gathers weights: the decode forwards add no mask multiplies."""
    prompt, n = prompts(1)[0], 7
    full = run(tiny, static(1.0, "auto"), [prompt])[0].telemetry
    half = run(tiny, static(0.5, "masked"), [prompt])[0]
    assert full.compact_forwards == 0 and full.ffn_flops_executed == full.ffn_flops_dense
    formed = 4 * N + N * N.bit_length()
    assert full.dart_overhead_flops == 3 * n * L * N + L * formed + n * L * N
    decode = len(half.token_ids) - 1                  # at keep 0.5 each decode forward multiplies L*N
    assert half.telemetry.dart_overhead_flops == full.dart_overhead_flops + decode * L * N


def test_flop_and_byte_accounting_by_hand(tiny):
    prompt = prompts(1)[0]                                        # 7 tokens
    result = run(tiny, static(0.5, "compact"), [prompt])[0]
    t, k, n, decode = result.telemetry, 18, len(prompt), len(result.token_ids) - 1   # k = floor(0.5 * 37)
    per_neuron = 6 * D                                            # gate, up, down: 2 FLOPs per multiply-add
    assert t.ffn_flops_dense == per_neuron * L * N * (n + decode)
    assert t.ffn_flops_kept == per_neuron * L * k * (n + decode)
    assert t.ffn_flops_executed == per_neuron * L * (N * n + k * decode)
    neuron_bytes = 3 * D * 4                                      # float32 rows of gate/up, column of down
    assert t.ffn_bytes_dense == neuron_bytes * L * N * (1 + decode)
    assert t.ffn_bytes_executed == neuron_bytes * L * (N + k * decode)
    # overhead: prefill scores (3 per element), top-k of 3 layers, masked prefill multiply; nothing later
    formed = 4 * N + N * N.bit_length()
    assert t.dart_overhead_flops == 3 * n * L * N + L * formed + n * L * N


def test_overhead_flops_by_hand():
    shape = ModelShape(2, 10, 4)
    monitor = ForwardPhase(masked=True, monitor=True)
    assert overhead_flops(monitor, 1, shape, 0, 0, False, 4) == 2 * 4 + (6 * 4) // 5
    calibrate = ForwardPhase(calibrate=True, collect_signal=True)
    assert overhead_flops(calibrate, 5, shape, 20, 0, True, 4) == 5 * 20 + 3 * 5 * 20 + 10 * 5 * 2 * 4 + 2 * 5 * 4 + 24


def test_batch_bytes_are_shared_among_the_rows(tiny):
    results = run(tiny, static(0.5, "masked"), prompts(2))
    forwards = len(results[0].token_ids)
    assert results[0].telemetry.ffn_bytes_dense == 3 * D * 4 * L * N * forwards // 2


def test_gather_cost_is_measured_once_per_batch_size_unless_given(tiny, tmp_path):
    from dart.engine import DartEngine

    engine = DartEngine(*tiny, DartConfig(method="static", budget="uniform", keep_ratio=0.5), cache_dir=str(tmp_path))
    try:
        gather = engine.gathers
        cost = gather.gather_cost(2)
        assert cost > 0 and gather.gather_cost(2) == cost and set(gather.measured_costs) == {2}
        assert gather.copied_bytes() > 0                          # the transposed W_down of a CPU gather
    finally:
        engine.close()
    assert engine.gathers.copied_bytes() == 0                  # close frees the engine's weight copies
    again = DartEngine(*tiny, DartConfig(method="static", budget="uniform", keep_ratio=0.5), cache_dir=str(tmp_path))
    try:
        assert again.gathers.gather_cost(2) == cost and again.gathers.copied_bytes() == 0   # read from the cache
    finally:
        again.close()
    fixed = DartEngine(*tiny, static(0.5, "auto"))
    try:
        assert fixed.gathers.gather_cost(4) == GATHER_COST_IN_FORWARDS and not fixed.gathers.measured_costs
    finally:
        fixed.close()


def test_a_gather_that_never_pays_is_never_waited_out():
    assert forwards_to_amortize(0.5, float("inf")) > 10**9
    assert forwards_to_amortize(0.5, 3.0) == 3


def test_rowwise_prompt_copies_are_capped_by_a_memory_budget(tiny):
    from dart.config import PrefillConfig
    from dart.engine import DartEngine

    cfg = DartConfig(method="static", budget="uniform", keep_ratio=0.5, mask_step=1, gather_cost=GATHER_COST_IN_FORWARDS,
                     prefill=PrefillConfig(mode="blockwise", first_block_tokens=4, block_tokens=16))
    rows = [[5 + (i * 7 + b) % 200 for i in range(40)] for b in range(6)]   # 6 rows: 3 FFN copies at keep 0.5
    engine = DartEngine(*tiny, cfg)
    try:
        states = [engine.new_state() for _ in rows]
        engine.prefill(rows, states)
        assert all(engine.telemetry(s, 40, 0, 0, 0).rowwise_forwards == 0 for s in states)
    finally:
        engine.close()
    engine = DartEngine(*tiny, cfg)
    try:
        states = [engine.new_state() for _ in rows[:2]]                  # 1 copy: within the budget
        engine.prefill(rows[:2], states)
        assert all(engine.telemetry(s, 40, 0, 0, 0).rowwise_forwards > 0 for s in states)
    finally:
        engine.close()


def test_observed_gathers_are_recorded_and_leave_the_cost_as_measured():
    """Path choices must not depend on timing during a run: observations are kept (the last 8), not used."""
    from dart.gather_cost import GatherCost, MeasuredCost

    cost = GatherCost(None, lambda rows: MeasuredCost(forwards=6.0 + rows, half_layer_seconds=0.001))
    assert cost.forwards(2) == 8.0
    cost.observe(neurons=3 * 50, width=100, seconds=0.009)         # predicted 3 layers x 0.001 s: 3x slower
    assert cost.ratios == [pytest.approx(3.0)] and cost.forwards(2) == 8.0 and cost.forwards(4) == 10.0
    for _ in range(8):
        cost.observe(neurons=2 * 100, width=100, seconds=0.002)    # 4 half-layers predicted: 0.5x
    assert cost.ratios == [pytest.approx(0.5)] * 8 and cost.forwards(2) == 8.0
    fixed = GatherCost(12.0, lambda rows: MeasuredCost(1.0, 1.0))
    fixed.observe(neurons=100, width=100, seconds=5.0)
    assert fixed.forwards(4) == 12.0 and not fixed.ratios and not fixed.measured


def test_decode_gathers_on_a_cpu_are_timed(tiny, tmp_path):
    from dart.engine import DartEngine

    cfg = DartConfig(method="static", budget="uniform", keep_ratio=0.5, mask_step=0, ffn_path="compact")
    engine = DartEngine(*tiny, cfg, cache_dir=str(tmp_path))
    try:
        engine.gathers.gather_cost(1)                               # measured before the first gather
        engine.generate(prompts(2), GenerationConfig(max_new_tokens=4, stop_on_eos=False))
        assert engine.gathers.decode_gathers >= 1
        assert len(engine.gathers.costs.ratios) == engine.gathers.decode_gathers
        assert all(ratio > 0 for ratio in engine.gathers.costs.ratios)
    finally:
        engine.close()


@pytest.mark.parametrize("neuron,compact_blocks", [(1.0, 0), (0.0, 5)])
def test_a_prompt_blocks_path_follows_measured_costs(tiny, monkeypatch, caplog, neuron, compact_blocks):
    """A block's FFN runs gathered only where the gather and the gathered matmuls cost less than masked;
    where pruned blocks run masked, the engine says once that block-wise prefill saves nothing there."""
    import dart.gather
    from dart.gather_cost import BlockCosts

    costs = BlockCosts(token=N * 1e-6, token_neuron=1e-6, neuron=neuron)
    monkeypatch.setattr(dart.gather, "cached_block_costs", lambda *args: costs)
    monkeypatch.setattr(dart.gather, "ADVICE_MIN_TOKENS", 8)      # the tiny model's blocks are short

    cfg = DartConfig(method="static", budget="uniform", keep_ratio=0.5, mask_step=1,
                     prefill={"mode": "blockwise", "block_tokens": 8})
    engine = DartEngine(*tiny, cfg)
    try:
        with caplog.at_level("WARNING", logger="dart.gather"):
            for _ in range(2):
                _, batch = engine.prefill([prompts(4)[3] + prompts(4)[1]])   # 44 tokens: a calibrating block, then 5
                assert batch.states[0].ledger.compact_forwards == compact_blocks
        advice = [r for r in caplog.records if "dart.prefill.mode: dense" in r.getMessage()]
        assert len(advice) == (1 if compact_blocks == 0 else 0)
    finally:
        engine.close()


def test_short_prompt_blocks_that_run_masked_say_nothing(tiny, monkeypatch, caplog):
    """Blocks shorter than a measured block may run masked where long ones gather: no advice for them."""
    import dart.gather
    from dart.gather_cost import BlockCosts

    monkeypatch.setattr(dart.gather, "cached_block_costs", lambda *args: BlockCosts(N * 1e-6, 1e-6, 1.0))
    cfg = DartConfig(method="static", budget="uniform", keep_ratio=0.5, mask_step=1,
                     prefill={"mode": "blockwise", "block_tokens": 8})
    engine = DartEngine(*tiny, cfg)
    try:
        with caplog.at_level("WARNING", logger="dart.gather"):
            _, batch = engine.prefill([prompts(4)[3] + prompts(4)[1]])
        assert batch.states[0].ledger.compact_forwards == 0
        assert not [r for r in caplog.records if "dart.prefill.mode: dense" in r.getMessage()]
    finally:
        engine.close()


def test_block_costs_are_measured_once_per_machine_and_cached(tiny, tmp_path):
    from dart.gather_cost import BlockCosts

    cfg = DartConfig(method="static", budget="uniform", keep_ratio=0.5, mask_step=1)
    engine = DartEngine(*tiny, cfg, cache_dir=str(tmp_path))
    try:
        costs = engine.gathers.block_costs()
        assert all(0 < value < 1 for value in (costs.token, costs.token_neuron)) and costs.neuron > 0
    finally:
        engine.close()
    again = DartEngine(*tiny, cfg, cache_dir=str(tmp_path))
    try:
        assert again.gathers.block_costs() == costs                       # read back, not measured again
        assert isinstance(costs, BlockCosts)
    finally:
        again.close()

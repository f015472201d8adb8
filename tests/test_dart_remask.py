"""Re-masking policies after a drift event: what each one keeps, drops and when masks re-form."""
import pytest
import torch

from dart.config import DartConfig, DriftConfig, GenerationConfig
from dart.engine import DartEngine
from dart.patch import DartMLP
from dart.accounting import overhead_flops
from dart.phase import DENSE
from dart.state import SequenceState

GEN = GenerationConfig(max_new_tokens=40, stop_on_eos=False)
# kappa = delta = 0 puts the threshold at the baseline mean, so drift fires often on a random model
TOUCHY = dict(window=3, kappa=0.0, delta=0.0)


def generate(tiny, cfg, prompt_len=30):
    prompt = torch.randint(6, 250, (prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    engine = DartEngine(*tiny, cfg)
    try:
        return engine.generate([prompt], GEN, trace=True)[0]
    finally:
        engine.close()


def formation_forwards(result):
    return sorted({m["forward"] for m in result.trace.mask_formations})


def test_reset_policy_recalibrates_densely_under_auto(tiny):
    result = generate(tiny, DartConfig(budget="auto", drift=DriftConfig(policy="reset", **TOUCHY)))
    t = result.telemetry
    assert t.drift_events >= 1
    # each new epoch: forward p+1 dense (auto needs one complete forward), masks from p+2
    assert formation_forwards(result) == [1] + [p + 2 for p in t.drift_positions if p + 2 < 40]
    for p in t.drift_positions:
        if p + 1 < 40:
            assert t.sparsity_per_token[p + 1] == 0.0


def test_recalibration_tokens_add_dense_forwards(tiny):
    cfg = DartConfig(budget="uniform", mask_step=0,
                     drift=DriftConfig(policy="reset", recalibration_tokens=4, **TOUCHY))
    result = generate(tiny, cfg)
    first = result.telemetry.drift_positions[0]
    assert result.telemetry.sparsity_per_token[first + 1:first + 5] == [0.0] * 4
    assert formation_forwards(result)[:2] == [0, first + 5]


def test_carry_is_the_default_policy():
    assert DartConfig().drift.policy == "carry"


def test_carry_keeps_budgets_and_reselects_without_a_dense_forward(tiny):
    result = generate(tiny, DartConfig(budget="auto", drift=DriftConfig(policy="carry", **TOUCHY)))
    t = result.telemetry
    assert t.drift_events >= 1
    assert t.sparsity_per_token.count(0.0) == 1                      # only the prefill calibrates
    assert formation_forwards(result) == [1] + [p + 1 for p in t.drift_positions if p + 1 < 40]
    counts = {}
    for m in result.trace.mask_formations:
        counts.setdefault(m["forward"], []).append(len(m["kept"]))
    assert len({tuple(c) for c in counts.values()}) == 1               # the auto budget of epoch 0, kept


def fire_drift(state, hidden):
    """Drive one sequence's monitor to a drift event with a hand-made signal (window 2): the forward
    after the prefill sees two tokens opposite to the baseline."""
    state.begin_forward(2)                                                 # monitored
    state.observe_signal(-torch.eye(hidden)[[0, 0]])                       # window cosine -1 < tau
    state.end_forward(2)


def test_carry_mixes_per_token_statistics_across_epochs(tiny):
    drift = DriftConfig(policy="carry", carry_weight=3.0, window=2, kappa=0.0, delta=0.0)
    engine = DartEngine(*tiny, DartConfig(budget="uniform", keep_ratio=0.5, mask_step=0, drift=drift))
    try:
        state = engine.new_state()
        width, hidden = engine.shape.width, engine.shape.hidden
        old = torch.arange(width, dtype=torch.float32).repeat(4, 1)        # prompt favours high ids
        state.begin_forward(4)                                             # prefill: masks form inside it
        state.observe_activations(0, old)
        for layer in range(engine.shape.num_layers):
            state.form_layer(layer)
        state.observe_signal(torch.eye(hidden)[[0, 0, 0, 1]])              # two baseline windows: tau defined
        state.end_forward(4)
        fire_drift(state, hidden)
        assert state.drift_positions == [1]
        assert state.epoch == 1 and state.kept is None
        assert torch.allclose(state.carried[0], old.square().mean(0))     # mean square per token
        assert torch.equal(state.stat, torch.zeros_like(state.stat))
        new = torch.zeros(1, width)
        new[0, :5] = 3 * width                                             # one token favours ids 0-4
        state.begin_forward(1)                                             # mask_step 0: forms in this forward
        state.observe_activations(0, new)
        kept = state.form_layer(0).tolist()
    finally:
        engine.close()
    # old mean square ~ i^2, new token 9*N^2 on ids 0-4, mixed 1:3 -> ids 0-4 still beat every other id
    mixed = (new[0].square() + 3 * old.square().mean(0)) / 4
    expected = torch.sort(mixed.sqrt() * (engine.proxies.pmax[0] + engine.proxies.pmean[0]), descending=True,
                          stable=True).indices[:width // 2].sort().values.tolist()
    assert kept == expected
    assert set(range(5)) <= set(kept)


def test_baseline_tokens_keep_monitoring_after_a_single_token_epoch(tiny):
    plain = generate(tiny, DartConfig(budget="uniform", mask_step=0, drift=DriftConfig(policy="reset", **TOUCHY)))
    assert plain.telemetry.drift_events >= 1
    assert plain.telemetry.epoch_thresholds[1] is None          # one token: no spread, never fires again
    waited = generate(tiny, DartConfig(budget="uniform", mask_step=0,
                                       drift=DriftConfig(policy="reset", baseline_tokens=6, **TOUCHY)))
    assert waited.telemetry.epoch_thresholds[1] is not None
    assert waited.telemetry.drift_events > 1


def test_more_pressure_fires_less(tiny):
    once = generate(tiny, DartConfig(budget="uniform", drift=DriftConfig(pressure=1, baseline_tokens=6, **TOUCHY)))
    twice = generate(tiny, DartConfig(budget="uniform", drift=DriftConfig(pressure=3, baseline_tokens=6, **TOUCHY)))
    assert twice.telemetry.drift_events < once.telemetry.drift_events


def test_signal_from_more_layers(tiny):
    one = generate(tiny, DartConfig(budget="uniform", drift=DriftConfig(**TOUCHY)))
    two = generate(tiny, DartConfig(budget="uniform", drift=DriftConfig(signal_layers=2, **TOUCHY)))
    assert one.telemetry.drift_cosines != two.telemetry.drift_cosines
    with pytest.raises(ValueError, match="signal_layers"):
        DartEngine(*tiny, DartConfig(drift=DriftConfig(signal_layers=9)))
    assert not any(isinstance(layer.mlp, DartMLP) for layer in tiny[0].model.layers)   # refused before patching
    assert generate(tiny, DartConfig(budget="uniform", drift=DriftConfig(**TOUCHY))).telemetry.drift_events >= 1
    first = DartEngine(*tiny, DartConfig())
    try:
        with pytest.raises(ValueError, match="already patched"):
            DartEngine(*tiny, DartConfig())
    finally:
        first.close()


def test_replay_runs_the_last_tokens_ffn_inputs_through_every_neuron_at_a_drift_event(tiny, monkeypatch):
    model, _ = tiny
    replay = 3
    cfg = DartConfig(budget="uniform", drift=DriftConfig(replay_tokens=replay, **TOUCHY))
    inputs = []                                          # layer 1's FFN input of each forward (batch 1)
    norm = model.model.layers[1].post_attention_layernorm
    hook = norm.register_forward_hook(lambda _m, _args, out: inputs.append(out[0].clone()))
    observed = []                                        # (forward, rows) of layer 1's statistics updates
    original = SequenceState.observe_activations

    def spy(self, layer, act):
        if layer == 1:
            observed.append((self.forward, act.clone()))
        original(self, layer, act)

    monkeypatch.setattr(SequenceState, "observe_activations", spy)
    try:
        result = generate(tiny, cfg)
    finally:
        hook.remove()
    drift = result.telemetry.drift_positions[0]
    mlp = model.model.layers[1].mlp                                     # unpatched again
    at_remask = [act for forward, act in observed if forward == drift + 1]
    assert [a.shape[0] for a in at_remask] == [replay, 1]           # the replayed tokens, then the new one
    recent = torch.cat(inputs[:drift + 1])[-replay:]                  # inputs up to the drift token's forward
    with torch.inference_mode():
        expected = (mlp.act_fn(mlp.gate_proj(recent)) * mlp.up_proj(recent)).float()
    assert torch.allclose(at_remask[0], expected, atol=1e-5)
    assert [f for f, _ in observed].count(drift + 2) == 0             # a replay joins one forward only


def test_replay_keeps_the_last_tokens_only_and_costs_its_overhead(tiny):
    plain = DartConfig(budget="uniform", drift=DriftConfig(**TOUCHY))
    replayed = DartConfig(budget="uniform", drift=DriftConfig(replay_tokens=4, **TOUCHY))
    engine = DartEngine(*tiny, replayed)
    try:
        state = engine.new_state()
        hidden = engine.shape.hidden
        state.remember_inputs(0, torch.arange(7 * hidden, dtype=torch.float32).view(7, hidden))
        state.remember_inputs(0, torch.full((1, hidden), -1.0))
        assert state.recent_inputs[0][:, 0].tolist() == [4 * hidden, 5 * hidden, 6 * hidden, -1.0]
    finally:
        engine.close()
    shape = engine.shape
    extra = overhead_flops(DENSE, 1, shape, 0, 0, False, shape.hidden, replayed=4) - \
        overhead_flops(DENSE, 1, shape, 0, 0, False, shape.hidden)
    assert extra == 4 * shape.num_layers * shape.width * (4 * shape.hidden + 3)
    assert generate(tiny, plain).telemetry.dart_state_bytes < generate(tiny, replayed).telemetry.dart_state_bytes

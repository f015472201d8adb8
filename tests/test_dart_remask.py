"""Re-masking policies after a drift event: what each one keeps, drops and when masks re-form."""
import pytest
import torch

from dart.config import DartConfig, DriftConfig, GenerationConfig
from dart.engine import DartEngine
from dart.loading import ModelConfig, load_model

GEN = GenerationConfig(max_new_tokens=40, stop_on_eos=False)
# kappa = delta = 0 puts the threshold at the baseline mean, so drift fires often on a random model
TOUCHY = dict(window=3, kappa=0.0, delta=0.0)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(ModelConfig(source=str(tiny_model_dir), device="cpu", dtype="float32"))


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
    result = generate(tiny, DartConfig(budget="auto", drift=DriftConfig(**TOUCHY)))
    t = result.telemetry
    assert t.drift_events >= 1
    # each new epoch: forward p+1 dense (auto needs one complete forward), masks from p+2
    assert formation_forwards(result) == [1] + [p + 2 for p in t.drift_positions if p + 2 < 40]
    for p in t.drift_positions:
        if p + 1 < 40:
            assert t.sparsity_per_token[p + 1] == 0.0


def test_recalibration_tokens_add_dense_forwards(tiny):
    cfg = DartConfig(budget="uniform", mask_step=0, drift=DriftConfig(recalibration_tokens=4, **TOUCHY))
    result = generate(tiny, cfg)
    first = result.telemetry.drift_positions[0]
    assert result.telemetry.sparsity_per_token[first + 1:first + 5] == [0.0] * 4
    assert formation_forwards(result)[:2] == [0, first + 5]


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


def test_carried_scores_decay_as_specified(tiny):
    engine = DartEngine(*tiny, DartConfig(budget="uniform", drift=DriftConfig(policy="carry", carry_decay=0.25)))
    try:
        state = engine.new_state()
        state.begin_forward(4)
        state.observe_activations(0, torch.ones(4, engine.shape.width) * 2)
        before = state.stat.clone()
        state._drift_fired = True                   # as the monitor sets it
        state.end_forward(4, compact=False)
    finally:
        engine.close()
    assert torch.equal(state.stat, before * 0.25)
    assert state.epoch == 1 and state.kept is None


def test_baseline_tokens_keep_monitoring_after_a_single_token_epoch(tiny):
    plain = generate(tiny, DartConfig(budget="uniform", mask_step=0, drift=DriftConfig(**TOUCHY)))
    assert plain.telemetry.drift_events >= 1
    assert plain.telemetry.epoch_thresholds[1] is None          # one token: no spread, never fires again
    waited = generate(tiny, DartConfig(budget="uniform", mask_step=0, drift=DriftConfig(baseline_tokens=6, **TOUCHY)))
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

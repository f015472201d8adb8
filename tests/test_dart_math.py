"""The DART math as pure functions, on hand-computed cases."""
import math

import pytest
import torch

from dart import budget, scores
from dart.config import AutoBudgetConfig, DartConfig, DriftConfig
from dart.drift import DriftMonitor, form_baseline
from dart.proxies import layer_proxies
from dart.signal import SignalAccumulator


def test_uniform_counts_floor_like_the_reference():
    assert budget.uniform_counts(0.5, 3, 37) == [18, 18, 18]
    assert budget.uniform_counts(1.0, 2, 37) == [37, 37]


def test_per_layer_reference_strings():
    assert budget.per_layer_counts("0:0.9,1-2:10", 4, 37) == [33, 10, 10, 37]
    assert budget.per_layer_counts("all:0.3", 3, 40) == [12, 12, 12]
    assert budget.per_layer_counts({1: 0.5}, 3, 40) == [40, 20, 40]


@pytest.mark.parametrize("spec, message", [
    ("0:0.5,7:0.5", "layer 7"),
    ("0;0.5", "not 'LAYER:VALUE'"),
    ("3-1:0.5", "empty"),
])
def test_per_layer_errors_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        budget.per_layer_counts(spec, 4, 37)


def test_depth_weights_ramp():
    d = budget.depth_weights(3, AutoBudgetConfig())
    assert d.tolist() == pytest.approx([0.25, 1.0, 0.35])


def test_auto_budget_hand_computed():
    # S = [0.5, 0.2, 0.8] -> R = [0.5, 1, 0]; D = [0.25, 1, 0.35]; P = [0.125, 1, 0]; B = 1.5
    # p~ = [0.167, 1.333, 0] -> clip [0.167, 0.9, 0.1]; delta 1/3 goes to layer 0 (P-weighted) -> 0.5
    cos = torch.tensor([0.5, 0.8, 0.2])
    ratio = torch.ones(3)
    p = budget.auto_sparsities(cos, ratio, 0.5, AutoBudgetConfig())
    assert p.tolist() == pytest.approx([0.5, 0.9, 0.1], abs=1e-5)
    assert budget.auto_counts(cos, ratio, 0.5, 100, AutoBudgetConfig()) == [50, 10, 90]


def test_auto_budget_meets_target_when_feasible():
    torch.manual_seed(0)
    cos, ratio = torch.rand(30), torch.rand(30) * 3
    p = budget.auto_sparsities(cos, ratio, 0.5, AutoBudgetConfig())
    assert p.mean().item() == pytest.approx(0.5, abs=1e-5)
    assert p.min() >= 0.1 - 1e-9 and p.max() <= 0.9 + 1e-9


def test_rankings():
    m = torch.tensor([1.0, 2.0])
    pmax, pmean = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0])
    assert scores.rank_scores(m, "max", pmax, pmean).tolist() == [3, 2]
    assert scores.rank_scores(m, "mean", pmax, pmean).tolist() == [1, 2]
    assert scores.rank_scores(m, "combined", pmax, pmean).tolist() == [4, 4]
    assert scores.rank_scores(m, "product", pmax, pmean).tolist() == [3, 4]
    for unweighted in ("magnitude", "median"):           # magnitude ranks by m itself, with no proxies
        with pytest.raises(ValueError, match="not proxy-weighted"):
            scores.rank_scores(m, unweighted, pmax, pmean)


def test_topk_breaks_ties_by_lower_index_and_mean_threshold():
    s = torch.tensor([1.0, 3.0, 3.0, 3.0, 0.0])
    assert scores.select(s, 2, "topk").tolist() == [1, 2]
    assert scores.select(s, 3, "mean_threshold").tolist() == [1, 2, 3]


def test_statistics_of_kept_neurons_alone_equal_those_of_all_neurons_with_zeros():
    act = torch.tensor([[3.0, -4.0, 0.5], [0.0, 2.0, -1.0]])          # neurons 1, 3 and 4 of 6
    ids, prior = torch.tensor([1, 3, 4]), torch.arange(6, dtype=torch.float32)
    full = scores.scattered(act, ids, 6)
    assert full[:, [0, 2, 5]].abs().sum() == 0 and torch.equal(full[:, ids], act)
    assert torch.allclose(scores.l2_update(prior, act, ids), scores.l2_update(prior, full))
    assert torch.allclose(scores.griffin_update(prior, act, ids), scores.griffin_update(prior, full))


def test_half_precision_squares_summed_in_chunks_equal_the_float32_sums():
    gen = torch.Generator().manual_seed(7)
    act = torch.randn(3 * scores.SQUARE_CHUNK_TOKENS + 5, 40, generator=gen).to(torch.bfloat16)
    ids = torch.arange(0, 80, 2)
    prior = torch.rand(80, generator=gen)
    exact = prior.index_add(0, ids, act.double().square().sum(0).float())
    assert torch.allclose(scores.l2_update(prior, act, ids), exact, rtol=1e-5)
    assert torch.allclose(scores.l2_update(prior[:40], act), prior[:40] + act.double().square().sum(0).float(), rtol=1e-5)


def test_l2_ema_griffin_statistics():
    act = torch.tensor([[3.0, -4.0], [0.0, 2.0]])
    assert scores.magnitude(scores.l2_update(torch.zeros(2), act), None).tolist() == pytest.approx([3, math.sqrt(20)])
    assert scores.griffin_update(torch.zeros(2), act).tolist() == pytest.approx([0.36, 1.64])
    block = torch.tensor([[1.0], [2.0], [-4.0]])          # weights 1/4, 1/2, 1 over 1.75
    first = scores.ema_first_block(block, 0.5)
    assert first.tolist() == pytest.approx([3.0])
    assert scores.ema_update(first, torch.tensor([[5.0]]), 0.5).tolist() == pytest.approx([4.0])


def test_carried_statistic_mixes_per_token_means():
    new, old_mean = torch.tensor([4.0, 0.0]), torch.tensor([1.0, 3.0])     # 2 new tokens' sum of squares
    # L2: new sum + w * T * old mean square -> proportional to (new mean + w * old mean)
    assert scores.carried_statistic(new, 2, old_mean, 0.5, None).tolist() == [5.0, 3.0]
    assert scores.carried_statistic(new, 2, old_mean, 1.0, 0.9).tolist() == [2.5, 1.5]   # EMA: plain mix


def test_proxies_match_brute_force_when_chunked():
    torch.manual_seed(0)
    down, embed = torch.randn(6, 5), torch.randn(23, 6)        # d=6, N=5, V=23
    c = (down.T @ embed.T).abs()
    pmax, pmean = layer_proxies(down, embed, chunk=4)
    assert torch.allclose(pmax, c.max(dim=1).values)
    assert torch.allclose(pmean, c.mean(dim=1), rtol=1e-6)


def test_proxies_of_parameters_keep_no_autograd_graph():
    # a graph would hold every chunk's N x V product: 18 GB for SmolLM2's 30 layers
    down, embed = torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(23, 6))
    pmax, pmean = layer_proxies(down, embed, chunk=4)
    assert pmax.grad_fn is None and pmean.grad_fn is None
    assert not pmax.requires_grad and not pmean.requires_grad


def test_signal_windows_span_forwards_and_drop_remainder():
    acc = SignalAccumulator(hidden=1, window=2, device="cpu")
    acc.add(torch.tensor([[1.0], [3.0], [5.0]]))
    acc.add(torch.tensor([[7.0]]))
    acc.add(torch.tensor([[100.0]]))
    mu, windows = acc.means()
    assert mu.tolist() == pytest.approx([23.2])
    assert windows.flatten().tolist() == [2.0, 6.0]


def test_fewer_tokens_than_a_window_make_one_window_and_no_threshold():
    acc = SignalAccumulator(hidden=2, window=5, device="cpu")
    acc.add(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    baseline = form_baseline(*acc.means(), DriftConfig())
    assert baseline.cosines == pytest.approx([1.0]) and baseline.tau is None
    monitor = DriftMonitor(baseline, DriftConfig(window=1))
    assert monitor.observe(torch.tensor([-1.0, 0.0])) == (pytest.approx(-0.7071, abs=1e-4), False)


def test_threshold_and_pressure():
    cfg = DriftConfig(window=1, kappa=0.1, delta=0.1, pressure=2)
    windows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    baseline = form_baseline(windows.mean(0), windows, cfg)
    cos = torch.tensor(baseline.cosines)
    expected_tau = cos.mean().item() - max(0.1 * cos.std().item(), 0.1)
    assert baseline.tau == pytest.approx(expected_tau)
    monitor = DriftMonitor(baseline, cfg)
    far = torch.tensor([1.0, -1.0])
    assert monitor.observe(far)[1] is False                 # pressure 1 of 2
    assert monitor.observe(torch.tensor([1.0, 1.0]))[1] is False   # back to 0
    monitor.observe(far)
    assert monitor.observe(far)[1] is True


@pytest.mark.parametrize("field, value, message", [
    ("keep_ratio", 0.0, "keep_ratio"), ("keep_ratio", 1.5, "keep_ratio"), ("method", "magic", "method"),
    ("ranking", "median", "ranking"), ("decay", 1.0, "decay"), ("mask_step", -1, "mask_step"),
    ("unknown_knob", 1, "unknown_knob"),
])
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        DartConfig(**{field: value})


def test_per_layer_budget_needs_its_spec():
    with pytest.raises(ValueError, match="per_layer"):
        DartConfig(budget="per_layer")
    with pytest.raises(ValueError, match="not 'LAYER:VALUE'"):
        DartConfig(budget="per_layer", per_layer="zero:0.5")


def test_batched_selection_of_every_layer_equals_each_layers_own():
    generator = torch.Generator().manual_seed(3)
    ranked = torch.randint(0, 5, (6, 40), generator=generator).float()      # many ties
    ranked[2, 5] = float("nan")                                          # a sort ranks NaN above all
    for keeps in ([1, 7, 20, 39, 40, 13], [17] * 6):
        batched = scores.select_layers(ranked, keeps, "topk")
        assert [k.tolist() for k in batched] == [scores.select(r, k, "topk").tolist() for r, k in zip(ranked, keeps)]
    assert [k.tolist() for k in scores.select_layers(ranked, keeps, "mean_threshold")] == \
        [scores.select(r, 0, "mean_threshold").tolist() for r in ranked]


def test_l2_statistics_square_in_float32_whatever_the_activations_dtype():
    act = torch.tensor([[300.0, -0.01], [2.0, 4.0]], dtype=torch.bfloat16)
    expected = act.float().square().sum(0)
    assert torch.equal(scores.l2_update(torch.zeros(2), act), expected)
    full32 = act.float()
    scores.l2_update(torch.zeros(2), full32)
    assert torch.equal(full32, act.float())                    # a float32 act is not squared in place


def test_carried_statistic_per_layer_equals_each_layers_own():
    stat, old = torch.rand(3, 5), torch.rand(3, 5)
    rows = scores.carried_statistic(stat, [0, 4, 9], old, 0.7, None)
    assert torch.equal(rows, torch.stack([scores.carried_statistic(stat[i], t, old[i], 0.7, None)
                                          for i, t in enumerate([0, 4, 9])]))


def test_residual_sums_are_the_cosine_and_the_relative_change():
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    y = torch.tensor([[3.0, 4.0], [0.0, 2.0]])             # cos 1 and 0; ||y - x|| / ||x|| 0 and sqrt(5)
    cos, ratio = budget.residual_sums(x, y)
    assert cos.dtype == torch.float64 and cos.item() == pytest.approx(1.0)
    assert ratio.item() == pytest.approx(math.sqrt(5))


def test_residual_sums_of_bfloat16_inputs_are_those_of_their_float32_values():
    x, y = torch.randn(37, 24).bfloat16(), torch.randn(37, 24).bfloat16()
    for half, exact in zip(budget.residual_sums(x, y), budget.residual_sums(x.float(), y.float())):
        assert half.item() == pytest.approx(exact.item(), rel=1e-5)

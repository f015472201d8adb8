"""Continuous batching (dart/scheduler.py): rows join and leave a running batch, and each row's tokens
and telemetry equal those of the row generated alone."""
import pytest
import torch

from dart.config import DartConfig, DriftConfig, GenerationConfig, PrefillConfig
from dart.scheduler import ContinuousBatcher, Request, generate_continuously, prefill_groups
from pipeline_fixtures import close

# what differs between a row alone and in a batch: weight reads are shared among a forward's rows, and
# the FFN path a forward takes (so its executed FLOPs and mask multiplies) depends on its rows
BATCH_DEPENDENT = ("prefill_seconds", "decode_seconds", "ffn_flops_executed", "ffn_bytes_dense",
                   "ffn_bytes_executed", "compact_forwards", "union_forwards", "rowwise_forwards",
                   "dart_overhead_flops")
DRIFT = DriftConfig(window=3, kappa=0.0, delta=0.0)
CONFIGS = {
    "dart_uniform_m0": DartConfig(method="dart", budget="uniform", keep_ratio=0.5, mask_step=0),
    "dart_auto_drift": DartConfig(method="dart", budget="auto", keep_ratio=0.5, ranking="max", drift=DRIFT),
    "dart_reset": DartConfig(method="dart", budget="auto", keep_ratio=0.5, drift=DRIFT.model_copy(update={"policy": "reset"})),
    "static_m2": DartConfig(method="static", budget="uniform", keep_ratio=0.3, mask_step=2),
    "griffin": DartConfig(method="griffin", keep_ratio=0.5),
    "dense": DartConfig(method="dense"),
    "dart_blockwise": DartConfig(method="dart", budget="auto", keep_ratio=0.5, drift=DRIFT,
                                 prefill=PrefillConfig(mode="blockwise", block_tokens=8)),
}
LENGTHS = [3, 27, 9, 14, 40, 21, 5, 33, 17]


def prompts(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 250, (n,), generator=gen).tolist() for n in LENGTHS]


def telemetry(result):
    data = result.telemetry.to_dict()
    for key in BATCH_DEPENDENT:
        data.pop(key)
    return data


def early_stops(engine, prompt, gen, at=None):
    """Make rows finish at different lengths: a token the prompt's row generates (mid-way, or at index
    `at`) becomes EOS."""
    tokens = engine.generate([prompt], gen.model_copy(update={"stop_on_eos": False}))[0].token_ids
    engine.eos_ids = {tokens[len(tokens) // 2 if at is None else at]}


def run_batcher(engine, requests, gen, max_rows):
    """(results by key, whether a row joined a running batch)."""
    batcher = ContinuousBatcher(engine, gen, max_rows)
    batcher.submit(requests)
    out, joined = {}, False
    while not batcher.idle:
        running, waiting = len(batcher.rows), len(batcher.waiting)
        out.update(batcher.step())
        joined |= 0 < running and len(batcher.waiting) < waiting
    return out, joined


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("max_rows", [1, 3])
def test_each_row_equals_it_generated_alone(engine_of, name, max_rows):
    engine = engine_of(CONFIGS[name])
    gen = GenerationConfig(max_new_tokens=12)
    batch = prompts()
    early_stops(engine, batch[LENGTHS.index(max(LENGTHS))], gen, at=2)   # the first admitted row stops early
    alone = [engine.generate([p], gen, seeds=[k])[0] for k, p in enumerate(batch)]
    assert len({len(r.token_ids) for r in alone}) > 1, "rows should finish at different lengths"
    together, joined = run_batcher(engine, [Request(k, p, k) for k, p in enumerate(batch)], gen, max_rows)
    assert joined or max_rows == 1
    for k, result in enumerate(alone):
        assert together[k].token_ids == result.token_ids, k
        assert together[k].finish_reason == result.finish_reason, k
        assert close(telemetry(together[k]), telemetry(result)), f"row {k}"


@pytest.mark.parametrize("name", ["dart_auto_drift", "dart_reset", "static_m2", "dense", "dart_blockwise"])
def test_a_scored_continuation_comes_from_the_rows_prefill_and_leaves_the_row_as_it_was(engine_of, name):
    engine = engine_of(CONFIGS[name])
    gen = GenerationConfig(max_new_tokens=8)
    batch = prompts()
    continuations = [[7 + k, 30, 9 + k][:1 + k % 3] for k in range(len(batch))]
    plain = generate_continuously(engine, [Request(k, p, k) for k, p in enumerate(batch)], gen, 3)
    scored = generate_continuously(engine, [Request(k, p, k, c) for k, (p, c) in enumerate(zip(batch, continuations))],
                                   gen, 3)
    for k, (prompt, continuation) in enumerate(zip(batch, continuations)):
        expected = engine.score_continuations(prompt, [continuation]).logprobs[0]
        assert scored[k].score == pytest.approx(expected, rel=1e-5, abs=1e-5), k
        assert plain[k].score is None
        assert scored[k].token_ids == plain[k].token_ids, k
        assert close(telemetry(scored[k]), telemetry(plain[k])), f"row {k}"


def test_a_continuation_past_the_context_is_not_scored_and_the_row_still_generates(engine_of):
    engine = engine_of(CONFIGS["dart_auto_drift"])
    gen = GenerationConfig(max_new_tokens=3, stop_on_eos=False)
    prompt = prompts()[4]
    out = generate_continuously(engine, [Request("a", prompt, 0, [5] * engine.max_context)], gen, 2)
    assert out["a"].score is None and len(out["a"].token_ids) == 3


def test_sampled_rows_equal_them_alone_with_their_seeds(engine_of):
    engine = engine_of(CONFIGS["dart_auto_drift"])
    gen = GenerationConfig(max_new_tokens=10, temperature=0.8, top_p=0.9, stop_on_eos=False)
    batch = prompts(seed=1)
    alone = [engine.generate([p], gen, seeds=[100 + k])[0].token_ids for k, p in enumerate(batch)]
    together = generate_continuously(engine, [Request(k, p, 100 + k) for k, p in enumerate(batch)], gen, 4)
    assert [together[k].token_ids for k in range(len(batch))] == alone


def test_rows_join_while_others_run_and_the_batch_stays_within_max_rows(engine_of):
    engine = engine_of(CONFIGS["dart_uniform_m0"])
    gen = GenerationConfig(max_new_tokens=12)
    batch = prompts()
    early_stops(engine, batch[LENGTHS.index(max(LENGTHS))], gen, at=2)   # the first admitted row stops early
    batcher = ContinuousBatcher(engine, gen, max_rows=3)
    batcher.submit([Request(k, p, k) for k, p in enumerate(batch)])
    sizes = []
    while not batcher.idle:
        batcher.step()
        sizes.append(len(batcher.rows))
    assert max(sizes) == 3
    assert run_batcher(engine, [Request(k, p, k) for k, p in enumerate(batch)], gen, 3)[1], \
        "a waiting row should have joined a running batch"


def test_a_refused_prompt_comes_back_as_an_error_and_the_others_run(engine_of):
    engine = engine_of(CONFIGS["dart_uniform_m0"])
    gen = GenerationConfig(max_new_tokens=4, stop_on_eos=False)
    batch = prompts()[:3]
    too_long = [5] * engine.max_context
    out = generate_continuously(engine, [Request("a", batch[0], 0), Request("long", too_long, 0),
                                         Request("empty", [], 0), Request("b", batch[1], 0)], gen, 2)
    assert isinstance(out["long"], ValueError) and "context" in str(out["long"])
    assert isinstance(out["empty"], ValueError) and "empty" in str(out["empty"])
    assert out["a"].token_ids == engine.generate([batch[0]], gen)[0].token_ids
    assert len(out["b"].token_ids) == 4


def test_prefill_groups_keep_padding_within_the_bound():
    assert prefill_groups([100, 98, 95, 50, 49, 10], 4, 0.125) == [3, 2, 1]
    assert prefill_groups([100, 100, 100, 100, 100], 2, 0.0) == [2, 2, 1]
    assert prefill_groups([100, 10], 4, 0.125) == [1, 1]
    assert prefill_groups([], 4, 0.125) == []


def test_prefill_groups_hold_at_most_group_tokens_positions():
    assert prefill_groups([100, 100, 100, 100, 100], 4, 0.125, max_tokens=256) == [2, 2, 1]
    assert prefill_groups([300, 300, 60, 60, 60, 60, 60], 4, 0.125, max_tokens=256) == [1, 1, 4, 1]
    assert prefill_groups([100, 100], 4, 0.125, max_tokens=None) == [2]
    with pytest.raises(ValueError, match="max_rows"):
        ContinuousBatcher(None, GenerationConfig(), 0)


def test_prefill_groups_hold_no_prompt_longer_than_the_cap():
    assert prefill_groups([300, 290, 60, 60, 60], 4, 0.125, max_tokens=4096, max_longest=256) == [1, 1, 3]
    assert prefill_groups([256, 250], 4, 0.125, max_tokens=4096, max_longest=256) == [2]


def fake_timings(monkeypatch, grouped_over_alone: dict[int, float]) -> list[list[int]]:
    """best_seconds in dart.group_cost made to report, per prompt length, the group taking this fraction
    of the prompts' time alone. Returns the lengths each measurement measured, in order."""
    from dart import group_cost

    measurements = []
    measure = group_cost.measured_group_cap

    def measured_group_cap(engine):
        measurements.append([])
        return measure(engine)

    def best_seconds(runs, reps):
        runs["grouped"]()            # the real prefills still run, so their prompts are checked
        length = group_cost.MEASURED_LENGTHS[len(measurements[-1])]
        measurements[-1].append(length)
        return {"grouped": grouped_over_alone[length], "alone": 1.0}

    monkeypatch.setattr(group_cost, "best_seconds", best_seconds)
    monkeypatch.setattr(group_cost, "measured_group_cap", measured_group_cap)
    return measurements


INF = float("inf")


@pytest.mark.parametrize("fractions, cap, lengths", [
    ({512: 0.92, 256: 0.78}, (4096, INF), [512]),                # block-wise DART, bf16 on an AMX Xeon
    ({512: 1.08, 256: 0.85}, (4096, 256), [512, 256]),           # dense there
    ({512: 1.05, 256: 1.00}, (256, INF), [512, 256])])           # dense in float32 there: grouping never pays
def test_a_cpus_prefill_group_cap_follows_measured_seconds_and_is_cached(tiny, tmp_path, monkeypatch, fractions,
                                                                         cap, lengths):
    from dart import group_cost
    from dart.engine import DartEngine

    measured = fake_timings(monkeypatch, fractions)
    engine = DartEngine(*tiny, CONFIGS["dart_blockwise"], cache_dir=str(tmp_path))
    try:
        got = group_cost.group_cap(engine)
        longest = cap[1] if cap[1] == INF else min(cap[1], engine.max_context - 1)    # the tiny model's context
        assert (got.tokens, got.longest) == (cap[0], longest) and measured == [lengths]
        assert group_cost.group_cap(engine) == got and measured == [lengths]         # read from the cache
    finally:
        engine.close()
    other = DartEngine(*tiny, CONFIGS["dart_blockwise"].model_copy(update={"keep_ratio": 0.7}), cache_dir=str(tmp_path))
    try:
        assert group_cost.group_cap(other) == got and measured == [lengths]     # the same prompt schedule
    finally:
        other.close()
    other = DartEngine(*tiny, CONFIGS["dense"], cache_dir=str(tmp_path))
    try:
        group_cost.group_cap(other)            # a prompt in one forward: measured on its own
        assert measured == [lengths, lengths]
    finally:
        other.close()


def test_a_batcher_groups_prompts_as_the_measured_cap_allows(tiny, monkeypatch):
    from dart import scheduler
    from dart.engine import DartEngine
    from dart.group_cost import GroupCap

    engine = DartEngine(*tiny, CONFIGS["dart_blockwise"])
    sizes = []
    prefill = engine.prefill
    monkeypatch.setattr(engine, "prefill", lambda group, states: sizes.append(len(group)) or prefill(group, states))
    monkeypatch.setattr(scheduler, "group_cap", lambda _engine: GroupCap(4096, 25))
    gen = GenerationConfig(max_new_tokens=2, stop_on_eos=False)
    try:
        requests = [Request(k, p, k) for k, p in enumerate(prompts()) if len(p) in (40, 33, 21, 17)]
        out = generate_continuously(engine, requests, gen, 4)
        assert sizes == [1, 1, 2]                        # 40 and 33 alone (over 25), 21 and 17 together
        for request in requests:
            assert out[request.key].token_ids == engine.generate([request.prompt], gen)[0].token_ids
    finally:
        engine.close()


def test_a_prefill_group_cap_is_measured_on_the_engine_itself(tiny, tmp_path):
    from dart import group_cost
    from dart.engine import DartEngine

    engine = DartEngine(*tiny, CONFIGS["dart_blockwise"], cache_dir=str(tmp_path))
    try:
        cap = group_cost.group_cap(engine)
        assert cap == group_cost.GroupCap(group_cost.UNGROUPED_TOKENS) or cap.tokens == group_cost.GROUPED_TOKENS
        assert [p.name.split("-")[0] for p in tmp_path.joinpath("kernels").iterdir()].count("group") == 1
    finally:
        engine.close()

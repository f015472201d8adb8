"""The engine's public steps: prefill, decode_step, DecodeBatch.select and teacher_force compose into
generate and the scoring methods, and rows of a batch stay independent of each other."""
import pytest
import torch

from dart.config import DartConfig, DriftConfig, GenerationConfig
from dart.engine import DartEngine

TOKENS = 16
CONFIGS = {
    "dart_auto_drift": DartConfig(method="dart", budget="auto", keep_ratio=0.5,
                                  drift=DriftConfig(window=3, kappa=0.0, delta=0.0, replay_tokens=2)),
    "static_compact": DartConfig(method="static", budget="uniform", keep_ratio=0.4, mask_step=0, ffn_path="compact"),
    "griffin": DartConfig(method="griffin", keep_ratio=0.5),
    "dense": DartConfig(method="dense"),
}
TIMINGS = ("prefill_seconds", "decode_seconds")


@pytest.fixture
def engine_of(tiny):
    engines = []

    def make(cfg):
        engines.append(DartEngine(*tiny, cfg))
        return engines[-1]

    yield make
    for engine in engines:
        engine.close()


def prompts():
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(6, 250, (n,), generator=gen).tolist() for n in (5, 17, 11)]


def telemetry_of(engine, state, prompt, generated, drop=()):
    data = engine.telemetry(state, len(prompt), generated, 0.0, 0.0).to_dict()
    return {k: v for k, v in data.items() if k not in TIMINGS + tuple(drop)}


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


def greedy_loop(engine, batch_prompts, steps, drop_after=None, keep=None):
    """prefill, then `steps` decode steps; after `drop_after` steps only the rows `keep` go on.
    Returns {prompt index: tokens} and {prompt index: state}."""
    logits, batch = engine.prefill(batch_prompts)
    rows = list(range(len(batch_prompts)))
    states = dict(zip(rows, batch.states))
    tokens = logits.argmax(-1)
    out = {r: [int(t)] for r, t in zip(rows, tokens)}
    for step in range(steps):
        if step == drop_after:
            batch.select(keep)
            rows, tokens = [rows[i] for i in keep], tokens[torch.tensor(keep)]
        tokens = engine.decode_step(batch, tokens).argmax(-1)
        for r, t in zip(rows, tokens):
            out[r].append(int(t))
    return out, states


@pytest.mark.parametrize("name", CONFIGS)
def test_generate_equals_a_loop_of_prefill_and_decode_step(engine_of, name):
    engine, batch_prompts = engine_of(CONFIGS[name]), prompts()
    results = engine.generate(batch_prompts, GenerationConfig(max_new_tokens=TOKENS, stop_on_eos=False))
    tokens, states = greedy_loop(engine, batch_prompts, TOKENS - 1)
    for b, (result, prompt) in enumerate(zip(results, batch_prompts)):
        assert result.token_ids == tokens[b]
        expected = {k: v for k, v in result.telemetry.to_dict().items() if k not in TIMINGS}
        assert telemetry_of(engine, states[b], prompt, TOKENS) == expected


@pytest.mark.parametrize("name", ["dart_auto_drift", "static_compact"])
def test_dropping_rows_leaves_the_other_rows_unchanged(engine_of, name):
    engine, batch_prompts = engine_of(CONFIGS[name].model_copy(update={"ffn_path": "masked"})), prompts()
    full, full_states = greedy_loop(engine, batch_prompts, TOKENS - 1)
    dropped, dropped_states = greedy_loop(engine, batch_prompts, TOKENS - 1, drop_after=4, keep=[0, 2])
    assert set(dropped) == {0, 1, 2} and len(dropped[1]) == 5
    # weight bytes of a forward are shared among its rows: fewer rows, more bytes each
    shared = ("ffn_bytes_dense", "ffn_bytes_executed")
    for b in (0, 2):
        assert dropped[b] == full[b]
        kept = telemetry_of(engine, dropped_states[b], batch_prompts[b], TOKENS, shared)
        alongside = telemetry_of(engine, full_states[b], batch_prompts[b], TOKENS, shared)
        assert_close(kept, alongside)          # matmuls of another batch size round apart


def test_forked_rows_share_their_state_and_score_like_the_original(engine_of):
    engine = engine_of(CONFIGS["static_compact"])
    prompt, continuations = prompts()[1], [[7, 8, 9], [10, 11], [12]]
    per_position, _ = engine.continuation_logprobs(prompt, continuations)
    logits, batch = engine.prefill([prompt])
    batch.select([0] * len(continuations))
    assert len(batch) == 3 and len({s.uid for s in batch.states}) == 1
    ids = torch.tensor([[7, 8, 9], [10, 11, 0], [12, 0, 0]])
    forced = torch.log_softmax(engine.teacher_force(batch, ids, ids != 0), dim=-1)    # [C, T, V]
    for i, c in enumerate(continuations):
        expected = torch.cat([torch.log_softmax(logits, -1), forced[i, :len(c) - 1]])
        assert torch.allclose(per_position[i], expected, atol=1e-6)


def test_steps_refuse_mismatched_rows(engine_of):
    engine = engine_of(CONFIGS["dense"])
    with pytest.raises(ValueError, match="one state per prompt"):
        engine.prefill(prompts(), [engine.new_state()])
    with pytest.raises(ValueError, match="at least one prompt"):
        engine.prefill([])
    _, batch = engine.prefill(prompts())
    with pytest.raises(ValueError, match="one token per row"):
        engine.decode_step(batch, torch.tensor([1, 2]))

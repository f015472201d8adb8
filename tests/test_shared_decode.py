"""decode_masks: shared: the rows of a decode forward run on one kept set per layer, the top of their
scaled scores at their mean width; each row's ledger counts that set as applied to it."""
import torch

from dart.compact import GATHER_COST_IN_FORWARDS
from dart.config import DartConfig, GenerationConfig
from dart.engine import DartEngine
from dart.scores import shared_selection
from pipeline.config import dart_settings

GREEDY = GenerationConfig(max_new_tokens=10, stop_on_eos=False)
L, N = 3, 37          # the tiny model's layers and FFN width


def prompts(count, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 250, (n,), generator=gen).tolist() for n in [7, 19, 12, 25][:count]]


def config(decode_masks, path="compact", keep=0.5, gather_cost=GATHER_COST_IN_FORWARDS, method="static"):
    return DartConfig(method=method, budget="uniform", keep_ratio=keep, mask_step=0, ffn_path=path,
                      gather_cost=gather_cost, decode_masks=decode_masks)


def generate(tiny, cfg, batch):
    engine = DartEngine(*tiny, cfg)
    try:
        return engine.generate(batch, GREEDY)
    finally:
        engine.close()


def test_shared_selection_sums_rows_scaled_to_sum_one():
    rows = torch.tensor([[10.0, 2.0, 1.0, 0.0, 2.0],                # scaled: .667 .133 .067 0 .133
                         [0.0, 1.0, 7.0, 6.0, 2.0]])                 # scaled: 0 .063 .438 .375 .125
    assert shared_selection(rows, 2).tolist() == [0, 2]            # each row's top neuron
    assert shared_selection(rows * torch.tensor([[1000.0], [1.0]]), 2).tolist() == [0, 2]   # scale-free
    assert shared_selection(rows, 3).tolist() == [0, 2, 3]         # .375 beats .133 + .125
    assert shared_selection(torch.zeros(2, 5), 2).tolist() == [0, 1]   # rows of zeros: ties to the lower id


def test_shared_decode_runs_every_row_on_the_set_the_rows_share(tiny):
    """The reference: per-row DART whose rows' kept sets are replaced after the prompt by the shared set,
    decoded on the masked path."""
    batch = prompts(3)
    shared = generate(tiny, config("shared"), batch)
    engine = DartEngine(*tiny, config("per_row", path="masked"))
    try:
        logits, rows = engine.prefill(batch)
        states = rows.states
        keep = [round(sum(int(s.kept[layer].numel()) for s in states) / len(states)) for layer in range(L)]
        common = [shared_selection(torch.stack([s.ranked_scores(layer) for s in states]), keep[layer])
                  for layer in range(L)]
        assert any(not torch.equal(common[layer], s.kept[layer]) for s in states for layer in range(L))
        for state in states:
            state.kept, state.mask_version = list(common), state.mask_version + 1
        tokens, outputs = logits.argmax(-1), [[] for _ in batch]
        for _ in range(GREEDY.max_new_tokens):
            for row, token in enumerate(tokens.tolist()):
                outputs[row].append(token)
            tokens = engine.decode_step(rows, tokens).argmax(-1)
    finally:
        engine.close()
    assert [r.token_ids for r in shared] == [out[:GREEDY.max_new_tokens] for out in outputs]
    decode = GREEDY.max_new_tokens - 1
    width = sum(int(k.numel()) for k in common)
    for result in shared:
        assert result.telemetry.compact_forwards == decode and result.telemetry.union_forwards == 0
        assert result.telemetry.sparsity_per_token[1:] == [1 - width / (L * N)] * decode


def test_rows_with_one_kept_set_decode_as_per_row_and_a_row_alone_too(tiny):
    same = [prompts(1)[0]] * 3
    assert [r.token_ids for r in generate(tiny, config("shared"), same)] == \
        [r.token_ids for r in generate(tiny, config("per_row"), same)]
    alone = prompts(2)[1:]
    assert generate(tiny, config("shared"), alone)[0].token_ids == generate(tiny, config("per_row"), alone)[0].token_ids


def test_a_shared_set_gives_the_same_tokens_masked_gathered_or_gathered_late(tiny):
    """Rows waiting for a shared set's gather run masked by that set, not by their own: the tokens and the
    sparsity applied do not depend on the path (or on the measured gather cost behind auto's wait)."""
    batch = prompts(3)
    for method in ("static", "dart"):
        gathered = generate(tiny, config("shared", method=method), batch)
        masked = generate(tiny, config("shared", path="masked", method=method), batch)
        late = generate(tiny, config("shared", path="auto", gather_cost=4.0, method=method), batch)
        for results in (masked, late):
            assert [r.token_ids for r in results] == [r.token_ids for r in gathered]
            for result, reference in zip(results, gathered):
                assert result.telemetry.sparsity_per_token == reference.telemetry.sparsity_per_token
        assert all(r.telemetry.compact_forwards == 0 for r in masked)
        assert all(0 < r.telemetry.compact_forwards < g.telemetry.compact_forwards for r, g in zip(late, gathered))


def test_shared_decode_reads_fewer_ffn_bytes_than_the_union(tiny):
    batch = prompts(4)
    per_row, shared = generate(tiny, config("per_row"), batch), generate(tiny, config("shared"), batch)
    assert all(s.telemetry.ffn_bytes_executed < p.telemetry.ffn_bytes_executed for s, p in zip(shared, per_row))


def test_per_row_decode_masks_leave_run_identities_as_they_were():
    assert "decode_masks" not in dart_settings(DartConfig())
    assert dart_settings(DartConfig(decode_masks="shared"))["decode_masks"] == "shared"

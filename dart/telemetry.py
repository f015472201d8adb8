"""Output records of the engine: per-sequence telemetry (DART_SPEC section 8) and results."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SequenceTelemetry:
    """What one sequence did. Every field is plain data (ints, floats, lists) for Parquet/JSON."""

    method: str
    prompt_tokens: int
    generated_tokens: int
    prefill_blocks: int                                 # forwards the prompt took (1: dense prefill mode)
    mask_step: int                                      # effective mask step of each epoch
    epochs: int                                         # 1 + drift events
    drift_events: int
    drift_positions: list[int]                          # forward of each event (generated-token index when
                                                        # prefill_blocks is 1; blocks come first otherwise)
    drift_cosines: list[float]                          # monitor window cosines, in order
    drift_cosine_positions: list[int]                   # forward where each window closed (as drift_positions)
    epoch_thresholds: list[float | None]                # tau of each epoch (None: not monitored)
    kept_fraction_per_layer: list[float]                # final masks (1.0 = dense)
    sparsity_per_token: list[float]                     # FFN sparsity applied to produce each generated token
    applied_sparsity: float                             # token-weighted mean of sparsity_per_token;
                                                        # scoring: over the scored tokens
    prompt_applied_sparsity: float                      # FFN sparsity applied to the prompt tokens, token-weighted
    ffn_flops_dense: int                                # FFN FLOPs of a dense run of the same tokens (prompt
                                                        # and generated; the FLOP fields count every forward)
    ffn_flops_kept: int                                 # FFN FLOPs on kept neurons only
    ffn_flops_executed: int                             # FFN FLOPs actually computed (masking computes all)
    ffn_bytes_dense: int                                # FFN weight bytes a dense run reads (shared in a batch)
    ffn_bytes_executed: int                             # FFN weight bytes actually read (gathered paths read less)
    dart_overhead_flops: int                            # DART's own FLOPs: scores, masks, drift, mask multiply
    dart_state_bytes: int                               # peak per-sequence DART state
    compact_forwards: int                               # forwards whose FFN ran on gathered weights
    union_forwards: int                                 # of those, on the union of the batch's kept neurons
    rowwise_forwards: int                               # of those, prompt blocks on each row's own gathered weights
    prefill_seconds: float
    decode_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SequenceTrace:
    """Fine-grained record for conformance replays (golden format), kept only when asked."""

    mask_formations: list[dict[str, Any]] = field(default_factory=list)   # {forward, layer, kept}
    kept_per_forward: list[list[int]] = field(default_factory=list)        # [forward][layer] kept count
    drift_windows: list[dict[str, Any]] = field(default_factory=list)      # {forward, cosine, kind}


@dataclass
class GenerationResult:
    token_ids: list[int]
    finish_reason: str                                  # "eos" | "length"
    telemetry: SequenceTelemetry
    trace: SequenceTrace | None = None
    score: float | None = None          # log-prob sum of the request's continuation to score (dart.scheduler)


@dataclass
class ContinuationScores:
    """Log-likelihood of each continuation after one prompt, under the prompt's DART masks."""

    logprobs: list[float]                               # sum of token log-probs per continuation
    token_counts: list[int]
    telemetry: SequenceTelemetry


def sequence_telemetry(state: Any, method: str, mask_step: int, prompt_tokens: int, generated: int,
                       prefill_seconds: float, decode_seconds: float) -> SequenceTelemetry:
    """The telemetry of one sequence from its `dart.state.SequenceState` (not imported: the state imports this
    module), whose ledger counts every forward, prompt blocks first."""
    ledger, shape, final = state.ledger, state.shape, state.kept
    first = state.prompt_forwards - 1                   # the forward that produced the first generated token
    per_token = ledger.sparsity[first:first + generated]
    kept_fraction = [1.0] * shape.num_layers if final is None else [k.numel() / shape.width for k in final]
    return SequenceTelemetry(
        method=method, prompt_tokens=prompt_tokens, generated_tokens=generated,
        prefill_blocks=state.prompt_forwards, mask_step=mask_step, epochs=state.epoch + 1,
        drift_events=len(state.drift_positions), drift_positions=list(state.drift_positions),
        drift_cosines=list(state.drift_cosines), drift_cosine_positions=list(state.drift_cosine_positions),
        epoch_thresholds=list(state.thresholds), kept_fraction_per_layer=kept_fraction,
        sparsity_per_token=per_token, applied_sparsity=sum(per_token) / len(per_token) if per_token else 0.0,
        prompt_applied_sparsity=ledger.prompt_sparsity(state.prompt_forwards),
        ffn_flops_dense=ledger.flops_dense, ffn_flops_kept=ledger.flops_kept,
        ffn_flops_executed=ledger.flops_executed, ffn_bytes_dense=ledger.bytes_dense,
        ffn_bytes_executed=ledger.bytes_executed, dart_overhead_flops=ledger.overhead_flops,
        dart_state_bytes=state.peak_state_bytes, compact_forwards=ledger.compact_forwards,
        union_forwards=ledger.union_forwards, rowwise_forwards=ledger.rowwise_forwards,
        prefill_seconds=prefill_seconds, decode_seconds=decode_seconds)

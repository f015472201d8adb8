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
    mask_step: int                                      # effective mask step of each epoch
    epochs: int                                         # 1 + drift events
    drift_events: int
    drift_positions: list[int]                          # generated-token index of each event's forward
    drift_cosines: list[float]                          # monitor window cosines, in order
    drift_cosine_positions: list[int]                   # generated-token index where each window closed
    epoch_thresholds: list[float | None]                # tau of each epoch (None: not monitored)
    kept_fraction_per_layer: list[float]                # final masks (1.0 = dense)
    sparsity_per_token: list[float]                     # FFN sparsity applied to produce each generated token
    applied_sparsity: float                             # token-weighted mean of sparsity_per_token
    ffn_flops_dense: int                                # FFN FLOPs of a dense run of the same tokens
    ffn_flops_kept: int                                 # FFN FLOPs on kept neurons only
    ffn_flops_executed: int                             # FFN FLOPs actually computed (masking computes all)
    ffn_bytes_dense: int                                # FFN weight bytes a dense run reads (shared in a batch)
    ffn_bytes_executed: int                             # FFN weight bytes actually read (gathered paths read less)
    dart_overhead_flops: int                            # DART's own FLOPs: scores, masks, drift, mask multiply
    dart_state_bytes: int                               # peak per-sequence DART state
    compact_forwards: int                               # forwards whose FFN ran on gathered weights
    union_forwards: int                                 # of those, on the union of the batch's kept neurons
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


@dataclass
class ContinuationScores:
    """Log-likelihood of each continuation after one prompt, under the prompt's DART masks."""

    logprobs: list[float]                               # sum of token log-probs per continuation
    token_counts: list[int]
    telemetry: SequenceTelemetry

"""FLOP and weight-byte accounting of the FFN and of DART's own work (DART_SPEC sections 7-8)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .phase import ForwardPhase


@dataclass(frozen=True)
class ModelShape:
    num_layers: int   # L
    width: int        # N, FFN intermediate size
    hidden: int       # d
    weight_bytes: int = 4   # bytes per FFN weight element (model dtype)


@dataclass(frozen=True)
class FfnExecution:
    """How one forward ran the FFN, as seen by one sequence in it (dart.compact names the paths)."""

    path: str = "masked"                  # masked | compact | union | rowwise | shared
    widths: list[int] | None = None       # neurons computed per layer; None: all N
    mask_elements: int = 0                # mask multiplies per token (masked and union paths)
    sequences: int = 1                    # distinct sequences sharing the forward's weight reads
    reads_alone: bool = False             # rowwise: this sequence's gathered weights are read for it alone
    applied: list[int] | None = None      # per layer, a shared decode set's widths (None: the row's own)


DENSE_FFN = FfnExecution()


def overhead_flops(phase: ForwardPhase, tokens: int, shape: ModelShape, mask_elements: int,
                   formed_layers: int, residual: bool, signal_width: int, replayed: int = 0) -> int:
    """DART's own FLOPs in one forward of one sequence, beside the model's (spec section 7: O(L*N + d)
    per token). Estimates per element: score update 3 (square or |a|, scale, add); auto-budget residual
    statistics 10 per d (two norms, a dot, a difference); drift signal 2 per d (window and baseline
    sums) plus a cosine (6 d) per window; mask formation 4 per neuron (rank) plus N log2 N (top-k);
    the mask multiply 1 per masked element; replayed tokens 4 d per neuron (gate and up) and their
    score update."""
    L, N, d = shape.num_layers, shape.width, shape.hidden
    flops = tokens * mask_elements + formed_layers * (4 * N + N * max(1, N.bit_length()))
    flops += replayed * L * N * (4 * d + 3)
    if phase.calibrate or phase.accumulate:
        flops += 3 * tokens * L * N
    if residual:
        flops += 10 * tokens * L * d
    if phase.collect_signal or phase.monitor:
        flops += 2 * tokens * signal_width + (6 * signal_width * tokens) // 5
    return flops


@dataclass
class ForwardLedger:
    """Per-forward accounting of one sequence: applied sparsity, FFN FLOPs (2 per multiply-add), FFN
    weight bytes read (each forward's reads shared evenly among its sequences) and DART's overhead."""

    sparsity: list[float] = field(default_factory=list)     # per forward, for its last token
    tokens: list[int] = field(default_factory=list)         # per forward, its real tokens
    flops_dense: int = 0
    flops_kept: int = 0
    flops_executed: int = 0
    bytes_dense: int = 0
    bytes_executed: int = 0
    overhead_flops: int = 0
    compact_forwards: int = 0
    union_forwards: int = 0
    rowwise_forwards: int = 0

    def record(self, tokens: int, kept_counts: list[int], shape: ModelShape, execution: FfnExecution,
               overhead: int = 0) -> None:
        dense = len(kept_counts) * shape.width
        # a shared decode set replaces the row's own kept set, gathered or masked
        kept = sum(kept_counts) if execution.applied is None else sum(execution.applied)
        executed = dense if execution.widths is None else sum(execution.widths)
        self.sparsity.append(1.0 - kept / dense)
        self.tokens.append(tokens)
        per_neuron = 6 * shape.hidden * tokens             # gate, up, down: 3 matmuls of d per neuron
        self.flops_dense += per_neuron * dense
        self.flops_kept += per_neuron * kept
        self.flops_executed += per_neuron * executed
        neuron_bytes = 3 * shape.hidden * shape.weight_bytes
        self.bytes_dense += neuron_bytes * dense // execution.sequences
        self.bytes_executed += neuron_bytes * executed // (1 if execution.reads_alone else execution.sequences)
        self.overhead_flops += overhead
        self.compact_forwards += int(execution.path != "masked")
        self.union_forwards += int(execution.path == "union")
        self.rowwise_forwards += int(execution.path == "rowwise")

    def scored_sparsity(self, prompt_forwards: int, lengths: list[int]) -> float:
        """Token-weighted FFN sparsity of the forwards that produced each scored token's log-prob: the
        prompt's last forward for each continuation's first token, the teacher-forced forward after it
        for the rest (lengths: tokens of each continuation)."""
        first, rest = len(lengths), sum(lengths) - len(lengths)
        after = self.sparsity[prompt_forwards] if rest else 0.0
        return (first * self.sparsity[prompt_forwards - 1] + rest * after) / (first + rest)

    def prompt_sparsity(self, forwards: int) -> float:
        """Token-weighted FFN sparsity applied to the tokens of the first `forwards` forwards (the prompt)."""
        tokens = sum(self.tokens[:forwards])
        return sum(s * t for s, t in zip(self.sparsity[:forwards], self.tokens[:forwards])) / tokens if tokens else 0.0

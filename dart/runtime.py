"""One forward of a batch: routes each layer's FFN, residual and drift signal to the rows' states."""
from __future__ import annotations

import torch

from .compact import CompactWeights, compact_block
from .patch import DartMLP
from .phase import ForwardPhase
from .state import SequenceState


class ForwardPass:
    """Rows' phases are fixed when the pass is built; masks formed inside it (mask_step 0) update it."""

    def __init__(self, states: list[SequenceState], phases: list[ForwardPhase], token_mask: torch.Tensor,
                 counts: list[int], masks: torch.Tensor | None, compact: list[CompactWeights] | None = None,
                 row_compact: list[list[CompactWeights] | None] | None = None) -> None:
        # token_mask: [B, T] bool, False at padding; counts: each row's real tokens (host)
        # masks: [B, L, N] in the model dtype (1 keep, 0 prune)
        # compact: per layer, weights every row shares; row_compact: per row (None: no token), per layer
        self.states, self.phases = states, phases
        self.token_mask, self.counts = token_mask, counts
        self.all_valid = all(count == token_mask.shape[1] for count in counts)
        self._positions: list[torch.Tensor] | None = None    # each row's real positions, found once
        self.masks = masks
        self.compact, self.row_compact = compact, row_compact
        self.accumulating = [b for b, p in enumerate(phases) if p.accumulate]
        self.calibrating = [b for b, p in enumerate(phases) if p.calibrate]
        self.forming = [b for b, p in enumerate(phases) if p.form_in_forward]
        # a forward forming masks multiplies a layer's masks in only where one holds a 0 (None: every layer)
        self._drops = dropping_layers(states, phases) if self.forming else None
        self.residual_rows = [b for b in self.calibrating if states[b].needs_residual()]
        self.signal_rows = [b for b, p in enumerate(phases) if p.collect_signal or p.monitor]
        first_rows = {s.uid: b for b, s in reversed(list(enumerate(states)))}    # rows may share a state
        self.remembering = [b for b in first_rows.values() if states[b].remembers_inputs()]
        self._residuals: dict[int, torch.Tensor] = {}
        self._signal_parts: list[torch.Tensor] = []     # attention outputs of the drift signal layers

    def _tokens(self, tensor: torch.Tensor, row: int) -> torch.Tensor:
        """This row's real (non-padding) tokens: [T, *]."""
        return tensor[row] if self.all_valid else tensor[row].index_select(0, self._real_positions()[row])

    def _real_positions(self) -> list[torch.Tensor]:
        """Per row, the positions of its real tokens: one host sync per forward, not one per layer and row."""
        if self._positions is None:
            columns = self.token_mask.nonzero()[:, 1]
            self._positions = list(columns.split(self.counts))
        return self._positions

    def ffn(self, layer: int, mlp: DartMLP, hidden: torch.Tensor) -> torch.Tensor:
        for b in self.remembering:
            self.states[b].remember_inputs(layer, self._tokens(hidden, b))
        if self.row_compact is not None:
            return self._rowwise_ffn(layer, mlp, hidden)
        if self.compact is not None:
            weights = self.compact[layer]
            act, out = compact_block(mlp, hidden, weights)                # [B, T, k], [B, T, d]
            for b in self.accumulating:
                self._accumulate(b, layer, self._tokens(act, b), weights.ids)
            return out
        act = mlp.activations(hidden)                                    # [B, T, N]
        for b in self.calibrating:
            replay = self.states[b].replay_inputs(layer)
            if replay is not None:     # older tokens first: EMA statistics are order-sensitive
                self.states[b].observe_activations(layer, mlp.activations(replay))
            self.states[b].observe_activations(layer, self._tokens(act, b))
        for b in self.forming:
            kept = self.states[b].form_layer(layer)
            self.masks[b, layer].zero_().index_fill_(0, kept, 1)
            self._drops[layer] |= kept.numel() < act.shape[-1]
        if self.masks is not None and (self._drops is None or self._drops[layer]):
            act = act * self.masks[:, layer, None, :]
        for b in self.accumulating:
            self._accumulate(b, layer, self._tokens(act, b), None)
        out = mlp.down_proj(act)                                         # [B, T, d]
        if self.residual_rows:
            residual = self._residuals.pop(layer)
            for b in self.residual_rows:
                self.states[b].observe_residual(layer, self._tokens(residual, b), self._tokens(out, b))
        return out

    def _rowwise_ffn(self, layer: int, mlp: DartMLP, hidden: torch.Tensor) -> torch.Tensor:
        """Each row's real tokens through its own gathered weights; padding and idle rows output 0."""
        out = torch.zeros_like(hidden)                                   # [B, T, d]
        for b, weights in enumerate(self.row_compact):
            if weights is None:
                continue
            act, y = compact_block(mlp, self._tokens(hidden, b)[None], weights[layer])    # [1, T_b, k_b], [1, T_b, d]
            act, y = act[0], y[0]
            if b in self.accumulating:
                self._accumulate(b, layer, act, weights[layer].ids)
            if self.all_valid:
                out[b] = y
            else:
                out[b].index_copy_(0, self._real_positions()[b], y)
        return out

    def _accumulate(self, row: int, layer: int, act: torch.Tensor, ids: torch.Tensor | None) -> None:
        """A masked prompt block: the row's computed activations [T, N] (or [T, k] of `ids`) join its statistics."""
        self.states[row].observe_activations(layer, act, ids)

    def residual(self, layer: int, residual: torch.Tensor) -> None:
        if self.residual_rows:
            self._residuals[layer] = residual

    def attention_output(self, layer: int, output: torch.Tensor) -> None:
        """Attention outputs of the signal layers arrive in order; the last layer's completes the signal."""
        if not self.signal_rows:
            return
        self._signal_parts.append(output)
        if layer < self.states[0].shape.num_layers - 1:
            return
        signal = self._signal_parts[0] if len(self._signal_parts) == 1 else torch.cat(self._signal_parts, dim=-1)
        self._signal_parts = []
        for b in self.signal_rows:
            self.states[b].observe_signal(self._tokens(signal, b))


def dropping_layers(states: list[SequenceState], phases: list[ForwardPhase]) -> list[bool]:
    """Per layer, whether a row's masks formed before this forward drop a neuron there."""
    shape = states[0].shape
    sets = [s.kept for s, p in zip(states, phases) if p.masked and not p.form_in_forward and s.kept is not None]
    return [any(kept[layer].numel() < shape.width for kept in sets) for layer in range(shape.num_layers)]


def batch_masks(states: list[SequenceState], phases: list[ForwardPhase], dtype: torch.dtype,
                device: torch.device) -> torch.Tensor | None:
    """[B, L, N] keep masks of this forward, or None when no row drops a neuron (every row dense, or
    masks that keep all N, as at keep ratio 1.0: multiplying by ones would only cost time)."""
    shape = states[0].shape
    forming = any(p.form_in_forward for p in phases)
    pruning = [b for b, (s, p) in enumerate(zip(states, phases))
               if p.masked and not p.form_in_forward and s.kept is not None
               and any(k.numel() < shape.width for k in s.kept)]
    if not (forming or pruning):
        return None
    masks = torch.ones(len(states), shape.num_layers, shape.width, dtype=dtype, device=device)
    for b in pruning:
        masks[b].zero_()
        for layer, kept in enumerate(states[b].kept):
            masks[b, layer].index_fill_(0, kept, 1)
    return masks

"""Per-sequence DART state and the one place that advances its schedule (DART_SPEC sections 2-6)."""
from __future__ import annotations

import copy
from dataclasses import replace

import torch

from . import budget, scores
from .accounting import DENSE_FFN, FfnExecution, ForwardLedger, ModelShape, overhead_flops
from .config import DartConfig
from .drift import DriftMonitor, form_baseline
from .phase import DENSE, ForwardPhase
from .proxies import Proxies
from .signal import SignalAccumulator
from .telemetry import SequenceTrace


class SequenceState:
    """Scores, masks, epochs and drift detector of one sequence. Modules never hold any of it."""

    def __init__(self, cfg: DartConfig, shape: ModelShape, proxies: Proxies | None,
                 counts: list[int] | None, device: torch.device, trace: bool = False, uid: int = 0) -> None:
        self.uid = uid                   # unique within its engine; keys cached masks and gathered weights
        self.cfg, self.shape, self.proxies, self.fixed_counts = cfg, shape, proxies, counts
        self.device = device
        self.trace = SequenceTrace() if trace else None
        self.forward = 0                 # forwards of the whole sequence (0 = prefill, or its first block)
        self.prompt_forwards = 1         # forwards the prompt takes (blocks of a block-wise prefill)
        self.epoch = 0
        self.kept: list[torch.Tensor] | None = None   # per layer, sorted kept neuron ids
        self.mask_version = 0
        self.thresholds: list[float | None] = []
        self.drift_positions: list[int] = []
        self.drift_cosines: list[float] = []
        self.drift_cosine_positions: list[int] = []
        self.peak_state_bytes = 0
        self.ledger = ForwardLedger()
        self.auto_counts: list[int] | None = None      # the auto budget of the last epoch that formed one
        self._phase, self._drift_fired = DENSE, False
        self._formed_layers = 0          # masks selected in the forward in progress (overhead accounting)
        self.carried: torch.Tensor | None = None        # 'carry': previous epoch's per-token statistic [L, N]
        self.recent_inputs: list[torch.Tensor | None] = [None] * shape.num_layers   # per layer [<=R, d]
        self.replay: list[torch.Tensor | None] | None = None    # recent_inputs at the last drift event
        self.epoch_forward = 0           # forwards of the current epoch (0 = its first); its statistics below,
        self.stat, self.stat_tokens = self._empty_scores()     # cleared by _reset_epoch at each drift event
        self.cos_sum, self.ratio_sum, self.residual_tokens = self._empty_residual_sums()
        self.signal: SignalAccumulator | None = self._empty_signal()
        self.monitor: DriftMonitor | None = None

    def fork(self, uid: int) -> "SequenceState":
        """An independent copy under a new uid; only the config, shape, proxies and fixed budgets are shared."""
        twin = copy.deepcopy(self, {id(x): x for x in (self.cfg, self.shape, self.proxies, self.fixed_counts)})
        twin.uid = uid
        return twin

    # ---- schedule -------------------------------------------------------------------------
    def epoch_mask_step(self) -> int:
        """Forward of this epoch at which masks form. Under 'carry' a new epoch keeps its budgets and
        re-selects at once, so it needs no dense forward."""
        if self.epoch == 0:
            return self.cfg.effective_mask_step
        if self.cfg.drift.policy == "carry":
            return self.cfg.drift.recalibration_tokens
        return max(self.cfg.effective_mask_step, self.cfg.drift.recalibration_tokens)

    def begin_forward(self, tokens: int = 1, prompt_block: bool = False) -> ForwardPhase:
        """Decide this forward's phase (tokens: this row's real tokens in it; prompt_block: a block of a
        block-wise prefill, whose masked activations join the statistics); masks due at f = m > 0 form
        here from the calibration set."""
        phase = self._phase_of(tokens)
        if prompt_block and phase.masked and not (phase.calibrate or phase.form_in_forward):
            phase = replace(phase, accumulate=True)
        if prompt_block and phase.monitor and not self.cfg.prefill.drift_in_prompt:
            phase = replace(phase, monitor=False)
        self._phase = phase
        return phase

    def _phase_of(self, tokens: int) -> ForwardPhase:
        cfg = self.cfg
        generated = self.forward - (self.prompt_forwards - 1)        # 0 at the prompt's last forward
        released = cfg.release_step is not None and generated >= cfg.release_step
        if not cfg.prunes or released:
            if released and self.kept is not None:
                self.kept, self.mask_version = None, self.mask_version + 1
            return DENSE
        f, m, drift = self.epoch_forward, self.epoch_mask_step(), cfg.drift_enabled
        waiting = drift and self.monitor is None       # the epoch's baseline has not formed yet
        baseline = waiting and f >= m and self.signal.count + tokens >= cfg.drift.baseline_tokens
        if f < m:
            return ForwardPhase(calibrate=True, collect_signal=waiting)
        if f == m and m == 0:
            return ForwardPhase(calibrate=True, form_in_forward=True, masked=True,
                                collect_signal=waiting, form_baseline=baseline)
        if f == m:
            self._form_all()
        return ForwardPhase(masked=True, collect_signal=waiting, form_baseline=baseline,
                            monitor=drift and self.monitor is not None)

    def end_forward(self, tokens: int, execution: FfnExecution = DENSE_FFN) -> None:
        """Account the forward just run (tokens: real tokens of this row) and advance the schedule."""
        kept_counts = self.kept_counts()
        signal_width = self.shape.hidden * self.cfg.drift.signal_layers
        overhead = overhead_flops(self._phase, tokens, self.shape, execution.mask_elements, self._formed_layers,
                                  self.needs_residual(), signal_width, self._replayed_tokens())
        self._formed_layers, self.replay = 0, None     # a replay joins one forward only
        self.ledger.record(tokens, kept_counts, self.shape, execution, overhead)
        if self.trace is not None:
            self.trace.kept_per_forward.append(kept_counts)
        self.peak_state_bytes = max(self.peak_state_bytes, self.state_bytes())
        self.forward += 1
        self.epoch_forward += 1
        if self._drift_fired:
            self._drift_fired = False
            self.epoch += 1
            self._reset_epoch(carry=self._per_token_statistic() if self.cfg.drift.policy == "carry" else None)
            if self.cfg.drift.replay_tokens:
                self.replay = list(self.recent_inputs)      # a snapshot: the buffer rolls on

    def _per_token_statistic(self) -> torch.Tensor:
        """This epoch's statistic per token [L, N] (mean square for L2, the EMA itself), with what it carried."""
        if self.cfg.decay is None:
            tokens = torch.tensor(self.stat_tokens, dtype=torch.float32, device=self.device).clamp_min(1)
            mean = self.stat / tokens[:, None]
        else:
            mean = self.stat
        if self.carried is None:
            return mean
        weight = self.cfg.drift.carry_weight
        return (mean + weight * self.carried) / (1 + weight)

    def _reset_epoch(self, carry: torch.Tensor | None) -> None:
        self.epoch_forward = 0
        if self.kept is not None:
            self.kept, self.mask_version = None, self.mask_version + 1
        self.carried = carry            # mixed into the new epoch's statistic at selection ('carry')
        self.stat, self.stat_tokens = self._empty_scores()
        self.cos_sum, self.ratio_sum, self.residual_tokens = self._empty_residual_sums()
        self.signal = self._empty_signal()
        self.monitor = None

    def _rows(self) -> int:
        return self.shape.num_layers if self.cfg.prunes else 0         # dense keeps no statistics

    def _empty_scores(self) -> tuple[torch.Tensor, list[int]]:
        """Per layer: sum of squares (L2) or EMA of |a| [L, N], and the tokens that entered it."""
        stat = torch.zeros(self._rows(), self.shape.width, dtype=torch.float32, device=self.device)
        return stat, [0] * self.shape.num_layers

    def _empty_residual_sums(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Auto budget, per layer: sums of cos(x, y) and ||y - x|| / ||x|| [L], and their token counts."""
        sums = torch.zeros(2, self._rows(), dtype=torch.float64, device=self.device)   # on the device: no sync per layer
        return sums[0], sums[1], [0] * self.shape.num_layers

    def _empty_signal(self) -> SignalAccumulator | None:
        if not self.cfg.drift_enabled:
            return None
        return SignalAccumulator(self.shape.hidden * self.cfg.drift.signal_layers, self.cfg.drift.window, self.device)

    # ---- statistics -----------------------------------------------------------------------
    def observe_activations(self, layer: int, act: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """act: [T, N] neuron activations of this sequence's real tokens (any float dtype; the statistics
        are float32), or [T, k] of neurons `ids`."""
        cfg, act = self.cfg, act.to(self.device)
        if cfg.method == "griffin":
            self.stat[layer] = scores.griffin_update(self.stat[layer], act.float(), ids)
        elif cfg.decay is None:            # squares in float32, without a float copy of act first
            self.stat[layer] = scores.l2_update(self.stat[layer], act, ids)
        else:                              # an EMA decays the neurons not computed too
            full = act.float() if ids is None else scores.scattered(act, ids, self.shape.width)
            self.stat[layer] = (scores.ema_first_block(full, cfg.decay) if self.stat_tokens[layer] == 0
                                else scores.ema_update(self.stat[layer], full, cfg.decay))
        self.stat_tokens[layer] += act.shape[0]

    def remembers_inputs(self) -> bool:
        return self.cfg.drift_enabled and self.cfg.drift.replay_tokens > 0

    def remember_inputs(self, layer: int, hidden: torch.Tensor) -> None:
        """FFN inputs [T, d] of this sequence's tokens; the last `replay_tokens` of them are kept."""
        keep = self.cfg.drift.replay_tokens
        previous = self.recent_inputs[layer]
        recent = hidden[-keep:] if previous is None else torch.cat([previous, hidden[-keep:]])[-keep:]
        self.recent_inputs[layer] = recent.detach().clone()

    def replay_inputs(self, layer: int) -> torch.Tensor | None:
        """FFN inputs [R, d] kept at the last drift event, due to join this forward's statistics."""
        if self.replay is None or not self._phase.calibrate:
            return None
        return self.replay[layer]

    def _replayed_tokens(self) -> int:
        inputs = self.replay_inputs(0)
        return 0 if inputs is None else inputs.shape[0]

    def observe_residual(self, layer: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Auto-budget statistics. x: residual entering post_attention_layernorm [T, d]; y: FFN output [T, d]."""
        cos, ratio = budget.residual_sums(x.to(self.device), y.to(self.device))
        self.cos_sum[layer] += cos
        self.ratio_sum[layer] += ratio
        self.residual_tokens[layer] += x.shape[0]

    def needs_residual(self) -> bool:
        return self._phase.calibrate and self.cfg.budget == "auto" and self.cfg.method != "griffin"

    def observe_signal(self, signal: torch.Tensor) -> None:
        """Last layer's attention output of this sequence's real tokens, [T, d]."""
        phase = self._phase
        if phase.collect_signal:
            self.signal.add(signal)
        if phase.form_baseline:
            baseline = form_baseline(*self.signal.means(), self.cfg.drift)
            self.signal = None
            self.thresholds.append(baseline.tau)
            self.monitor = DriftMonitor(baseline, self.cfg.drift)
            if self.trace is not None:
                self.trace.drift_windows += [{"forward": self.forward, "cosine": c, "kind": "baseline"}
                                             for c in baseline.cosines]
        if phase.monitor:
            for token in signal:
                cos, fired = self.monitor.observe(token)
                if cos is None:
                    continue
                self.drift_cosines.append(cos)
                self.drift_cosine_positions.append(self.forward)
                if self.trace is not None:
                    self.trace.drift_windows.append(
                        {"forward": self.forward, "cosine": cos, "kind": "fired" if fired else "monitor"})
                if fired:
                    self.drift_positions.append(self.forward)
                    self._drift_fired = True
                    break

    # ---- masks ----------------------------------------------------------------------------
    def _keep_counts(self) -> list[int]:
        if self.fixed_counts is not None:
            return self.fixed_counts
        if self.epoch > 0 and self.cfg.drift.policy == "carry" and self.auto_counts is not None:
            return self.auto_counts
        if self.cfg.target_sparsity == 0.0:
            return [self.shape.width] * self.shape.num_layers
        tokens = torch.tensor(self.residual_tokens, dtype=torch.float64, device="cpu").clamp_min(1)
        self.auto_counts = budget.auto_counts(self.cos_sum.cpu() / tokens, self.ratio_sum.cpu() / tokens,
                                              self.cfg.target_sparsity, self.shape.width, self.cfg.auto)
        return self.auto_counts

    def ranked_scores(self, layer: int | slice) -> torch.Tensor:
        """The scores [N] (a slice of layers: [L', N]) the kept neurons are the top of: the statistics, ranked."""
        cfg = self.cfg
        stat = self.stat[layer]
        if self.carried is not None:
            stat = scores.carried_statistic(stat, self.stat_tokens[layer], self.carried[layer],
                                            cfg.drift.carry_weight, cfg.decay)
        m = scores.magnitude(stat, None if cfg.method == "griffin" else cfg.decay)
        unweighted = cfg.method == "griffin" or cfg.ranking == "magnitude"
        return m if unweighted else scores.rank_scores(m, cfg.ranking, self.proxies.pmax[layer], self.proxies.pmean[layer])

    def _select(self, layers: range, counts: list[int]) -> list[torch.Tensor]:
        """Kept ids of a run of layers (keep counts: counts[layer]) from the statistics so far."""
        selection = "topk" if self.cfg.method == "griffin" else self.cfg.selection
        counts = counts[layers.start:layers.stop]
        every = selection == "topk" and min(counts) >= self.shape.width      # every neuron kept: nothing to rank
        kept = ([torch.arange(self.shape.width, device=self.device)] * len(counts) if every else
                scores.select_layers(self.ranked_scores(slice(layers.start, layers.stop)), counts, selection))
        self._formed_layers += len(kept)
        if self.trace is not None:
            self.trace.mask_formations += [{"forward": self.forward, "layer": layer, "kept": ids.tolist()}
                                           for layer, ids in zip(layers, kept)]
        return kept

    def _form_all(self) -> None:
        self.kept = self._select(range(self.shape.num_layers), self._keep_counts())
        self.mask_version += 1

    def form_now(self) -> ForwardPhase:
        """Form every layer's masks from the statistics so far, if not formed yet, for forwards that
        only apply them (scoring after a prompt). Returns the phase of such a forward."""
        if self.kept is None and self.cfg.prunes:
            self._form_all()
        self._phase = ForwardPhase(masked=self.kept is not None)
        return self._phase

    def form_layer(self, layer: int) -> torch.Tensor:
        """mask_step 0: form one layer's mask from the statistics gathered so far in this forward."""
        if self.kept is None:
            self.kept = [torch.arange(self.shape.width, device=self.device)] * self.shape.num_layers
        self.kept = self.kept[:layer] + self._select(range(layer, layer + 1), self._keep_counts()) + self.kept[layer + 1:]
        self.mask_version += 1
        return self.kept[layer]

    def kept_counts(self) -> list[int]:
        if self.kept is None or not self._phase.masked:
            return [self.shape.width] * self.shape.num_layers
        return [int(k.numel()) for k in self.kept]

    def state_bytes(self) -> int:
        total = self.stat.numel() * 4 + (self.cos_sum.numel() + self.ratio_sum.numel()) * 8
        total += sum(k.numel() * k.element_size() for k in self.kept or [])
        total += sum(part.state_bytes() for part in (self.signal, self.monitor) if part is not None)
        total += sum(x.numel() * x.element_size() for x in self.recent_inputs if x is not None)
        return total

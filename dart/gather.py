"""Which FFN path each forward takes, and the gathered weights kept across forwards (dart.compact has
the paths and their arithmetic): a decode loop gathers once per mask set, not per token."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .compact import (
    AUTO_MAX_FRACTION,
    GATHER_TILE,
    MASKED,
    ROW_TILE,
    CompactWeights,
    FfnPlan,
    choose_block_path,
    choose_path,
    forwards_to_amortize,
    gather_layer,
    padded_width,
    union_kept,
)
from .config import ROWWISE_MAX_FFN_COPIES
from .gather_cost import BLOCK_ROWS, BlockCosts, GatherCost, cached_block_costs, cached_gather_cost
from .scores import shared_selection
from .patch import DartMLP

if TYPE_CHECKING:
    from .config import DartConfig
    from .phase import ForwardPhase
    from .state import SequenceState

log = logging.getLogger(__name__)
# A prompt block this long that runs masked is worth a warning: the block-cost measurement's own size.
ADVICE_MIN_TOKENS = BLOCK_ROWS


class GatherCache:
    """Plans each forward's FFN path and keeps the last gathered weights, keyed by the rows' mask
    versions: a decode loop gathers once per mask set, not per token, and under `auto` only once that
    set has run `forwards_to_amortize` masked forwards. Under `onednn`, weights gathered for a prompt
    block stay plain and decode forwards run on packed ones."""

    def __init__(self, mlps: list[DartMLP], config: DartConfig, dtype: torch.dtype, onednn: bool = False,
                 cache_dir: Path | None = None) -> None:
        self.mlps, self.ffn_path, self.dtype, self.onednn = mlps, config.ffn_path, dtype, onednn
        # oneDNN compiles a kernel per matmul shape: gathered sets and prompt blocks are padded to tiles
        # so that shapes repeat (dart.compact); other kernels run the kept widths as they are
        self.tile, self.row_tile = (GATHER_TILE, ROW_TILE) if onednn else (1, 1)
        self.shared_decode = config.decode_masks == "shared"     # rows of a decode forward share one set
        self.costs = GatherCost(config.gather_cost, lambda rows: cached_gather_cost(
            mlps[0], lambda ids: self.gather(0, ids), onednn, rows, cache_dir))
        # a prompt block's paths by measured seconds; with a fixed gather_cost, by neuron-tokens (gathers free)
        self._measure_blocks = None if config.gather_cost is not None else (
            lambda: cached_block_costs(mlps, self.gather, onednn, cache_dir))
        self._block_costs: BlockCosts | None = None
        self._masked_block_said = False         # the advice below, given once per engine
        self.time_gathers = mlps[0].gate_proj.weight.device.type == "cpu"    # recorded; a GPU's run async
        # On a CPU, W_down's kept columns are gathered as rows of a transposed copy made at the first
        # gather (a third more FFN weight memory); a GPU gathers columns as fast as rows.
        self.transpose_down = mlps[0].down_proj.weight.device.type == "cpu" and self.ffn_path != "masked"
        self._down_t: list[torch.Tensor] | None = None
        self.decode_gathers = 0                 # sets gathered for decode forwards so far
        self._key: tuple = ()
        self._plan = MASKED
        self._rows: dict[tuple[int, int], list[CompactWeights]] = {}   # rowwise: (uid, mask_version) -> weights
        self._waiting: tuple[tuple, int, int] = ((), 0, 0)   # (decode key, masked forwards run, forwards to wait)
        # the set rows share in decode: (their mask versions, kept ids per layer, masked plan or None)
        self._shared: tuple[tuple, list[torch.Tensor], FfnPlan | None] = ((), [], None)

    def clear(self) -> None:
        self._key, self._plan, self._rows, self._waiting = (), MASKED, {}, ((), 0, 0)
        self._shared = ((), [], None)

    def copied_bytes(self) -> int:
        """Bytes of the transposed W_down copy this cache holds (gathered sets not counted)."""
        return sum(t.numel() * t.element_size() for t in self._down_t or [])

    def close(self) -> None:
        """Free every copy: the gathered weights and the transposed W_down."""
        self.clear()
        self._down_t = None

    def gather_cost(self, rows: int) -> float:
        """A decode gather's cost in masked forwards of `rows` rows (GATHER_COST_IN_FORWARDS' unit):
        dart.gather_cost.GatherCost, measured on this engine's first layer and, on a CPU, cached beside
        the kernel verdicts."""
        return self.costs.forwards(rows)

    @property
    def measured_costs(self) -> dict:
        return self.costs.measured

    def gather(self, layer: int, ids: torch.Tensor, row_mask: torch.Tensor | None = None) -> CompactWeights:
        """Layer `layer`'s kept neurons `ids`, gathered (plain weights)."""
        mlp = self.mlps[layer]
        if self.transpose_down and self._down_t is None:
            self._down_t = [m.down_proj.weight.t().contiguous() for m in self.mlps]
        return gather_layer(mlp, ids.to(mlp.gate_proj.weight.device), row_mask, onednn=self.onednn,
                            down_t=None if self._down_t is None else self._down_t[layer], tile=self.tile,
                            row_tile=self.row_tile)

    def plan(self, states: list[SequenceState], phases: list[ForwardPhase], counts: list[int],
             tokens: int) -> FfnPlan:
        """The FFN path of a forward (counts: each row's real tokens, from the host; tokens: the forward's
        width). Rows without a token in it (past the end of their prompt in a block-wise prefill) take no
        part; a multi-token forward whose rows hold several kept sets (a prompt block) is planned by the
        neuron-tokens each path computes."""
        active = tuple(b for b, count in enumerate(counts) if count)
        if not all(phases[b].masked and not (phases[b].calibrate or phases[b].form_in_forward)
                   and states[b].kept is not None for b in active):
            return MASKED
        if self.ffn_path == "masked":
            return self._masked(states, active, tokens == 1)
        path = None
        if tokens > 1:
            path = self._block_path(states, active, counts, tokens)
            if path == "masked":
                self._say_masked_block(states, active, tokens)
            if path in ("masked", "rowwise"):
                return MASKED if path == "masked" else self._rowwise(states, active)
        else:
            self._rows = {}                             # rowwise copies serve prompt blocks only
        decode = tokens == 1
        key = (path, active, tuple((s.uid, s.mask_version) for s in states))
        if key != self._key:
            self._key, self._plan = (), MASKED          # free the old copies before gathering new ones
            if decode and self._wait(key, states, active):
                return self._masked(states, active, decode)
            self._key, self._plan = key, self._build(states, active, path, decode)
        elif decode and self.onednn:
            self._plan = self._plan.packed()            # decoding on the set a prompt block gathered
        return self._masked(states, active, decode) if self._plan.path == "masked" else self._plan

    def _say_masked_block(self, states: list[SequenceState], active: tuple[int, ...], tokens: int) -> None:
        """Says once per engine that a long prompt block of one row runs masked under auto: block-wise
        prefill then saves no FFN work on such prompts (short blocks, and rows whose sets differ, may run
        masked where long single-row blocks gather)."""
        if (self._masked_block_said or self.ffn_path != "auto" or tokens < ADVICE_MIN_TOKENS
                or len({states[b].uid for b in active}) > 1):
            return
        self._masked_block_said = True
        log.warning("a %d-token prompt block runs masked here (%s, %s kernel): gathering its kept neurons costs "
                    "more than computing every neuron, so block-wise prefill saves no FFN work on prompts like it "
                    "and costs a forward more than dart.prefill.mode: dense, which keeps the prompt whole "
                    "(bench/README.md section 26)", tokens, self.dtype, "oneDNN" if self.onednn else "torch")

    def _masked(self, states: list[SequenceState], active: tuple[int, ...], decode: bool) -> FfnPlan:
        """The masked path. Rows that share a decode set are masked by that set, so that their tokens do
        not depend on whether (or when) the set is gathered."""
        if not self._shares(states, active, decode):
            return MASKED
        kept = self._shared_set(states, active)
        if self._shared[2] is None:
            masks = torch.zeros(1, len(kept), states[0].shape.width, dtype=self.dtype, device=kept[0].device)
            for layer, ids in enumerate(kept):
                masks[0, layer].index_fill_(0, ids, 1)
            self._shared = (*self._shared[:2], FfnPlan("masked", masks=masks, applied=[int(k.numel()) for k in kept]))
        return self._shared[2]

    def _shared_set(self, states: list[SequenceState], active: tuple[int, ...]) -> list[torch.Tensor]:
        """Per layer, the set the active rows share, selected once per combination of their mask sets."""
        key = tuple((states[b].uid, states[b].mask_version) for b in active)
        if self._shared[0] != key:
            self._shared = (key, self._kept(states, active, shared=True), None)
        return self._shared[1]

    def _wait(self, key: tuple, states: list[SequenceState], active: tuple[int, ...]) -> bool:
        """Whether a decode forward under a new mask set runs masked while the set has not yet lasted
        `forwards_to_amortize` forwards (auto only: a forced compact gathers at once)."""
        if self.ffn_path != "auto":
            return False
        waiting_key, waited, needed = self._waiting
        if waiting_key != key:
            widths = self._shared_widths(states, active) if self._shares(states, active, decode=True) else \
                [int(k.numel()) for k in self._kept(states, active)]
            fraction = sum(widths) / (len(widths) * states[0].shape.width)
            needed = 0 if fraction >= AUTO_MAX_FRACTION else forwards_to_amortize(fraction, self.gather_cost(len(states)))
            waited = 0
        if waited >= needed:
            self._waiting = ((), 0, 0)
            return False
        self._waiting = (key, waited + 1, needed)
        return True

    def _shares(self, states: list[SequenceState], active: tuple[int, ...], decode: bool) -> bool:
        """Whether this forward runs its rows' different kept sets as one shared set (decode_masks: shared)."""
        return decode and self.shared_decode and len({states[b].uid for b in active}) > 1

    @staticmethod
    def _kept(states: list[SequenceState], active: tuple[int, ...], shared: bool = False) -> list[torch.Tensor]:
        """Per layer, the kept ids of the active rows' one set, the union of their sets, or (`shared`) the
        set they share: the top of their scores at their mean width."""
        groups = list({states[b].uid: states[b] for b in active}.values())
        if len(groups) == 1:
            return groups[0].kept
        if not shared:
            return union_kept([s.kept for s in groups], groups[0].shape.width)
        widths = GatherCache._shared_widths(states, active)
        return [shared_selection(torch.stack([s.ranked_scores(layer) for s in groups]), width)
                for layer, width in enumerate(widths)]

    @staticmethod
    def _shared_widths(states: list[SequenceState], active: tuple[int, ...]) -> list[int]:
        """Per layer, the width of the rows' shared set: their mean kept count (known to the host)."""
        groups = list({states[b].uid: states[b] for b in active}.values())
        return [round(sum(int(s.kept[layer].numel()) for s in groups) / len(groups))
                for layer in range(groups[0].shape.num_layers)]

    def _block_path(self, states: list[SequenceState], active: tuple[int, ...], counts: list[int], tokens: int) -> str:
        """masked, compact/union or rowwise for a prompt block, by its FFN's cost per layer (`block_costs`).
        Rowwise keeps a gathered copy per row: it is left out where the copies would outgrow
        ROWWISE_MAX_FFN_COPIES."""
        width = states[0].shape.width
        sets = {states[b].uid: states[b] for b in active}
        widths = {uid: self._mean_width(s.kept) for uid, s in sets.items()}     # neurons each row's set computes
        union = None if len(sets) == 1 else union_kept([s.kept for s in sets.values()], width)
        union_width = next(iter(widths.values())) if union is None else self._mean_width(union)
        unit = self.block_costs()
        gathered = set(self._rows) | set(self._key[2] if self._key else ())

        def gathering(state: SequenceState) -> float:       # a set already gathered costs nothing
            return 0.0 if (state.uid, state.mask_version) in gathered else widths[state.uid] * unit.neuron

        padded = len(states) * tokens                   # the masked and union paths compute padding too
        costs = {"masked": padded * unit.token,
                 "union": padded * union_width * unit.token_neuron
                 + (gathering(next(iter(sets.values()))) if union is None else union_width * unit.neuron),
                 "rowwise": sum(counts[b] * widths[states[b].uid] * unit.token_neuron for b in active)
                 + sum(gathering(s) for s in sets.values())}
        if len(sets) > 1 and sum(widths.values()) / width > ROWWISE_MAX_FFN_COPIES:
            del costs["rowwise"]
        path = choose_block_path(costs, self.ffn_path)
        return "compact" if path == "union" and len(sets) == 1 else path

    def _mean_width(self, kept: list[torch.Tensor]) -> float:
        """Neurons a gathered set of these per-layer ids computes per layer, on average (with its padding)."""
        full = self.mlps[0].gate_proj.weight.shape[0]
        return sum(padded_width(int(ids.numel()), self.tile, full) for ids in kept) / len(kept)

    def block_costs(self) -> BlockCosts:
        """Per-unit seconds of a prompt block's FFN paths (dart.gather_cost.BlockCosts), measured once; with
        a fixed `gather_cost`, neuron-tokens: a masked token computes every neuron, gathers are free."""
        if self._block_costs is None:
            width = self.mlps[0].gate_proj.weight.shape[0]
            self._block_costs = BlockCosts(width, 1.0, 0.0) if self._measure_blocks is None else self._measure_blocks()
        return self._block_costs

    def _rowwise(self, states: list[SequenceState], active: tuple[int, ...]) -> FfnPlan:
        """Each active row's own gathered weights, kept per mask set across the blocks of a prefill."""
        wanted = {(states[b].uid, states[b].mask_version) for b in active}
        self._rows = {key: weights for key, weights in self._rows.items() if key in wanted}
        row_weights: list[list[CompactWeights] | None] = [None] * len(states)
        for b in active:
            key = (states[b].uid, states[b].mask_version)
            if key not in self._rows:
                self._rows[key] = [self.gather(layer, ids) for layer, ids in enumerate(states[b].kept)]
            row_weights[b] = self._rows[key]
        return FfnPlan("rowwise", row_weights=row_weights)

    def _build(self, states: list[SequenceState], active: tuple[int, ...], path: str | None,
               decode: bool) -> FfnPlan:
        groups = {states[b].uid for b in active}
        width = states[0].shape.width
        shared = self._shares(states, active, decode)
        kept = self._shared_set(states, active) if shared else self._kept(states, active)
        widths = [int(k.numel()) for k in kept]
        if path is None:
            path = choose_path(1 if shared else len(groups), sum(widths) / (len(widths) * width), self.ffn_path)
        if path == "masked":
            return MASKED
        weights, began = [], time.perf_counter()
        for layer, ids in enumerate(kept):
            ids = ids.to(self.mlps[layer].gate_proj.weight.device)
            row_mask = None if path != "union" else self._row_mask(states, active, layer, ids, width)
            gathered = self.gather(layer, ids, row_mask)
            weights.append(gathered.pack() if decode and self.onednn else gathered)
        if decode:
            self.decode_gathers += 1
            if self.time_gathers:
                self.costs.observe(sum(widths), width, time.perf_counter() - began)
        computed = [w.width for w in weights]              # the kept widths and their padding
        if shared:
            return FfnPlan("shared", weights, computed, applied=widths)
        return FfnPlan(path, weights, computed)

    def _row_mask(self, states: list[SequenceState], active: tuple[int, ...], layer: int, ids: torch.Tensor,
                  width: int) -> torch.Tensor:
        """[B, 1, |U|]: 1 where row b keeps the union's neuron (0 for rows without tokens), in the model dtype."""
        masks = torch.zeros(len(states), width, dtype=self.dtype, device=ids.device)
        for b in active:
            masks[b].index_fill_(0, states[b].kept[layer].to(ids.device), 1)
        return masks[:, None, :].index_select(2, ids)

"""What a decode gather costs, in the masked forwards whose savings repay it (the unit of
`dart.compact.forwards_to_amortize`): measured once per engine and batch size on the first layer and
cached beside the kernel verdicts, so that an engine's path choices, and with them its bf16 tokens, are
the same in every run on a machine. And what a prompt block's FFN costs per token on the masked path,
per token and kept neuron on gathered weights, and per neuron gathered (`BlockCosts`): measured and
cached the same way, once per engine. On an AMX Xeon in bf16 the masked path runs on packed weights
and the gathered on plain ones, and a gather copies weights that a prompt block then reads only once:
a 400-token block kept at 70% ran faster masked, at 50% gathered (bench/README.md section 25).

On a CPU the engine also records how long its decode gathers take against what the measurement
predicts (`GatherCost.ratios`, for benches). Inside a job decode gathers took 1.3-2.2x their prediction
(bench/README.md section 20); scaling the cost by these observations gathered less often and decoded
faster, but made path choices depend on timing during a run, so it is not done.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
import torch

from .compact import CompactWeights, compact_ffn
from .kernels import best_seconds
from .verdicts import cached_measurement
from .patch import DartMLP

log = logging.getLogger(__name__)

# Decode gathers whose observed over predicted seconds are kept (the latest ones).
OBSERVED_GATHERS = 8


@dataclass(frozen=True)
class MeasuredCost:
    forwards: float                 # masked forwards a gather of half the neurons takes to repay
    half_layer_seconds: float       # a gather (and pack) of half of one layer's neurons, measured alone


class GatherCost:
    """The cost `forwards_to_amortize` waits out: `fixed` if given (dart.gather_cost), else measured per
    batch size by `measure`. Observed decode gathers are recorded against their prediction, not used."""

    def __init__(self, fixed: float | None, measure: Callable[[int], MeasuredCost]) -> None:
        self.fixed, self.measure = fixed, measure
        self.measured: dict[int, MeasuredCost] = {}
        self.ratios: list[float] = []       # observed over predicted seconds of the latest decode gathers

    def forwards(self, rows: int) -> float:
        if self.fixed is not None:
            return self.fixed
        if rows not in self.measured:
            self.measured[rows] = self.measure(rows)
        return self.measured[rows].forwards

    def observe(self, neurons: int, width: int, seconds: float) -> None:
        """A decode gather of `neurons` neurons over all layers (`width` per layer) took `seconds`."""
        if self.fixed is not None or not self.measured or neurons == 0:
            return
        half_layer = next(iter(self.measured.values())).half_layer_seconds
        if half_layer > 0:
            self.ratios = (self.ratios + [seconds / (half_layer * neurons / (width / 2))])[-OBSERVED_GATHERS:]


def cached_gather_cost(mlp: DartMLP, gather: Callable[[torch.Tensor], CompactWeights], onednn: bool, rows: int,
                       cache_dir: Path | None) -> MeasuredCost:
    """measured_gather_cost, read from / stored in the verdict cache (so engines on one machine agree)."""
    weight = mlp.gate_proj.weight
    key = {"shape": list(weight.shape), "dtype": str(weight.dtype), "rows": rows, "onednn": onednn, "rule": "saving-v2"}
    return cached_measurement("gather", key, weight.device, cache_dir, MeasuredCost,
                              lambda: measured_gather_cost(mlp, gather, onednn, rows))


@torch.inference_mode()
def measured_gather_cost(mlp: DartMLP, gather: Callable[[torch.Tensor], CompactWeights], onednn: bool,
                         rows: int) -> MeasuredCost:
    """Gathering (`gather`: kept ids -> plain weights) and, under oneDNN, packing half of `mlp`'s neurons,
    over what a decode FFN call of `rows` rows saves on it against the masked call: the forwards a gather
    takes to repay, at half the neurons (`forwards_to_amortize` scales it to other fractions). Infinite
    where it saves nothing."""
    weight = mlp.gate_proj.weight
    width, hidden = weight.shape
    device = weight.device
    kept = torch.arange(0, width, 2, device=device)
    x = torch.zeros(rows, 1, hidden, dtype=weight.dtype, device=device).normal_()
    mask = torch.ones(rows, 1, width, dtype=weight.dtype, device=device)
    half = gather(kept)
    half = half.pack() if onednn else half

    def timed(run):
        def call() -> None:
            run()
            synchronize(device)
        return call

    def gather_half() -> None:
        gathered = gather(kept)
        if onednn:
            gathered.pack()

    seconds = best_seconds({"masked": timed(lambda: mlp.down_proj(mlp.activations(x) * mask)),
                            "compact": timed(lambda: compact_ffn(mlp, x, half)), "gather": timed(gather_half)})
    saving = seconds["masked"] - seconds["compact"]
    cost = seconds["gather"] / saving if saving > 0 else float("inf")
    log.info("a decode gather repays in %.1f forwards at half the neurons, %d row(s) (%s, %s)", cost, rows,
             device, weight.dtype)
    return MeasuredCost(cost, seconds["gather"])


# Rows of the measured prompt block: the blocks that prune are the prompt past its first block.
BLOCK_ROWS = 256


@dataclass(frozen=True)
class BlockCosts:
    """Seconds of one layer's FFN in a prompt block, per unit of work: `token`, a token on the masked
    path (every neuron, the routed weights); `token_neuron`, a token times a kept neuron on gathered
    weights; `neuron`, gathering one neuron's weights."""

    token: float
    token_neuron: float
    neuron: float


def cached_block_costs(mlps: list[DartMLP], gather: Callable[[int, torch.Tensor], CompactWeights], onednn: bool,
                       cache_dir: Path | None) -> BlockCosts:
    """measured_block_costs, read from / stored in the verdict cache (so engines on one machine agree)."""
    weight = mlps[0].gate_proj.weight
    key = {"shape": list(weight.shape), "dtype": str(weight.dtype), "layers": len(mlps), "onednn": onednn,
           "rows": BLOCK_ROWS}
    return cached_measurement("block", key, weight.device, cache_dir, BlockCosts,
                              lambda: measured_block_costs(mlps, gather))


@torch.inference_mode()
def measured_block_costs(mlps: list[DartMLP], gather: Callable[[int, torch.Tensor], CompactWeights]) -> BlockCosts:
    """A BLOCK_ROWS-token block's FFN masked and on half of each layer's neurons gathered, and the gather
    (`gather`: layer, kept ids -> weights), each over every layer in turn so that weights come from
    memory as in a forward."""
    weight = mlps[0].gate_proj.weight
    width, hidden = weight.shape
    device = weight.device
    kept = torch.arange(0, width, 2, device=device)
    x = torch.zeros(1, BLOCK_ROWS, hidden, dtype=weight.dtype, device=device).normal_()
    mask = torch.ones(1, 1, width, dtype=weight.dtype, device=device)
    halves = [gather(layer, kept) for layer in range(len(mlps))]

    def each_layer(run):
        def call() -> None:
            for layer in range(len(mlps)):
                run(layer)
            synchronize(device)
        return call

    seconds = best_seconds({"masked": each_layer(lambda l: mlps[l].down_proj(mlps[l].activations(x) * mask)),
                            "gathered": each_layer(lambda l: compact_ffn(mlps[l], x, halves[l])),
                            "gather": each_layer(lambda l: gather(l, kept))}, reps=3)
    layers, neurons = len(mlps), halves[0].width
    costs = BlockCosts(seconds["masked"] / (layers * BLOCK_ROWS), seconds["gathered"] / (layers * BLOCK_ROWS * neurons),
                       seconds["gather"] / (layers * neurons))
    log.info("a %d-token prompt block's FFN: %.2f ms a layer masked, %.2f gathered at half the neurons plus %.2f "
             "for the gather (%s, %s)", BLOCK_ROWS, 1e3 * seconds["masked"] / layers,
             1e3 * seconds["gathered"] / layers, 1e3 * seconds["gather"] / layers, device, weight.dtype)
    return costs


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

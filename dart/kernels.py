"""CPU matmul kernels of the model's Linears: torch's default (MKL's sgemm on x86) or oneDNN on weights
packed once into its blocked layout. Which is faster depends on the CPU: on an AMD EPYC with AVX-512
(bench 12), SmolLM2's FFN matmuls ran 1.7-1.8x faster packed at 4 rows (a batch-4 decode step) and
1.2x at 256-512 (a prompt); on other CPUs MKL may win. So `linear_kernel: auto` measures both on the
model's own FFN weights when the engine starts, once per CPU, torch build, thread count and weight
shape: the verdict is cached on disk beside the forward proxies.

Packing keeps the original weights (DART gathers kept neurons from them) beside a packed copy:
the Linears' weight memory doubles while an engine routes them."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .verdicts import measured_once, read_verdict, verdict_key, write_verdict

log = logging.getLogger(__name__)

# Rows the packed layout is tuned for; measured no different between 4 and 512 on the calls that matter.
PACK_ROWS_HINT = 256
# Below this hidden size a matmul is mostly call overhead: auto keeps torch's kernel without measuring.
MIN_HIDDEN_TO_MEASURE = 256
# auto routes to oneDNN only when it takes at most this fraction of torch's time.
AUTO_MAX_TIME_FRACTION = 0.9
MEASURED_ROWS = (4, 256)   # a decode step of a batch, a prompt block


def onednn_available(device: torch.device) -> bool:
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


# The two oneDNN ops below are torch's own, without a public name: the ones its inductor CPU backend
# calls for a packed linear. onednn_available checks that this torch has them.
def pack(weight: torch.Tensor) -> torch.Tensor:
    """A oneDNN-packed copy of a [out, in] weight (an mkldnn tensor of the same shape)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), PACK_ROWS_HINT)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, onednn: bool = False) -> torch.Tensor:
    """F.linear, or oneDNN's kernel where `weight` is packed or `onednn` is asked. On a plain weight
    oneDNN lays out blocks of it as it goes: no packed copy is made, so a weight used for a few
    many-token calls (a prompt's gathered FFN) skips the packing pass and still runs oneDNN's kernel."""
    if weight.is_mkldnn or onednn:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight.contiguous(), bias, "none", [], "")
    return F.linear(x, weight, bias)


class PackedLinear(nn.Module):
    """Stands in for an nn.Linear: runs oneDNN on a packed copy of its weight. `weight` and `bias` are
    the original's, so code reading them (gathers, shapes) sees the Linear unchanged."""

    def __init__(self, original: nn.Linear) -> None:
        super().__init__()
        self.original = [original]           # a list, so its parameters are not registered twice
        self.packed = pack(original.weight)
        self.in_features, self.out_features = original.in_features, original.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.original[0].weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.original[0].bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.packed, self.bias)


@dataclass
class Routing:
    """The Linears an engine swapped for PackedLinear: (parent module, attribute, original)."""

    swapped: list[tuple[nn.Module, str, nn.Linear]]

    def undo(self) -> None:
        for parent, name, original in self.swapped:
            setattr(parent, name, original)
        self.swapped = []


def route_linears(model: nn.Module, layers: nn.ModuleList) -> Routing:
    """Swap every Linear of the decoder layers (attention and FFN) and the LM head for a PackedLinear."""
    swapped = []
    parents = [module for layer in layers for module in layer.modules()]
    for parent in parents:
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                swapped.append((parent, name, child))
    head = model.get_output_embeddings()
    if type(head) is nn.Linear:
        for name, child in model.named_children():
            if child is head:
                swapped.append((model, name, child))
    for parent, name, original in swapped:
        setattr(parent, name, PackedLinear(original))
    return Routing(swapped)


def best_seconds(runs: dict[str, Callable[[], object]], reps: int = 5) -> dict[str, float]:
    """The fastest of `reps` timed calls of each run, after one untimed call each. The runs alternate, so
    a machine busy for a while slows them alike instead of deciding a verdict."""
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(reps):
        for name, run in runs.items():
            began = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - began)
    return best


@torch.inference_mode()
def measured_choice(weights: list[torch.Tensor]) -> str:
    """`onednn` if its packed kernel is `faster` than torch's over `weights` (same-shape [out, in]
    weights, one per layer, streamed from memory as a forward does) at MEASURED_ROWS rows; else `torch`."""
    packed = [pack(w) for w in weights]
    first = weights[0]
    inputs = [torch.randn(rows, first.shape[1], dtype=first.dtype, device=first.device) for rows in MEASURED_ROWS]
    seconds = [best_seconds({"torch": lambda x=x: [F.linear(x, w) for w in weights],
                             "onednn": lambda x=x: [linear(x, p) for p in packed]}) for x in inputs]
    plain, onednn = (sum(s[name] for s in seconds) for name in ("torch", "onednn"))
    choice = "onednn" if faster([s["onednn"] / s["torch"] for s in seconds]) else "torch"
    log.info("linear kernel %s: oneDNN packed %.2f ms, torch %.2f ms on %d %s weights at %s rows", choice,
             onednn * 1e3, plain * 1e3, len(weights), tuple(first.shape), "/".join(map(str, MEASURED_ROWS)))
    return choice


def faster(ratios: list[float]) -> bool:
    """Whether a variant taking `ratios` of the other's time at each measured row count is the one to
    run: on average at most AUTO_MAX_TIME_FRACTION of it (each row count counts alike, so a prompt's
    long matmuls do not outweigh a decode step's), and nowhere more than 5% slower."""
    return sum(ratios) / len(ratios) <= AUTO_MAX_TIME_FRACTION and max(ratios) <= 1.05


def verdict_path(weights: list[torch.Tensor], cache_dir: Path) -> Path | None:
    """Where auto's measured choice for `weights` on this CPU and torch is cached (None: CPU unknown)."""
    return verdict_key("linear", {"weights": [len(weights), list(weights[0].shape), str(weights[0].dtype)],
                                  "rows": MEASURED_ROWS, "rule": "faster-v1"}, cache_dir)


def cached_choice(weights: list[torch.Tensor], cache_dir: Path | None) -> str:
    """measured_choice, read from / stored in `cache_dir` (None: measured every time)."""
    path = None if cache_dir is None else verdict_path(weights, cache_dir)

    def read() -> str | None:
        choice = read_verdict(path, ("torch", "onednn"))
        if choice is not None:
            log.info("linear kernel %s (measured before, %s)", choice, path)
        return choice

    return measured_once(path, read, lambda: measured_choice(weights), lambda choice: write_verdict(path, choice))


def choose_kernel(setting: str, weights: list[torch.Tensor], hidden: int, cache_dir: Path | None = None) -> str:
    """The kernel an engine runs (`torch` or `onednn`) for the `dart.linear_kernel` setting, given the
    model's FFN gate weights (one per layer); auto's measurement is cached in `cache_dir`."""
    available = onednn_available(weights[0].device)
    if setting == "onednn" and not available:
        raise ValueError(f"dart.linear_kernel: onednn needs a CPU model and a torch built with oneDNN; "
                         f"this model is on {weights[0].device.type}")
    if setting != "auto":
        return setting
    if not available or hidden < MIN_HIDDEN_TO_MEASURE:
        return "torch"
    return cached_choice(weights, cache_dir)

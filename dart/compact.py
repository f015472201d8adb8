"""Compact FFN: compute only kept neurons, from gathered rows of W_gate/W_up and columns of W_down
(on a CPU: rows of a transposed copy of W_down, dart.gather).

Masking multiplies pruned activations by zero and saves nothing; gathered weights read and compute
k/N of the layer. Gathering costs one pass over the kept weights, so it is done once per mask set and
cached with the sequences' mask versions.

Paths of one forward (`choose_path`):
* `compact`: every row shares one kept set (batch 1, or the continuations of one prompt).
* `union`: rows with distinct kept sets run on the union U of their kept neurons, each row masked
  inside U: one matmul for the batch, reading |U|/N of the dense bytes. Pays when the rows' masks
  overlap (DART's proxies weigh the same neurons for every prompt).
* `shared` (decode, `decode_masks: shared`): rows with distinct kept sets all run on one set per layer
  (dart.scores.shared_selection), as `compact`: k/N of the bytes at any batch size.
* `masked`: dense matmuls times the [B, L, N] masks (calibrating rows, or a union near N).
* `rowwise` (prompt blocks only, docs/prefill.md): each row's real tokens run on its own gathered
  weights. In decode (one token per row) it never beats the union, which reads at most min(1, G*k/N)
  of the bytes; a prompt block is compute-bound, and there each row computes only T_b * k_b
  neuron-tokens against B * T * |U| for the union.

A prompt block's path is chosen by its cost in seconds (dart.gather_cost.BlockCosts, measured per
machine, dtype and kernel): the gathered matmuls plus the gather of any set not yet gathered, against
the masked matmuls. With a fixed `gather_cost`, by neuron-tokens alone, gathers counted free.

Under the oneDNN kernel (dart.kernels) a prompt block's gathered weights stay plain: two or three
many-token matmuls on them cost less than packing them first (a pack is 2-4 passes' worth of a copy;
on an AMX Xeon in bf16, 0.27 ms a [1088, 576] weight against 0.1 ms saved on a 416-token matmul).
A decode forward runs on a packed copy, which is up to 2x faster at 1-4 rows; a decode forward that
reuses a prompt's gathered set packs it once.

oneDNN compiles a kernel for each new matmul shape: on an AMX Xeon in bf16, 3-6 ms for the two of a
gathered FFN, more than a 450-token block's matmuls on them take. Every prompt's kept widths differ (the
auto budget's per layer), as do its block lengths, so unbucketed each prompt paid it 60 times. Under
oneDNN a gathered set is therefore padded with zero neurons to a multiple of GATHER_TILE, and a prompt
block's tokens with zero rows to a multiple of ROW_TILE: the zeros change no output (act(0) * 0 = 0, and
zero rows of W_down add nothing), the shapes repeat, and widths on the tile run faster besides (1088
neurons of a 450-token block in 1.51 ms, 1075 in 1.99; bench/README.md section 25).

A decode forward reads each weight once for a handful of rows, so a gather (plus its packing) costs
many forwards' worth of the bytes it saves. Under `auto`, a one-token-per-row forward therefore runs
masked until its mask set has lasted long enough to pay for the copy (`forwards_to_amortize`: the
ski-rental rule, which without knowing how long a set will last stays within about twice the cost of
the better choice made knowing it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
import torch
import torch.nn.functional as F

from .kernels import linear
from .kernels import pack as pack_weight
from .patch import DartMLP

# auto takes a gathered path only below this fraction of the dense FFN bytes: the masked path's
# multiply is nearly free, a gathered forward adds per-layer index work and the gather itself.
AUTO_MAX_FRACTION = 0.9
# Cost of gathering (and packing) a set of kept weights, in decode forwards that read the same bytes,
# where it is not measured (dart.gather measures it per engine, device, dtype and batch). Measured with
# SmolLM2 on CPU in float32, 600-token contexts (bench 13, bench/README.md section 13): 4-7 at batch 1,
# 14-24 at batch 4 (the union's); more when the copies land on fresh pages.
GATHER_COST_IN_FORWARDS = 12.0
# Under oneDNN: gathered widths rounded up to a multiple of GATHER_TILE (zero neurons), a prompt block's
# token rows to a multiple of ROW_TILE (zero rows). On an AMX Xeon, new job prompts ran as fast with 64/32 as
# with 128/64, repeated ones faster; 32-neuron tiles ran slower (bench/README.md section 25).
GATHER_TILE = 64
ROW_TILE = 32


def round_up(count: int, tile: int) -> int:
    return -(-count // tile) * tile


def padded_width(kept: int, tile: int, full: int) -> int:
    """Neurons a gathered set of `kept` computes: rounded up to a multiple of `tile`, at most `full` (N)."""
    return max(kept, min(round_up(kept, tile), full))


def forwards_to_amortize(gathered_fraction: float, cost: float = GATHER_COST_IN_FORWARDS) -> int:
    """Masked decode forwards a mask set runs before auto gathers its weights: the forwards whose
    saving, proportional to the (1 - f) of the FFN bytes it skips, adds up to the gather's cost, a copy
    of f of them (`cost`: the forwards a gather of half the neurons takes to repay)."""
    if math.isinf(cost):
        return 2**31 - 1              # gathering never pays: stay masked
    return math.ceil(cost * gathered_fraction / (1.0 - gathered_fraction) - 1e-9)


@dataclass(frozen=True)
class CompactWeights:
    gate: torch.Tensor               # [k, d]
    up: torch.Tensor                 # [k, d]
    down: torch.Tensor               # [d, k]; [k, d] (W_down[:, K] transposed) when down_rows
    gate_bias: torch.Tensor | None
    up_bias: torch.Tensor | None
    down_bias: torch.Tensor | None
    row_mask: torch.Tensor | None = None   # [B, 1, k] keep mask of each row inside the gathered set
    ids: torch.Tensor | None = None        # [k] the gathered neuron ids (sorted)
    onednn: bool = False                   # run on oneDNN's kernel (packed or plain weights)
    down_rows: bool = False                # `down` gathered as rows of a transposed W_down: [k, d]
    row_tile: int = 1                      # a multi-token block's rows are padded to a multiple of this

    @property
    def width(self) -> int:
        """Neurons computed: the kept ones and, past them, the zero neurons padding them to the tile."""
        return self.gate.shape[0]

    @property
    def kept(self) -> int:
        return self.width if self.ids is None else int(self.ids.numel())

    @property
    def packed(self) -> bool:
        return self.gate.is_mkldnn

    def pack(self) -> CompactWeights:
        """These weights packed for oneDNN (self if they are already)."""
        if self.packed:
            return self
        down = self.down.t() if self.down_rows else self.down
        return replace(self, gate=pack_weight(self.gate), up=pack_weight(self.up), down=pack_weight(down),
                       onednn=True, down_rows=False)


def gather_layer(mlp: DartMLP, kept: torch.Tensor, row_mask: torch.Tensor | None = None,
                 onednn: bool = False, down_t: torch.Tensor | None = None, tile: int = 1,
                 row_tile: int = 1) -> CompactWeights:
    """Copy the kept rows of W_gate/W_up and columns of W_down (kept: sorted neuron ids [k]), to run on
    oneDNN's kernel if `onednn` (plain; `CompactWeights.pack` packs them), followed by zero neurons up
    to a multiple of `tile` (at most N). Gate and up stay two matmuls: one fused [2k, d] matmul measured
    no faster on CPU (0.994x)."""
    k = int(kept.numel())
    width = padded_width(k, tile, mlp.gate_proj.weight.shape[0])

    ids = kept if width == k else F.pad(kept, (0, width - k))      # the padding's rows copy neuron 0, then zeroed

    def rows(weight: torch.Tensor) -> torch.Tensor:         # [N, *] -> [width, *], zero past k
        out = weight.index_select(0, ids)                   # a new contiguous tensor
        if width > k:
            out[k:] = 0
        return out

    def bias(module) -> torch.Tensor | None:
        return None if module.bias is None else rows(module.bias)

    if down_t is None:
        down = mlp.down_proj.weight.index_select(1, kept)
        down = down if width == k else F.pad(down, (0, width - k))
    else:       # rows of W_down^T [N, d]: on a CPU 8x faster to copy than W_down's columns
        down = rows(down_t)
    if row_mask is not None and width > k:
        row_mask = F.pad(row_mask, (0, width - k))
    return CompactWeights(rows(mlp.gate_proj.weight), rows(mlp.up_proj.weight), down, bias(mlp.gate_proj),
                          bias(mlp.up_proj), mlp.down_proj.bias, row_mask, kept, onednn, down_t is not None, row_tile)


def compact_activations(mlp: DartMLP, hidden: torch.Tensor, weights: CompactWeights) -> torch.Tensor:
    """act(W_gate[K] x) * W_up[K] x for hidden [..., d]: [..., k]; rows masked inside K if given."""
    act = (mlp.act_fn(linear(hidden, weights.gate, weights.gate_bias, weights.onednn))
           * linear(hidden, weights.up, weights.up_bias, weights.onednn))
    if weights.row_mask is not None:
        act = act * weights.row_mask                                     # [B, T, k] * [B, 1, k]
    return act


def compact_down(act: torch.Tensor, weights: CompactWeights) -> torch.Tensor:
    """W_down[:, K] act for the kept neurons' activations [..., k]: [..., d]."""
    if weights.down_rows:
        out = torch.matmul(act, weights.down)
        return out if weights.down_bias is None else out + weights.down_bias
    return linear(act, weights.down, weights.down_bias, weights.onednn)


def compact_ffn(mlp: DartMLP, hidden: torch.Tensor, weights: CompactWeights) -> torch.Tensor:
    """y = W_down[:, K] (act(W_gate[K] x) * W_up[K] x) for hidden [B, T, d]; rows masked inside K if given."""
    return compact_block(mlp, hidden, weights)[1]


def compact_block(mlp: DartMLP, hidden: torch.Tensor, weights: CompactWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """(the kept neurons' activations [B, T, k], output [B, T, d]) for hidden [B, T, d]. A multi-token
    block's rows run padded with zero rows to a multiple of `weights.row_tile` (not under a row mask,
    which is per row)."""
    batch, tokens, d = hidden.shape
    rows = batch * tokens
    if tokens == 1 or weights.row_mask is not None:
        act = compact_activations(mlp, hidden, weights)
        return act[..., :weights.kept], compact_down(act, weights)
    x = hidden.reshape(rows, d)
    padded = round_up(rows, weights.row_tile)
    if padded > rows:
        x = torch.cat([x, x.new_zeros(padded - rows, d)])
    act = compact_activations(mlp, x, weights)                          # [padded, width]
    out = compact_down(act, weights)[:rows]
    return act[:rows, :weights.kept].unflatten(0, (batch, tokens)), out.unflatten(0, (batch, tokens))


def union_kept(kept_sets: list[list[torch.Tensor]], width: int) -> list[torch.Tensor]:
    """Per layer, the sorted union of the rows' kept neuron ids. kept_sets: [G][L] id tensors."""
    layers = len(kept_sets[0])
    flags = torch.zeros(layers, width, dtype=torch.bool, device=kept_sets[0][0].device)
    for kept in kept_sets:
        for layer in range(layers):
            flags[layer].index_fill_(0, kept[layer], True)
    ids = flags.nonzero()[:, 1]                      # one host sync for all layers: row-major order
    return list(ids.split(flags.sum(1).tolist()))


def choose_path(groups: int, gathered_fraction: float, path: str) -> str:
    """FFN path of a forward whose rows form `groups` distinct kept sets (rows sharing a state share
    one) reading `gathered_fraction` of the dense FFN bytes on the gathered path (k/N for one group,
    |U|/N for the union). `path` is the configured ffn_path."""
    if path == "masked" or gathered_fraction >= 1.0:
        return "masked"
    gathered = "compact" if groups == 1 else "union"
    if path == "compact" or gathered_fraction < AUTO_MAX_FRACTION:
        return gathered
    return "masked"


def choose_block_path(costs: dict[str, float], path: str) -> str:
    """FFN path of a prompt block from the neuron-token products each path computes per layer
    (`masked`: every padded token times N; the gathered ones: `union` or `compact`, and `rowwise`)."""
    if path == "masked":
        return "masked"
    gathered = {name: cost for name, cost in costs.items() if name != "masked"}
    best = min(gathered, key=gathered.__getitem__)
    if path == "compact" or gathered[best] < AUTO_MAX_FRACTION * costs["masked"]:
        return best
    return "masked"


@dataclass(frozen=True)
class FfnPlan:
    """The FFN path of one forward and, off the masked path, its gathered weights per layer."""

    path: str                                        # masked | compact | union | rowwise | shared
    weights: list[CompactWeights] | None = None
    widths: list[int] | None = None                  # gathered neurons per layer
    row_weights: list[list[CompactWeights] | None] | None = None   # rowwise: per row (None: idle), per layer
    masks: torch.Tensor | None = None                # masked path of a shared decode set: [1, L, N] for every row
    applied: list[int] | None = None                 # a shared decode set's widths, applied to every row

    @property
    def gathered(self) -> bool:
        return self.weights is not None or self.row_weights is not None

    def packed(self) -> FfnPlan:
        """This plan with its shared weights packed for oneDNN (for decode forwards; layers pack together)."""
        if self.weights is None or self.weights[0].packed:
            return self
        return replace(self, weights=[weights.pack() for weights in self.weights])


MASKED = FfnPlan("masked")

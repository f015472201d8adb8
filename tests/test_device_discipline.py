"""Device discipline of the engine, checked without a GPU: every tensor dart/ creates names its device,
and a decode step's host syncs do not grow with the number of layers (on a GPU each is a stall)."""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dart.config import DartConfig, DriftConfig, PrefillConfig

DART = Path(__file__).parents[1] / "dart"
FACTORIES = {"zeros", "ones", "empty", "full", "tensor", "arange", "randn", "rand", "randint", "randperm",
             "eye", "linspace", "as_tensor", "zeros_like", "ones_like", "empty_like", "full_like"}
LIKE = {"zeros_like", "ones_like", "empty_like", "full_like"}   # device of their argument unless told


def factory_calls_without_device(source: str) -> list[int]:
    """Lines of `torch.<factory>(...)` calls without a device= keyword (the *_like ones are exempt:
    they take their argument's device)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Name) and owner.id == "torch" and node.func.attr in FACTORIES - LIKE):
            continue
        if not any(k.arg == "device" for k in node.keywords):
            lines.append(node.lineno)
    return lines


def test_factory_check_finds_a_call_without_device():
    assert factory_calls_without_device("import torch\nx = torch.zeros(3)\ny = torch.ones(2, device=d)\n") == [2]


def test_every_tensor_dart_creates_names_its_device():
    found = {path.name: lines for path in sorted(DART.glob("*.py"))
             if (lines := factory_calls_without_device(path.read_text()))}
    assert not found, f"torch factory calls without device= in dart/: {found}"


SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2",
            "aten::is_nonzero", "aten::equal"}


class HostSyncs(TorchDispatchMode):
    """Counts the ops that make a GPU wait for the host to read a value: item/bool/int of a tensor,
    nonzero and boolean indexing (whose output shape is data), and tolist."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name().split(".")[0]     # aten::index.Tensor -> aten::index
        if name in SYNC_OPS:
            self.counts[name] += 1
        if name == "aten::index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                         for i in (args[1] or [])):
            self.counts["boolean index"] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        original = torch.Tensor.tolist

        def counted(tensor):
            self.counts["tolist"] += 1
            return original(tensor)

        self._original, torch.Tensor.tolist = original, counted
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._original
        return super().__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@pytest.fixture(scope="module")
def layered(tiny_model_factory):
    """layers -> (model, tokenizer) of a tiny Llama with that many layers."""
    from dart.loading import load_model
    from dart.model_config import ModelConfig

    loaded = {}

    def make(layers: int):
        if layers not in loaded:
            directory = tiny_model_factory(layers=layers, intermediate=64)
            loaded[layers] = load_model(ModelConfig(source=str(directory), device="cpu", dtype="float32"))
        return loaded[layers]

    return make


# drift monitored (a window closes every 2 tokens) but never firing, so both depths run the same schedule
WATCHED = DriftConfig(window=2, baseline_tokens=4, pressure=10**6)
CONFIGS = {
    "dense": DartConfig(method="dense"),
    "dart masked": DartConfig(method="dart", budget="uniform", keep_ratio=0.5, mask_step=1, ffn_path="masked",
                              drift=WATCHED),
    "dart compact": DartConfig(method="dart", budget="uniform", keep_ratio=0.5, mask_step=1, ffn_path="compact",
                               drift=WATCHED),
    "dart auto budget, blockwise": DartConfig(     # a fixed gather cost: auto's waits the same at both depths
        method="dart", budget="auto", keep_ratio=0.5, mask_step=1, drift=WATCHED, gather_cost=12.0,
        prefill=PrefillConfig(mode="blockwise", first_block_tokens=8, block_tokens=8)),
}


def decode_syncs(model_and_tokenizer, cfg: DartConfig, rows: int) -> list[Counter]:
    """Host syncs of each of 6 decode steps after a prefill of `rows` prompts of unequal length."""
    from dart.engine import DartEngine

    engine = DartEngine(*model_and_tokenizer, cfg)
    try:
        prompts = [list(range(10, 30 + 3 * b)) for b in range(rows)]
        logits, batch = engine.prefill(prompts)
        tokens = logits.argmax(-1)
        counts = []
        for _ in range(6):
            with HostSyncs() as syncs:
                tokens = engine.decode_step(batch, tokens).argmax(-1)
            counts.append(syncs.counts)
        return counts
    finally:
        engine.close()


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_decode_step_host_syncs_do_not_grow_with_layers(layered, name, rows):
    two, four = decode_syncs(layered(2), CONFIGS[name], rows), decode_syncs(layered(4), CONFIGS[name], rows)
    assert [sum(c.values()) for c in two] == [sum(c.values()) for c in four], (two, four)


def test_sync_counter_sees_item_nonzero_and_boolean_index():
    x = torch.arange(6)
    with HostSyncs() as syncs:
        x.sum().item()
        x[x > 2]
        torch.nonzero(x)
        x.tolist()
    assert syncs.counts["aten::_local_scalar_dense"] == 1 and syncs.counts["tolist"] == 1
    assert syncs.counts["aten::nonzero"] >= 2 or syncs.counts["boolean index"] == 1

"""The weights' dtype that `model.dtype: native` picks, the machine's native one, and `auto`.

On CUDA that is bfloat16 (float16 on a GPU without bfloat16). On a CPU it depends on the chip: one
with AVX512-BF16 or AMX runs a bfloat16 matmul 2-7x faster than float32, one without emulates it,
slower. So `native` measures both dtypes on matmuls of the model's FFN shape (torch's kernel and oneDNN's
packed one, a decode step's rows and a prompt block's) and takes bfloat16 when it is clearly faster;
the verdict is cached on disk per CPU, torch build, thread count and shape, beside the kernel verdicts.
DART's statistics, scores and drift cosines are float32 whatever the weights (dart.state).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from .kernels import best_seconds, faster, linear, onednn_available, pack
from .verdicts import cpu_model, measured_once, read_verdict, verdict_key, write_verdict

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MEASURED_ROWS = (4, 256)          # a decode step of a batch, a prompt block
MEASURED_BYTES = 96 * 2**20       # float32 weights streamed per measurement: more than any CPU cache
# Below this hidden size a matmul is mostly call overhead: native keeps float32 without measuring.
MIN_HIDDEN_TO_MEASURE = 256


def resolve_dtype(name: str, device: torch.device, ffn_shape: tuple[int, int, int] | None = None,
                  cache_dir: Path | None = None) -> torch.dtype:
    """The dtype of `model.dtype`. `native` is the machine's fastest: bfloat16 on CUDA (float16 without
    it), and on a CPU what measures faster (ffn_shape: layers, FFN width, hidden; without it, or for a
    tiny model, float32). `auto` is `native` on CUDA and float32 on a CPU: there the main job's DART
    lost ROUGE-L in bfloat16 on 200 XSum documents (-0.009 [-0.017, -0.002]) where dense did not
    (docs/studies/dtype/), and dense and DART runs keep one dtype so that they compare alike."""
    if name not in ("auto", "native"):
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "auto" or device.type != "cpu" or ffn_shape is None or ffn_shape[2] < MIN_HIDDEN_TO_MEASURE:
        return torch.float32
    return cached_cpu_dtype(ffn_shape, cache_dir)


def ffn_weights(dtype: torch.dtype, ffn_shape: tuple[int, int, int]) -> list[torch.Tensor]:
    """Random [width, hidden] weights of `dtype`: as many as a forward streams, up to MEASURED_BYTES."""
    layers, width, hidden = ffn_shape
    count = max(1, min(layers, MEASURED_BYTES // (width * hidden * 4)))
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(width, hidden, generator=generator, device="cpu").to(dtype) for _ in range(count)]


@torch.inference_mode()
def matmul_seconds(ffn_shape: tuple[int, int, int]) -> dict[tuple[torch.dtype, int], float]:
    """Per (dtype, rows), seconds of the dtype's faster kernel (torch's, oneDNN's packed) over
    `ffn_weights`, at each of MEASURED_ROWS rows; every variant measured in alternation."""
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        weights = ffn_weights(dtype, ffn_shape)
        for rows in MEASURED_ROWS:
            x = torch.zeros(rows, ffn_shape[2], dtype=dtype, device="cpu").normal_()
            runs[(dtype, rows, "torch")] = lambda x=x, ws=weights: [F.linear(x, w) for w in ws]
            if onednn_available(torch.device("cpu")):
                packed = [pack(w) for w in weights]
                runs[(dtype, rows, "onednn")] = lambda x=x, ps=packed: [linear(x, p) for p in ps]
    seconds = best_seconds(runs)
    kernels = {kernel for _, _, kernel in seconds}
    return {(dtype, rows): min(seconds[(dtype, rows, kernel)] for kernel in kernels)
            for dtype in (torch.float32, torch.bfloat16) for rows in MEASURED_ROWS}


def measured_cpu_dtype(ffn_shape: tuple[int, int, int]) -> torch.dtype:
    """bfloat16 if its matmuls are `faster` than float32's (each on its faster kernel), else float32."""
    seconds = matmul_seconds(ffn_shape)
    ratios = [seconds[(torch.bfloat16, rows)] / seconds[(torch.float32, rows)] for rows in MEASURED_ROWS]
    choice = torch.bfloat16 if faster(ratios) else torch.float32
    log.info("model dtype native -> %s: bfloat16 takes %s of float32's matmul time at %s rows (FFN %s, "
             "%d thread(s), %s)", choice, "/".join(f"{r:.2f}" for r in ratios), "/".join(map(str, MEASURED_ROWS)),
             ffn_shape, torch.get_num_threads(), cpu_model() or "CPU")
    return choice


def verdict_path(ffn_shape: tuple[int, int, int], cache_dir: Path) -> Path | None:
    """Where the measured dtype for this CPU, torch, thread count and shape is cached (None: CPU unknown)."""
    return verdict_key("dtype", {"ffn": list(ffn_shape), "rows": MEASURED_ROWS, "rule": "faster-v1"}, cache_dir)


def cached_cpu_dtype(ffn_shape: tuple[int, int, int], cache_dir: Path | None) -> torch.dtype:
    """measured_cpu_dtype, read from / stored in `cache_dir` (None: measured every time)."""
    path = None if cache_dir is None else verdict_path(ffn_shape, cache_dir)

    def read() -> torch.dtype | None:
        name = read_verdict(path, ("float32", "bfloat16"))
        if name is not None:
            log.info("model dtype native -> %s (measured before, %s)", name, path)
        return None if name is None else DTYPES[name]

    return measured_once(path, read, lambda: measured_cpu_dtype(ffn_shape),
                         lambda choice: write_verdict(path, dtype_name(choice)))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")

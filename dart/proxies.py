"""Forward proxies pmax/pmean (DART_SPEC section 1): static, data-free, computed once per model and
cached on disk, however many processes start at once (a file lock around compute-and-store).

The work is L x N x d x V multiply-adds (2 L N d V = 117 TFLOP for a 1.5B Qwen2 with its 152k
vocabulary). Small models are computed in float32; above `NATIVE_FROM_FLOPS` the products run in bf16
with float32 accumulation where the device has native bf16 (the real_model test in
tests/test_proxies.py measures the ranking they give against float32 on SmolLM2), on every core the
process may use, with a progress bar on stderr.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .filelock import exclusive
from .model_config import cache_root

log = logging.getLogger(__name__)

NATIVE_FROM_FLOPS = 1e12   # below, float32 takes seconds anyway and stays exact to the spec
CHUNK = 8192               # vocabulary rows per product: an [N, CHUNK] block, 290 MB at N=8960 in float32


@dataclass(frozen=True)
class Proxies:
    pmax: torch.Tensor    # [L, N] float32
    pmean: torch.Tensor   # [L, N] float32


@torch.no_grad()   # the weights are Parameters: with autograd on, every chunk's product would be kept
def layer_proxies(down_weight: torch.Tensor, embed: torch.Tensor, chunk: int = CHUNK,
                  dtype: torch.dtype = torch.float32, progress: tqdm | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """max_v / mean_v |C[i, v]| of C = W_down^T E^T, chunked over V so N x V is never held.

    down_weight: [d, N] (nn.Linear(N, d).weight); embed: [V, d]. Products in `dtype` (the matmul
    accumulates in float32 for bf16 too), reductions in float32, the mean's sum in float64."""
    w = down_weight.detach().to(dtype).T                       # [N, d]
    vocab, width = embed.shape[0], w.shape[0]
    pmax = torch.zeros(width, dtype=torch.float32, device=w.device)
    psum = torch.zeros(width, dtype=torch.float64, device=w.device)
    sum_dtype = torch.float64 if dtype == torch.float32 else torch.float32   # per chunk; float64 across chunks
    for start in range(0, vocab, chunk):
        rows = embed[start:start + chunk].detach().to(dtype)   # [Vc, d]
        block = (w @ rows.T).abs_()                            # [N, Vc] in dtype
        pmax = torch.maximum(pmax, block.amax(dim=1).float())
        psum += block.sum(dim=1, dtype=sum_dtype)
        if progress is not None:
            progress.update(2 * width * w.shape[1] * rows.shape[0] / 1e9)
    return pmax, (psum / vocab).float()


def proxy_work(down_weights: list[torch.Tensor], embed: torch.Tensor) -> float:
    """FLOPs of the proxies: 2 L N d V."""
    return 2.0 * sum(w.shape[0] * w.shape[1] for w in down_weights) * embed.shape[0]


def native_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the device multiplies it natively (CUDA with bf16, a CPU with AVX512-BF16 or AMX),
    else float32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return torch.float32


def compute_proxies(down_weights: list[torch.Tensor], embed: torch.Tensor,
                    dtype: torch.dtype | None = None) -> Proxies:
    """All layers' proxies; `dtype` None: float32 for small models, `native_dtype` above NATIVE_FROM_FLOPS."""
    work = proxy_work(down_weights, embed)
    if dtype is None:
        dtype = torch.float32 if work < NATIVE_FROM_FLOPS else native_dtype(embed.device)
    table = embed.detach().to(dtype)   # [V, d], converted once for every layer
    start = time.perf_counter()
    with _all_cores(embed.device) as threads:
        log.info("forward proxies: %d layers x %d neurons x %d vocabulary rows = %.1f TFLOP in %s on %s (%s)",
                 len(down_weights), down_weights[0].shape[1], embed.shape[0], work / 1e12,
                 str(dtype).removeprefix("torch."), embed.device, f"{threads} threads" if threads else "GPU")
        with _progress(work, dtype, threads) as bar:
            pairs = _all_layers(down_weights, table, dtype, bar)
            bar.update(bar.total - bar.n)   # the chunks' float sum can fall short of the total by a rounding
    log.info("forward proxies computed in %.1fs", time.perf_counter() - start)
    return Proxies(torch.stack([p for p, _ in pairs]).cpu(), torch.stack([m for _, m in pairs]).cpu())


def _all_layers(down_weights: list[torch.Tensor], table: torch.Tensor, dtype: torch.dtype,
                bar: tqdm) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (pmax, pmean); after the first, the time all will take, estimated."""
    start = time.perf_counter()
    pairs = []
    for index, weight in enumerate(down_weights):
        pairs.append(layer_proxies(weight, table, dtype=dtype, progress=bar))
        if index == 0 and len(down_weights) > 1:
            spent = time.perf_counter() - start
            log.info("forward proxies: first layer in %.1fs, all %d in about %.0fs", spent,
                     len(down_weights), spent * len(down_weights))
    return pairs


@contextlib.contextmanager
def _all_cores(device: torch.device) -> Iterator[int | None]:
    """On a CPU, torch's threads raised to every core this process may use (an actor runs with its
    own share, but the others wait on the lock meanwhile); restored after."""
    if device.type != "cpu":
        yield None
        return
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(before, cores))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _progress(work: float, dtype: torch.dtype, threads: int | None) -> tqdm:
    """A bar on stderr: a terminal redraws it; in an actor (Ray forwards its stderr to the driver's
    console) each refresh, every 30 s, is a line with the time left."""
    on_terminal = sys.stderr.isatty()
    where = f"{threads} threads" if threads else "GPU"
    return tqdm(total=work / 1e9, unit="GFLOP", desc=f"forward proxies ({work / 1e12:.1f} TFLOP, "
                f"{str(dtype).removeprefix('torch.')}, {where}, once per model)", file=sys.stderr,
                ascii=not on_terminal, mininterval=0.5 if on_terminal else 30, disable=work < NATIVE_FROM_FLOPS,
                bar_format="{desc}: {percentage:3.0f}% |{bar:20}| {elapsed}<{remaining}, {rate_fmt}")


def default_cache_dir() -> Path:
    return cache_root() / "proxies"


def _read_cached(path: Path, shape: tuple[int, int]) -> Proxies | None:
    if not path.exists():
        return None
    try:
        tensors = load_file(str(path))
        if tensors["pmax"].shape == shape:
            return Proxies(tensors["pmax"], tensors["pmean"])
    except Exception as exc:  # a corrupt cache entry is recomputed, never trusted
        log.warning("ignoring unreadable proxy cache %s: %s", path, exc)
    return None


def load_or_compute(down_weights: list[torch.Tensor], embed: torch.Tensor, fingerprint: str | None,
                    cache_dir: Path | None = None) -> Proxies:
    """Proxies from the disk cache keyed by the model's fingerprint, else computed and stored atomically,
    once: a process that finds another computing them waits for its result."""
    if fingerprint is None:
        return compute_proxies(down_weights, embed)
    path = (cache_dir or default_cache_dir()) / f"{fingerprint}.safetensors"
    shape = (len(down_weights), down_weights[0].shape[1])
    cached = _read_cached(path, shape)
    if cached is not None:
        return cached
    with exclusive(path.with_name(f".{path.name}.lock"), "computing forward proxies"):
        cached = _read_cached(path, shape)   # computed by the process this one waited for
        if cached is not None:
            return cached
        log.info("computing forward proxies once for this model (cached at %s)", path)
        proxies = compute_proxies(down_weights, embed)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file({"pmax": proxies.pmax.contiguous(), "pmean": proxies.pmean.contiguous()}, str(tmp))
        os.replace(tmp, path)
    return proxies

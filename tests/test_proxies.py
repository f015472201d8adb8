"""dart.proxies at scale: bf16 products against float32 (on SmolLM2: the ranking they give), and the
cache computed once when two processes start at once."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dart.proxies import NATIVE_FROM_FLOPS, compute_proxies, layer_proxies, native_dtype, proxy_work

ROOT = Path(__file__).parents[1]
log = logging.getLogger(__name__)


def test_bf16_products_stay_within_bf16_rounding_of_exact():
    torch.manual_seed(0)
    down, embed = torch.randn(40, 37), torch.randn(301, 40)     # d=40, N=37, V=301
    c = (down.double().T @ embed.double().T).abs()             # [N, V] exact
    pmax, pmean = layer_proxies(down, embed, chunk=64, dtype=torch.bfloat16)
    assert pmax.dtype == pmean.dtype == torch.float32
    # inputs and each product rounded to bf16 (8 bits): a few parts in a thousand, not more
    assert torch.allclose(pmax.double(), c.max(dim=1).values, rtol=2e-2)
    assert torch.allclose(pmean.double(), c.mean(dim=1), rtol=2e-2)
    assert not torch.equal(pmax, layer_proxies(down, embed, chunk=64)[0])   # bf16 did run


def test_small_models_are_computed_in_float32_exactly():
    torch.manual_seed(1)
    downs, embed = [torch.randn(16, 24) for _ in range(3)], torch.randn(50, 16)
    assert proxy_work(downs, embed) == 2 * 3 * 16 * 24 * 50 < NATIVE_FROM_FLOPS
    proxies = compute_proxies(downs, embed)
    for layer, down in enumerate(downs):
        pmax, pmean = layer_proxies(down, embed)
        assert torch.equal(proxies.pmax[layer], pmax) and torch.equal(proxies.pmean[layer], pmean)


RACE = """
import logging, sys, time
from pathlib import Path
import torch
from dart.proxies import load_or_compute
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
cache, me, other = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
torch.manual_seed(0)
downs, embed = [torch.randn(256, 1024) for _ in range(2)], torch.randn(60000, 256)   # 63 GFLOP in float32
me.touch()
while not other.exists():          # both start together
    time.sleep(0.005)
proxies = load_or_compute(downs, embed, "racefingerprint", cache)
print("pmax", proxies.pmax.sum().item(), "pmean", proxies.pmean.sum().item())
"""


def test_two_processes_at_once_compute_the_proxies_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    flags = [tmp_path / "a", tmp_path / "b"]
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path / "proxies"), str(me), str(other)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for me, other in (flags, flags[::-1])]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum(out.count("computing forward proxies once") for out in outputs) == 1, outputs
    assert sum(out.count("waiting for another process") for out in outputs) == 1, outputs   # they overlapped
    assert len({out.splitlines()[-1] for out in outputs}) == 1                             # the same proxies
    assert sorted(p.name for p in (tmp_path / "proxies").iterdir()) == [".racefingerprint.safetensors.lock",
                                                                        "racefingerprint.safetensors"]


def rank_agreement(a: torch.Tensor, b: torch.Tensor, keep: float) -> tuple[float, float, float]:
    """(Spearman rank correlation, overlap of the top `keep` fraction, max relative difference) of two [N] vectors."""
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    spearman = torch.corrcoef(torch.stack([ra, rb]))[0, 1].item()
    k = int(keep * a.numel())
    top_a, top_b = set(a.topk(k).indices.tolist()), set(b.topk(k).indices.tolist())
    return spearman, len(top_a & top_b) / k, ((a - b).abs() / a.abs()).max().item()


@pytest.mark.real_model
def test_bf16_proxies_rank_smollm2_neurons_as_float32(smollm2_dir):
    """On SmolLM2-135M: per layer, Spearman of the neurons' ranks and the overlap of the top 30% and
    50% under pmax and pmean, bf16 products against float32 (`-o log_cli=true` prints the table)."""
    if native_dtype(torch.device("cpu")) != torch.bfloat16:
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 or AMX): the proxies stay in float32 here")
    from safetensors.torch import load_file

    weights = load_file(str(smollm2_dir / "model.safetensors"))
    downs = [weights[f"model.layers.{i}.mlp.down_proj.weight"] for i in range(30)]
    embed = weights["model.embed_tokens.weight"]
    timed = {}
    for dtype in (torch.float32, torch.bfloat16):
        start = time.perf_counter()
        timed[dtype] = compute_proxies(downs, embed, dtype=dtype), time.perf_counter() - start
    log.info("SmolLM2 proxies (%.1f TFLOP): float32 %.1fs, bf16 %.1fs on %d threads", proxy_work(downs, embed) / 1e12,
             timed[torch.float32][1], timed[torch.bfloat16][1], torch.get_num_threads())
    exact, fast = timed[torch.float32][0], timed[torch.bfloat16][0]
    cases = [(name, keep) for name in ("pmax", "pmean") for keep in (0.3, 0.5)]
    rows = [[rank_agreement(getattr(exact, name)[layer], getattr(fast, name)[layer], keep) for name, keep in cases]
            for layer in range(30)]
    for layer, row in enumerate(rows):
        log.info("layer %2d  %s", layer, "  ".join(f"{n}@{k:.0%}: rho {r:.6f} top {o:.4f} rel {e:.1e}"
                                                   for (n, k), (r, o, e) in zip(cases, row)))
    for column, (name, keep) in enumerate(cases):
        rho = min(row[column][0] for row in rows)
        overlap = min(row[column][1] for row in rows)
        rel = max(row[column][2] for row in rows)
        log.info("%s top %.0f%%: worst layer rho %.6f, top-k overlap %.4f, relative difference %.1e",
                 name, keep * 100, rho, overlap, rel)
        assert rho > 0.999 and overlap > 0.98 and rel < 1e-2, (name, keep, rho, overlap, rel)

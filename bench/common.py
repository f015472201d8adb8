"""Shared pieces of the benchmarks: models that share weights, step-wise decoders, interleaved timing.

Timings on a shared machine drift by 2x within seconds, so no absolute time is trusted: every
variant decodes the same prompts side by side, one token each in turn (the order rotates every
token), and each table reports medians of per-token time ratios against a reference variant.
"""
from __future__ import annotations

import copy
import logging
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import DynamicCache

from dart.config import DartConfig
from dart.engine import DartEngine
from dart.gather_cost import synchronize
from dart.kv_cache import growing_cache
from dart.patch import decoder_layers
from dart.proxies import Proxies, load_or_compute

log = logging.getLogger(__name__)

DATA = Path(__file__).parents[1] / "data" / "xsum_sample.parquet"


def set_threads(threads: int) -> None:
    """CPU threads of torch. One by default: on a shared, oversubscribed machine, two OpenMP threads
    wait on each other at every op and small decode ops take 10-100x longer."""
    if threads > 0:
        torch.set_num_threads(threads)


def sibling(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with its own modules (so an engine can patch it) sharing every weight."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def engine_proxies(model, fingerprint: str | None) -> Proxies:
    """Forward proxies once per model (every engine of a benchmark reuses them)."""
    down = [layer.mlp.down_proj.weight for layer in decoder_layers(model)]
    return load_or_compute(down, model.get_input_embeddings().weight.detach(), fingerprint)


def load_embedded(threads: int, device: str = "cpu", level: int = logging.INFO, dtype: str = "native",
                  keep_heap: bool = True):
    """Logging, torch threads, the embedded SmolLM2 (in `dtype`: native is the machine's fastest) and
    its proxies: what every bench starts with; on a CPU freed blocks kept, as in the job's actors, unless
    not `keep_heap`. Returns (model, tokenizer, proxies)."""
    from dart.host_memory import keep_freed_memory
    from dart.loading import load_model, model_fingerprint
    from dart.model_config import ModelConfig

    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    set_threads(threads)
    model, tokenizer = load_model(ModelConfig(device=device, dtype=dtype))
    if model.device.type == "cpu" and keep_heap:
        keep_freed_memory()                 # as the job's actors (dart.host_memory)
    return model, tokenizer, engine_proxies(model, model_fingerprint(model))


def document_prompts(tokenizer, count: int, length: int) -> list[list[int]]:
    """`count` XSum documents cut to exactly `length` tokens each (no padding in the batch)."""
    import pyarrow.parquet as pq

    docs = pq.read_table(DATA, columns=["document"]).column("document").to_pylist()
    prompts = []
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            prompts.append(ids[:length])
        if len(prompts) == count:
            return prompts
    raise ValueError(f"fewer than {count} documents of {length} tokens in {DATA}")


def random_prompts(vocab: int, count: int, length: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (count, length), generator=gen).tolist()


def null_tokenizer(pad_id: int = 0) -> SimpleNamespace:
    """What the engine reads of a tokenizer, for random-weight models without one."""
    return SimpleNamespace(eos_token_id=None, pad_token_id=pad_id)


class HfDecoder:
    """Greedy decode with the unpatched Hugging Face model: the true dense cost. With `growing`, on the
    engine's KV cache (dart.kv_cache), so that a bound differs from the engine in its FFN alone."""

    def __init__(self, model, growing: bool = False) -> None:
        self.model, self.growing = model, growing
        self.device = model.get_input_embeddings().weight.device

    @torch.inference_mode()
    def start(self, prompts: list[list[int]]) -> None:
        ids = torch.tensor(prompts, device=self.device)
        self.cache = growing_cache(self.model.config) if self.growing else DynamicCache(config=self.model.config)
        self.mask = torch.ones_like(ids)
        logits = self.model(input_ids=ids, attention_mask=self.mask, cache=self.cache, use_cache=True,
                            logits_to_keep=1).logits
        self.tokens = logits[:, -1].argmax(-1)
        self.position = ids.shape[1]

    @torch.inference_mode()
    def step(self) -> None:
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.mask), 1)], dim=1)
        position = torch.full((len(self.mask), 1), self.position, device=self.device)
        logits = self.model(input_ids=self.tokens[:, None], attention_mask=self.mask, position_ids=position,
                            cache=self.cache, use_cache=True, logits_to_keep=1).logits
        self.tokens = logits[:, -1].argmax(-1)
        self.position += 1

    def summary(self) -> dict:
        return {}


class EngineDecoder:
    """Greedy decode through DartEngine's public steps (`prefill`, then `decode_step` one token at a
    time, so variants can interleave)."""

    def __init__(self, engine: DartEngine) -> None:
        self.engine = engine

    def start(self, prompts: list[list[int]]) -> None:
        self.engine.release_gathered()          # the previous repetition's copies, before the prefill
        logits, self.batch = self.engine.prefill(prompts)
        self.tokens = logits.argmax(-1)

    def step(self) -> None:
        self.tokens = self.engine.decode_step(self.batch, self.tokens).argmax(-1)

    def summary(self) -> dict:
        """Applied sparsity over generated tokens, share of forwards per FFN path, executed bytes."""
        states = self.batch.states
        t = [self.engine.telemetry(s, 0, len(s.ledger.sparsity) - 1, 0.0, 0.0) for s in states]
        forwards = sum(len(s.ledger.sparsity) for s in states)
        return {
            "applied_sparsity": statistics.fmean(x.applied_sparsity for x in t),
            "compact_share": sum(x.compact_forwards - x.union_forwards for x in t) / forwards,
            "union_share": sum(x.union_forwards for x in t) / forwards,
            "bytes_ratio": sum(x.ffn_bytes_executed for x in t) / max(1, sum(x.ffn_bytes_dense for x in t)),
            "drift_events": sum(x.drift_events for x in t),
            "state_bytes": max(x.dart_state_bytes for x in t),
            "overhead_flops_ratio": sum(x.dart_overhead_flops for x in t) / max(1, sum(x.ffn_flops_dense for x in t)),
        }


@dataclass
class Timings:
    """Per-token seconds of each variant; steps[name][rep][token]."""

    steps: dict[str, list[list[float]]] = field(default_factory=dict)
    summaries: dict[str, list[dict]] = field(default_factory=dict)

    def ratios(self, name: str, reference: str) -> list[float]:
        """Per-token speed of `name` relative to `reference` (reference time / name time)."""
        return [r / n for ref_rep, rep in zip(self.steps[reference], self.steps[name])
                for r, n in zip(ref_rep, rep)]

    def speedup(self, name: str, reference: str) -> float:
        return statistics.median(self.ratios(name, reference))

    def summary(self, name: str) -> dict:
        runs = self.summaries.get(name) or [{}]
        return {k: statistics.fmean(run[k] for run in runs) for k in runs[0]}


def interleave(decoders: dict, prompts: list[list[int]], tokens: int, reps: int, device: torch.device,
               warmup: int = 2) -> Timings:
    """Decode `tokens` tokens with every decoder, one token each in turn, `reps` times."""
    timings = Timings({name: [] for name in decoders}, {name: [] for name in decoders})
    names = list(decoders)
    for rep in range(reps):
        for name in names:
            decoders[name].start(prompts)
            timings.steps[name].append([])
        for token in range(tokens + warmup):
            shift = (token + rep) % len(names)
            for name in names[shift:] + names[:shift]:
                synchronize(device)
                start = time.perf_counter()
                decoders[name].step()
                synchronize(device)
                if token >= warmup:
                    timings.steps[name][-1].append(time.perf_counter() - start)
        for name in names:
            timings.summaries[name].append(decoders[name].summary())
        log.info("rep %d/%d done", rep + 1, reps)
    return timings


def engines(model, tokenizer, configs: dict[str, DartConfig | None], proxies: Proxies) -> dict:
    """One decoder per variant, each on its own sibling of `model` (None: the unpatched model)."""
    return {name: HfDecoder(sibling(model)) if cfg is None else
            EngineDecoder(DartEngine(sibling(model), tokenizer, cfg, proxies=proxies))
            for name, cfg in configs.items()}


def close(decoders: dict) -> None:
    for decoder in decoders.values():
        if isinstance(decoder, EngineDecoder):
            decoder.engine.close()


def write_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = [title, "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def machine() -> str:
    import platform

    from dart.verdicts import cpu_model

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return (f"{cpu_model() or platform.machine()} CPU ({cpu_flags()}), {torch.get_num_threads()} torch thread(s) "
            f"(torch {torch.__version__})")


def cpu_flags() -> str:
    """The CPU's bfloat16 features: what decides whether bfloat16 runs natively."""
    from dart.cpu_info import native_bf16_flags

    native = native_bf16_flags()
    if native is None:
        return "flags unknown"
    return "+".join(native) if native else "no native bf16"


def dtype_argument(parser) -> None:
    parser.add_argument("--dtype", default="native", choices=["native", "auto", "float32", "bfloat16"],
                        help="model dtype (native: the machine's fastest, as model.dtype: native picks)")


def engine_kernel(model, setting: str = "auto") -> str:
    """The Linear kernel an engine on `model` runs under `dart.linear_kernel: setting` (auto: measured once)."""
    from dart import kernels

    return kernels.choose_kernel(setting, [layer.mlp.gate_proj.weight for layer in decoder_layers(model)],
                                 model.config.hidden_size, kernels_cache())


def kernels_cache() -> Path:
    from dart.model_config import cache_root

    return cache_root() / "kernels"


def cut_sibling(model: torch.nn.Module, keep: float, seed: int = 0, kernel: str = "torch") -> torch.nn.Module:
    """The bound of a sparsity: a sibling of `model` whose every FFN keeps a fixed random `keep` of its
    neurons physically (smaller Linears, same dtype), on the engines' Linear kernel."""
    from dart import kernels

    cut = sibling(model)
    generator = torch.Generator().manual_seed(seed)
    for layer in decoder_layers(cut):
        width = layer.mlp.gate_proj.out_features
        kept = torch.randperm(width, generator=generator)[:round(keep * width)].sort().values
        for name in ("gate_proj", "up_proj"):
            setattr(layer.mlp, name, cut_linear(getattr(layer.mlp, name).weight[kept]))
        layer.mlp.down_proj = cut_linear(layer.mlp.down_proj.weight[:, kept])
    if kernel == "onednn":
        kernels.route_linears(cut, decoder_layers(cut))
    return cut


def cut_linear(weight: torch.Tensor) -> torch.nn.Linear:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    linear.weight = torch.nn.Parameter(weight.contiguous(), requires_grad=False)
    return linear

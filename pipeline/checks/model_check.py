"""Model settings checked in the driver before any work, without loading a model library: a local
source exists, an embedded model's wheels are installed, and the job's token limits fit the model's
context where its config.json says it."""
from __future__ import annotations

import json
from pathlib import Path

from dart.embedded import check_installed
from dart.model_config import ModelConfig, source_kind

from ..config import JobConfig
from ..tasks import TASKS


def model_context(model: ModelConfig) -> int | None:
    """The model's context in tokens, or None where only loading the model would tell (hub ids,
    GGUF files). Raises ValueError for a local source that does not exist, or an embedded model whose
    wheels are not installed (naming the pip command)."""
    kind = source_kind(model.source)
    if kind == "embedded":
        return check_installed(model.source).context
    config = Path(model.source).expanduser() / "config.json"
    if kind != "dir" or not config.is_file():
        return None
    value = json.loads(config.read_text()).get("max_position_embeddings")
    return value if isinstance(value, int) else None


def explicit_setting(config: JobConfig, dotted: str) -> int | None:
    """The value at a dotted key when the config sets it (a default that does not fit a small
    model's context only means its truncation never binds), else None."""
    *sections, name = dotted.split(".")
    section = config
    for part in sections:
        section = getattr(section, part)
    return getattr(section, name) if name in section.model_fields_set else None


def check_model(config: JobConfig) -> None:
    """The source exists, and every token limit the config sets leaves room in the model's context."""
    context = model_context(config.model)
    if context is None:
        return
    for key in TASKS[config.task].token_limits:
        value = explicit_setting(config, key)
        if value is not None and value >= context:
            raise ValueError(f"{key}={value} does not fit the model's context of {context} tokens "
                             f"({config.model.source}); set it below {context}")

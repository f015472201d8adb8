"""What every task shares: its registry entry, the context it runs in, and the generation loop."""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from dart.config import FrozenModel, GenerationConfig
from dart.telemetry import SequenceTelemetry

from .prompts import Prompt, PromptBuilder, RowError, plain_ids
from ..settings import InputConfig
from .batching import SharedBatch


@dataclass(frozen=True)
class TaskContext:
    """The parts of a job config a task reads."""

    settings: Any                 # the task's own settings section
    input: InputConfig
    generation: GenerationConfig
    batch_size: int


@dataclass(frozen=True)
class TaskSpec:
    """One task: its settings section, its runner, what it writes and how its quality is read."""

    name: str
    description: str
    settings: type[FrozenModel]                        # the job config section named after the task
    runner: Callable[..., Any]                         # (TaskContext, tokenizer, engine) -> .run(rows)
    output_fields: tuple[pa.Field, ...]                # beside the shared `output` column
    required_inputs: tuple[str, ...]                   # input.* keys that must be set
    quality_metrics: tuple[tuple[str, str], ...]       # (column, title), the primary metric first
    summary_metrics: tuple[tuple[str, str, str], ...]  # (summary key, column, closing-table title)
    token_limits: tuple[str, ...]                      # dotted job config keys, in tokens of the context
    check: Callable[[InputConfig, Any], None] | None = None   # further checks of the config


def row_seed(base: int, row_id: str) -> int:
    """Each row samples from its own seed, so outputs do not depend on batch composition."""
    return (base * 1_000_003 + int(hashlib.sha256(row_id.encode()).hexdigest()[:12], 16)) % (2**63)


def error_values(err: Exception) -> dict[str, Any]:
    return {"status": "error", "error": f"{type(err).__name__}: {err}"}


def references(row: dict, column: str | None) -> list[str] | None:
    """The row's non-empty reference strings (one string or a list of them), or None."""
    value = row.get(column) if column else None
    if value is None:
        return None
    refs = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [str(value)]
    refs = [r for r in refs if isinstance(r, str) and r.strip()]
    return refs or None


def telemetry_values(telemetry: SequenceTelemetry | None) -> dict[str, Any]:
    if telemetry is None:
        return {}
    values = telemetry.to_dict()
    values.pop("method", None)
    return values


class GenerationTask:
    """Shared loop of the generating tasks: prepare rows, generate in batches, finish rows."""

    def __init__(self, context: TaskContext, tokenizer, engine) -> None:
        self.context, self.tokenizer, self.engine = context, tokenizer, engine
        settings = context.settings
        self.builder = PromptBuilder(tokenizer, settings.prompt_template, settings.use_chat_template,
                                     settings.system_prompt)
        self.prompt_token_limit = engine.max_context - context.generation.max_new_tokens
        self.batch = SharedBatch(engine, context.generation, context.batch_size)
        # A fast tokenizer keeps per-call options (split_special_tokens) as shared state: the threads of
        # an actor's items take turns with it.
        self.tokenizing = threading.Lock()

    def prepare(self, row: dict) -> tuple[Prompt, dict[str, Any]]:
        raise NotImplementedError

    def finish(self, row: dict, text: str, extra: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def reference_ids(self, row: dict, prompt: Prompt) -> tuple[int, ...]:
        """The first reference's token ids, cut to fit the context after the prompt, when the row reports
        its teacher-forced NLL (mean per token under the masks DART forms from the prompt, no drift inside
        the reference); () otherwise. It is scored from the row's own prefill."""
        refs = references(row, self.context.input.reference_column) if self.context.settings.reference_nll else None
        if not refs:
            return ()
        return tuple(plain_ids(self.tokenizer, refs[0])[:self.engine.max_context - len(prompt.ids)])

    def run(self, rows: list[tuple[str, dict]]) -> list[dict[str, Any]]:
        """One output dict per (row id, row), in order. The rows join the actor's continuous batch."""
        out: list[dict[str, Any] | None] = [None] * len(rows)
        ready = []
        with self.tokenizing:
            for i, (_, row) in enumerate(rows):
                try:
                    prompt, extra = self.prepare(row)
                    ready.append((i, prompt, self.reference_ids(row, prompt), extra))
                except RowError as err:
                    out[i] = error_values(err)
        seed = self.context.generation.seed
        results = self.batch.generate([(prompt.ids, row_seed(seed, rows[i][0]), reference)
                                       for i, prompt, reference, _ in ready])
        with self.tokenizing:
            for (i, _, reference, extra), result in zip(ready, results):
                out[i] = error_values(result) if isinstance(result, ValueError) else \
                    self.finish_row(rows[i][1], reference, extra, result)
        return out

    def finish_row(self, row: dict, reference: tuple[int, ...], extra: dict[str, Any], result) -> dict[str, Any]:
        text = self.tokenizer.decode(result.token_ids, skip_special_tokens=True).strip()
        values = self.finish(row, text, extra)
        if self.context.settings.reference_nll:
            values["reference_nll"] = None if result.score is None else -result.score / len(reference)
        telemetry = result.telemetry
        values.update(telemetry_values(telemetry), output=values.get("output", text), finish_reason=result.finish_reason,
                      batch_seconds=telemetry.prefill_seconds + telemetry.decode_seconds, status="ok")
        return values

"""Labeling / multiple choice: each choice's continuation is scored by log-likelihood under the
masks DART forms from the prompt; no text is generated."""
from __future__ import annotations

import threading
import time
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator

from dart.config import FrozenModel

from .prompts import PromptBuilder, RowError, plain_ids, text_field
from ..settings import InputConfig, check_template
from .base import TaskContext, TaskSpec, error_values, telemetry_values


class LabelConfig(FrozenModel):
    prompt_template: str = Field(
        "{question}\n{choices}\nAnswer:",
        description="Prompt with {question} and {choices} (the lettered list of choices).")
    system_prompt: str | None = Field(None, description="System message when the chat template is used.")
    use_chat_template: bool = Field(False, description="Wrap the prompt in the tokenizer's chat template if it has one.")
    choice_labels: str = Field("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_length=2,
                               description="Label of choice i is choice_labels[i].")
    choices: list[str] | None = Field(None, description="Fixed choices for every row (e.g. [Yes, No]) "
                                      "when there is no choices column.")
    score: Literal["label", "text"] = Field(
        "label", description="Score the continuation ' <label>' or ' <choice text>'.")
    max_question_tokens: int = Field(1024, ge=1, description="Rows whose prompt is longer become error rows.")

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str) -> str:
        return check_template(v, {"question", "choices"}, {"question"})


def check_choices(inp: InputConfig, settings: LabelConfig) -> None:
    if (inp.choices_column is None) == (settings.choices is None):
        raise ValueError("task label needs exactly one of input.choices_column and label.choices")


class LabelTask:
    """Multiple choice: each choice's continuation scored by log-likelihood under the prompt's masks."""

    def __init__(self, context: TaskContext, tokenizer, engine) -> None:
        self.context, self.tokenizer, self.engine = context, tokenizer, engine
        cfg = context.settings
        self.builder = PromptBuilder(tokenizer, cfg.prompt_template, cfg.use_chat_template, cfg.system_prompt)
        self.lock = threading.Lock()     # an actor may run several items' calls at once; one engine

    def choices(self, row: dict) -> list[str]:
        cfg, column = self.context.settings, self.context.input.choices_column
        if column is None:
            return list(cfg.choices)
        choices = row.get(column)
        if choices is None or isinstance(choices, str) or not hasattr(choices, "__len__"):
            raise RowError(f"choices ({column}) must be a list of strings, got {type(choices).__name__}")
        if len(choices) < 2 or any(not isinstance(c, str) or not c.strip() for c in choices):
            raise RowError(f"choices ({column}) need at least two non-empty strings")
        if len(choices) > len(cfg.choice_labels):
            raise RowError(f"{len(choices)} choices but only {len(cfg.choice_labels)} choice_labels")
        return list(choices)

    def gold(self, row: dict, choices: list[str]) -> int | None:
        column = self.context.input.reference_column
        value = row.get(column) if column else None
        labels = self.context.settings.choice_labels[:len(choices)]
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(choices):
            return value
        if isinstance(value, str):
            text = value.strip()
            if len(text) == 1 and text in labels:
                return labels.index(text)
            if text in choices:
                return choices.index(text)
        return None

    def label_row(self, row: dict) -> dict[str, Any]:
        inp, cfg = self.context.input, self.context.settings
        question = text_field(row, inp.question_column, "question", inp.max_text_chars)
        choices = self.choices(row)
        labels = cfg.choice_labels[:len(choices)]
        block = "\n".join(f"{label}. {choice}" for label, choice in zip(labels, choices))
        ids = self.builder.build_plain({"question": question, "choices": block})
        if len(ids) > cfg.max_question_tokens:
            raise RowError(f"prompt has {len(ids)} tokens, over label.max_question_tokens={cfg.max_question_tokens}")
        texts = labels if cfg.score == "label" else choices
        continuations = [plain_ids(self.tokenizer, " " + t) for t in texts]
        began = time.perf_counter()
        scores = self.engine.score_continuations(ids, continuations)
        best = max(range(len(choices)), key=lambda k: scores.logprobs[k])
        gold = self.gold(row, choices)
        return {
            "output": labels[best], "label_index": best, "choices": choices,
            "choice_logprobs": list(scores.logprobs), "choice_token_counts": list(scores.token_counts),
            "gold_label": labels[gold] if gold is not None else None,
            "correct": (best == gold) if gold is not None else None,
            **telemetry_values(scores.telemetry), "batch_seconds": time.perf_counter() - began, "status": "ok",
        }

    def run(self, rows: list[tuple[str, dict]]) -> list[dict[str, Any]]:
        out = []
        for _, row in rows:
            try:
                with self.lock:
                    out.append(self.label_row(row))
            except ValueError as err:   # RowError, or the engine refusing this row
                out.append(error_values(err))
        return out


SPEC = TaskSpec(
    name="label",
    description="multiple choice, each choice scored by log-likelihood",
    settings=LabelConfig,
    runner=LabelTask,
    output_fields=(
        pa.field("label_index", pa.int64()),
        pa.field("choices", pa.list_(pa.string())),
        pa.field("choice_logprobs", pa.list_(pa.float64())),
        pa.field("choice_token_counts", pa.list_(pa.int64())),
        pa.field("gold_label", pa.string()),
        pa.field("correct", pa.bool_()),
    ),
    required_inputs=("question_column",),
    quality_metrics=(("correct", "accuracy"),),
    summary_metrics=(("accuracy", "correct", "accuracy"),),
    token_limits=("label.max_question_tokens",),
    check=check_choices,
)

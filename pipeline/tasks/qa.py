"""Question answering: a question (and optionally a context) in, a short answer out, token F1 / EM."""
from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator

from .metrics import best_over_references, exact_match, token_f1
from .prompts import Prompt, text_field
from ..settings import GenerationTaskConfig, check_template
from .base import GenerationTask, TaskSpec, references


class QaConfig(GenerationTaskConfig):
    prompt_template: str = Field(
        "{context}\n\nQuestion: {question}\nAnswer in a few words.",
        description="User message with {question} and optionally {context}.")
    max_context_tokens: int = Field(512, ge=1, description="The context (or, without a context column, "
                                    "the question) is cut to this many tokens.")
    truncation_side: Literal["right", "left"] = Field(
        "right", description="Which end of the context to cut ('left' keeps the end).")
    first_line_only: bool = Field(True, description="Keep only the first line of the generated answer.")

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str) -> str:
        return check_template(v, {"context", "question"}, {"question"})


class QaTask(GenerationTask):
    def prepare(self, row: dict) -> tuple[Prompt, dict[str, Any]]:
        inp, cfg = self.context.input, self.context.settings
        values = {"question": text_field(row, inp.question_column, "question", inp.max_text_chars)}
        field = "question"
        if inp.text_column:
            values["context"] = text_field(row, inp.text_column, "context", inp.max_text_chars)
            field = "context"
        prompt = self.builder.build(values, field, cfg.max_context_tokens, self.prompt_token_limit,
                                    cfg.truncation_side)
        return prompt, {"context_tokens": prompt.field_tokens, "truncated": prompt.truncated}

    def finish(self, row: dict, text: str, extra: dict[str, Any]) -> dict[str, Any]:
        if self.context.settings.first_line_only:
            text = (text.splitlines() or [""])[0].strip()
        refs = references(row, self.context.input.reference_column)
        scores = {"f1": None, "exact_match": None}
        if refs:
            scores = {"f1": best_over_references(token_f1, text, refs),
                      "exact_match": best_over_references(exact_match, text, refs)}
        return {**extra, "output": text, "references": refs, **scores}


SPEC = TaskSpec(
    name="qa",
    description="a question (and optionally a context) to a short answer",
    settings=QaConfig,
    runner=QaTask,
    output_fields=(
        pa.field("context_tokens", pa.int64()),
        pa.field("truncated", pa.bool_()),
        pa.field("references", pa.list_(pa.string())),
        pa.field("f1", pa.float64()),
        pa.field("exact_match", pa.float64()),
        pa.field("reference_nll", pa.float64()),     # null unless qa.reference_nll
    ),
    required_inputs=("question_column",),
    quality_metrics=(("f1", "token F1"), ("exact_match", "EM")),
    summary_metrics=(("f1", "f1", "F1"), ("exact_match", "exact_match", "EM")),
    token_limits=("generation.max_new_tokens", "qa.max_context_tokens"),
)

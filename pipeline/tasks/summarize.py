"""Bulk summarization: a document in, one summary out, ROUGE against a reference when there is one."""
from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import Field, field_validator

from .metrics import rouge_scores
from .prompts import Prompt, text_field
from ..settings import GenerationTaskConfig, check_template
from .base import GenerationTask, TaskSpec, references


class SummarizeConfig(GenerationTaskConfig):
    prompt_template: str = Field(
        "Summarize the following article in one sentence.\n\n{document}",
        description="User message; {document} is the (truncated) document.")
    max_document_tokens: int = Field(512, ge=1, description="Documents are cut to this many tokens "
                                     "(the row's `truncated` flag says so).")

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str) -> str:
        return check_template(v, {"document"}, {"document"})


class SummarizeTask(GenerationTask):
    def prepare(self, row: dict) -> tuple[Prompt, dict[str, Any]]:
        inp, cfg = self.context.input, self.context.settings
        document = text_field(row, inp.text_column, "document", inp.max_text_chars)
        prompt = self.builder.build({"document": document}, "document", cfg.max_document_tokens,
                                    self.prompt_token_limit)
        return prompt, {"document_tokens": prompt.field_tokens, "truncated": prompt.truncated}

    def finish(self, row: dict, text: str, extra: dict[str, Any]) -> dict[str, Any]:
        refs = references(row, self.context.input.reference_column)
        reference = refs[0] if refs else None
        scores = rouge_scores(text, reference) if reference else {"rouge_l": None, "rouge_1": None, "rouge_2": None}
        return {**extra, "reference": reference, **scores}


SPEC = TaskSpec(
    name="summarize",
    description="one-sentence summaries of documents",
    settings=SummarizeConfig,
    runner=SummarizeTask,
    output_fields=(
        pa.field("document_tokens", pa.int64()),
        pa.field("truncated", pa.bool_()),
        pa.field("reference", pa.string()),
        pa.field("rouge_l", pa.float64()),
        pa.field("rouge_1", pa.float64()),
        pa.field("rouge_2", pa.float64()),
        pa.field("reference_nll", pa.float64()),     # null unless summarize.reference_nll
    ),
    required_inputs=("text_column",),
    quality_metrics=(("rouge_l", "ROUGE-L"), ("rouge_1", "ROUGE-1"), ("rouge_2", "ROUGE-2")),
    summary_metrics=(("rouge_l", "rouge_l", "ROUGE-L"),),
    token_limits=("generation.max_new_tokens", "summarize.max_document_tokens"),
)

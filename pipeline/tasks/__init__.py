"""The task registry: one entry per task, each defined whole in its own module.

A new task is one module that defines its settings model, runner, output fields and metrics as a
`TaskSpec` named SPEC, plus its line below. What the tasks share: `base.py` (TaskSpec, TaskContext,
the generation runner), `batching.py` (an actor's one continuous batch), `prompts.py` (prompt token ids
from a template), `metrics.py` (ROUGE, token F1, exact match)."""
from __future__ import annotations

from . import label, qa, summarize
from .base import TaskContext, TaskSpec
from .metrics import exact_match, normalize_answer, rouge_l, rouge_scores, token_f1, word_match
from .prompts import PromptBuilder, render

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (summarize.SPEC, qa.SPEC, label.SPEC)}

__all__ = ["TASKS", "PromptBuilder", "TaskContext", "TaskSpec", "exact_match", "normalize_answer", "render",
           "rouge_l", "rouge_scores", "token_f1", "word_match"]

"""The task registry: one entry per task, each defined whole in its own module.

A new task is one module that defines its settings model, runner, output fields and metrics as a
`TaskSpec` named SPEC, plus its line below."""
from __future__ import annotations

from . import label, qa, summarize
from .base import TaskContext, TaskSpec

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (summarize.SPEC, qa.SPEC, label.SPEC)}

__all__ = ["TASKS", "TaskContext", "TaskSpec"]

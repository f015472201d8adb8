"""The three tasks: rows in, output values out. A bad row gives an error value, never an exception."""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from .config import JobConfig
from .metrics import best_over_references, exact_match, rouge_scores, token_f1
from .prompts import Prompt, PromptBuilder, RowError, text_field
from .schema import telemetry_values

logger = logging.getLogger(__name__)


def row_seed(base: int, row_id: str) -> int:
    """Each row samples from its own seed, so outputs do not depend on batch composition."""
    return (base * 1_000_003 + int(hashlib.sha256(row_id.encode()).hexdigest()[:12], 16)) % (2**63)


def error_values(err: Exception) -> dict[str, Any]:
    return {"status": "error", "error": f"{type(err).__name__}: {err}"}


def _references(value: Any) -> list[str] | None:
    if value is None:
        return None
    refs = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [str(value)]
    refs = [r for r in refs if isinstance(r, str) and r.strip()]
    return refs or None


class GenerationTask:
    """Shared loop of summarize and qa: prepare rows, generate in batches, finish rows."""

    def __init__(self, config: JobConfig, tokenizer, engine) -> None:
        self.config, self.tokenizer, self.engine = config, tokenizer, engine
        settings = config.task_settings
        self.builder = PromptBuilder(tokenizer, settings.prompt_template, settings.use_chat_template,
                                     settings.system_prompt)
        self.budget = engine.max_context - config.generation.max_new_tokens

    def prepare(self, row: dict) -> tuple[Prompt, dict[str, Any]]:
        raise NotImplementedError

    def finish(self, row: dict, text: str, extra: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def nll_reference(self, values: dict[str, Any]) -> str | None:
        """The reference text whose teacher-forced NLL the row reports."""
        raise NotImplementedError

    def reference_nll(self, prompt_ids: list[int], reference: str | None) -> float | None:
        """Mean NLL per reference token after the prompt, under the masks DART forms from the prompt
        (no drift inside the reference); cut to fit the context; None without a reference."""
        if not reference:
            return None
        ids = self.tokenizer(reference, add_special_tokens=False)["input_ids"]
        ids = list(ids)[:self.engine.max_context - len(prompt_ids)]
        if not ids:
            return None
        try:
            scores = self.engine.score_continuations(prompt_ids, [ids])
        except ValueError as err:   # the engine refusing it must not sink the generated row
            logger.warning("reference NLL not computed: %s", err)
            return None
        return -scores.logprobs[0] / scores.token_counts[0]

    def run(self, rows: list[tuple[str, dict]]) -> list[dict[str, Any]]:
        """One output dict per (row id, row), in order."""
        out: list[dict[str, Any] | None] = [None] * len(rows)
        ready = []
        for i, (_, row) in enumerate(rows):
            try:
                ready.append((i, *self.prepare(row)))
            except RowError as err:
                out[i] = error_values(err)
        size = self.config.pool.batch_size
        for start in range(0, len(ready), size):
            for i, values in self._generate(rows, ready[start:start + size]):
                out[i] = values
        return out

    def _generate(self, rows, batch):
        gen = self.config.generation
        seeds = [row_seed(gen.seed, rows[i][0]) for i, _, _ in batch]
        began = time.perf_counter()
        try:
            results = self.engine.generate([p.ids for _, p, _ in batch], gen, seeds=seeds)
        except ValueError:
            if len(batch) == 1:
                raise
            # One row the engine refuses must not sink the others: run each alone.
            for one in batch:
                try:
                    yield from self._generate(rows, [one])
                except ValueError as err:
                    yield one[0], error_values(err)
            return
        seconds = time.perf_counter() - began
        for (i, prompt, extra), result in zip(batch, results):
            text = self.tokenizer.decode(result.token_ids, skip_special_tokens=True).strip()
            values = self.finish(rows[i][1], text, extra)
            if self.config.task_settings.reference_nll:
                values["reference_nll"] = self.reference_nll(prompt.ids, self.nll_reference(values))
            values.update(telemetry_values(result.telemetry), output=values.get("output", text),
                          finish_reason=result.finish_reason, batch_seconds=seconds, status="ok")
            yield i, values


class SummarizeTask(GenerationTask):
    def prepare(self, row: dict) -> tuple[Prompt, dict[str, Any]]:
        inp, cfg = self.config.input, self.config.summarize
        document = text_field(row, inp.text_column, "document", inp.max_text_chars)
        prompt = self.builder.build({"document": document}, "document", cfg.max_document_tokens, self.budget)
        return prompt, {"document_tokens": prompt.field_tokens, "truncated": prompt.truncated}

    def finish(self, row: dict, text: str, extra: dict[str, Any]) -> dict[str, Any]:
        refs = _references(row.get(self.config.input.reference_column)) if self.config.input.reference_column else None
        reference = refs[0] if refs else None
        scores = rouge_scores(text, reference) if reference else {"rouge_l": None, "rouge_1": None, "rouge_2": None}
        return {**extra, "reference": reference, **scores}

    def nll_reference(self, values: dict[str, Any]) -> str | None:
        return values.get("reference")


class QaTask(GenerationTask):
    def prepare(self, row: dict) -> tuple[Prompt, dict[str, Any]]:
        inp, cfg = self.config.input, self.config.qa
        values = {"question": text_field(row, inp.question_column, "question", inp.max_text_chars)}
        field = "question"
        if inp.text_column:
            values["context"] = text_field(row, inp.text_column, "context", inp.max_text_chars)
            field = "context"
        prompt = self.builder.build(values, field, cfg.max_context_tokens, self.budget, cfg.truncation_side)
        return prompt, {"context_tokens": prompt.field_tokens, "truncated": prompt.truncated}

    def finish(self, row: dict, text: str, extra: dict[str, Any]) -> dict[str, Any]:
        if self.config.qa.first_line_only:
            text = (text.splitlines() or [""])[0].strip()
        refs = _references(row.get(self.config.input.reference_column)) if self.config.input.reference_column else None
        scores = {"f1": None, "exact_match": None}
        if refs:
            scores = {"f1": best_over_references(token_f1, text, refs),
                      "exact_match": best_over_references(exact_match, text, refs)}
        return {**extra, "output": text, "references": refs, **scores}

    def nll_reference(self, values: dict[str, Any]) -> str | None:
        return (values.get("references") or [None])[0]


class LabelTask:
    """Multiple choice: each choice's continuation scored by log-likelihood under the prompt's masks."""

    def __init__(self, config: JobConfig, tokenizer, engine) -> None:
        self.config, self.tokenizer, self.engine = config, tokenizer, engine
        cfg = config.label
        self.builder = PromptBuilder(tokenizer, cfg.prompt_template, cfg.use_chat_template, cfg.system_prompt)

    def _choices(self, row: dict) -> list[str]:
        cfg, column = self.config.label, self.config.input.choices_column
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

    def _gold(self, row: dict, choices: list[str]) -> int | None:
        column = self.config.input.reference_column
        value = row.get(column) if column else None
        labels = self.config.label.choice_labels[:len(choices)]
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(choices):
            return value
        if isinstance(value, str):
            text = value.strip()
            if len(text) == 1 and text in labels:
                return labels.index(text)
            if text in choices:
                return choices.index(text)
        return None

    def _one(self, row: dict) -> dict[str, Any]:
        inp, cfg = self.config.input, self.config.label
        question = text_field(row, inp.question_column, "question", inp.max_text_chars)
        choices = self._choices(row)
        labels = cfg.choice_labels[:len(choices)]
        block = "\n".join(f"{label}. {choice}" for label, choice in zip(labels, choices))
        ids = self.builder.build_plain({"question": question, "choices": block})
        if len(ids) > cfg.max_question_tokens:
            raise RowError(f"prompt has {len(ids)} tokens, over label.max_question_tokens={cfg.max_question_tokens}")
        texts = labels if cfg.score == "label" else choices
        continuations = [self.tokenizer(" " + t, add_special_tokens=False)["input_ids"] for t in texts]
        began = time.perf_counter()
        scores = self.engine.score_continuations(ids, continuations)
        best = max(range(len(choices)), key=lambda k: scores.logprobs[k])
        gold = self._gold(row, choices)
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
                out.append(self._one(row))
            except ValueError as err:   # RowError, or the engine refusing this row
                out.append(error_values(err))
        return out


TASKS = {"summarize": SummarizeTask, "qa": QaTask, "label": LabelTask}

"""Typed job configuration: YAML plus `key=value` overrides, validated before anything runs."""
from __future__ import annotations

import json
from pathlib import Path
from string import Formatter
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from dart.config import DartConfig, FrozenModel, GenerationConfig
from dart.model_config import ModelConfig

from .identity import dart_settings, digest

TaskName = Literal["summarize", "qa", "label"]

# Bump when the output rows of an unchanged config would change (schema, prompts, seeds).
PIPELINE_VERSION = 1


def check_template(template: str, allowed: set[str], required: set[str]) -> str:
    """A prompt template may name only plain `{field}`s: no attributes, indexes or conversions."""
    names = set()
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"bad prompt template ({err}); write literal braces as {{{{ }}}}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in allowed or spec or conversion:
            raise ValueError(f"prompt template field {{{name}}} not allowed; use only "
                             f"{sorted('{' + a + '}' for a in allowed)}")
        names.add(name)
    missing = required - names
    if missing:
        raise ValueError(f"prompt template must contain {sorted('{' + m + '}' for m in missing)}")
    return template


class InputConfig(FrozenModel):
    """Where rows come from and which columns the task reads."""

    paths: list[str] = Field(min_length=1, description="Parquet/Arrow files, directories, globs or "
                             "fsspec/pyarrow URIs (s3://...), or Hugging Face dataset names.")
    hf_split: str = Field("train", description="Split to load when a path is a Hugging Face dataset name.")
    id_column: str | None = Field("id", description="Column with each row's id; null derives "
                                  "'<file>#<row>' ids deterministically.")
    text_column: str | None = Field(None, description="summarize: the document; qa: the context (optional).")
    question_column: str | None = Field(None, description="qa and label: the question.")
    choices_column: str | None = Field(None, description="label: list of answer choices per row "
                                       "(or set label.choices for a fixed set).")
    reference_column: str | None = Field(None, description="Reference summary, answer(s) or gold label; "
                                         "enables ROUGE-L, F1/EM or accuracy.")
    passthrough_columns: list[str] = Field(default_factory=list, description="Input columns copied to the output.")
    rows_per_item: int = Field(64, ge=1, description="Rows per work item (one output part each).")
    max_text_chars: int = Field(200_000, ge=1, description="Rows whose text fields are longer than "
                                "this many characters become error rows (guards the tokenizer).")
    limit: int | None = Field(None, ge=1, description="Plan only the first `limit` rows over the input "
                              "files in order (null: all rows); e.g. a study on the first N documents.")

    @property
    def columns(self) -> list[str]:
        """Every input column the job reads, in a fixed order, without repeats."""
        names = [self.id_column, self.text_column, self.question_column, self.choices_column,
                 self.reference_column, *self.passthrough_columns]
        return list(dict.fromkeys(n for n in names if n))


class OutputConfig(FrozenModel):
    dir: str = Field("outputs", description="Output root; each config writes to <dir>/<task>-<fingerprint>.")


class PoolConfig(FrozenModel):
    """The Ray actor pool. Only batch_size changes outputs, so only it enters the fingerprint."""

    num_actors: int = Field(2, ge=1, description="Ray actors, each hosting one model.")
    num_gpus_per_actor: float = Field(0, ge=0, description="GPUs per actor (>1 spans a model over "
                                      "several GPUs with accelerate's device map); 0 runs on CPU.")
    cpus_per_actor: int = Field(1, ge=1, description="CPUs reserved per actor; also its torch threads on CPU.")
    batch_size: int = Field(8, ge=1, description="Rows per engine call inside an actor.")
    max_attempts: int = Field(3, ge=1, description="Attempts of a work item before its rows become error rows.")
    max_restarts: int = Field(3, ge=0, description="Times Ray restarts a dead actor.")
    in_flight_per_actor: int = Field(2, ge=1, description="Work items queued on each actor at once.")
    ray_address: str | None = Field(None, description="Ray cluster address ('auto': the running local "
                                    "cluster); null uses RAY_ADDRESS, else starts a private Ray on 127.0.0.1.")
    local_num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray the job starts (null: all).")


class ChatPromptConfig(FrozenModel):
    """How a task's user message is wrapped for the model."""

    system_prompt: str | None = Field(None, description="System message when the chat template is used.")
    use_chat_template: bool = Field(True, description="Wrap the prompt in the tokenizer's chat template if it has one.")


class GenerationTaskConfig(ChatPromptConfig):
    """A task that generates text and has references to score it against."""

    reference_nll: bool = Field(False, description="Also score the reference (QA: the first accepted answer) by "
                                "teacher forcing: mean negative log-likelihood per reference token under the masks "
                                "DART forms from the prompt (column reference_nll; one more forward per row).")


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


class ControlConfig(FrozenModel):
    """How this invocation runs; never changes output rows, so not in the fingerprint."""

    progress: bool = Field(True, description="Show a progress bar (items, rows/s, time left).")
    max_items: int | None = Field(None, ge=0, description="Run at most this many pending work items, "
                                  "then stop (a later run resumes).")
    log_level: str = Field("INFO", description="Logging level of the job.")


class TestingConfig(FrozenModel):
    """Fault injection for tests only; not in the fingerprint."""

    fail_ids: list[str] = Field(default_factory=list, description="A work item containing one of these "
                                "row ids raises on every attempt (tests the bounded retries).")
    delay_seconds: float = Field(0, ge=0, le=60, description="Each work item sleeps this long before it "
                                 "runs (tests stop a worker or the driver in the middle of an item).")


class JobConfig(FrozenModel):
    """One batch job: what to read, which model and DART settings, what to write, on what pool."""

    task: TaskName = Field(description="summarize | qa | label.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Which model to load (default: embedded SmolLM2).")
    dart: DartConfig = Field(default_factory=DartConfig, description="DART pruning settings.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Decoding settings.")
    input: InputConfig = Field(description="Input datasets and columns.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Where runs are written.")
    pool: PoolConfig = Field(default_factory=PoolConfig, description="Ray actor pool.")
    summarize: SummarizeConfig = Field(default_factory=SummarizeConfig, description="summarize task settings.")
    qa: QaConfig = Field(default_factory=QaConfig, description="qa task settings.")
    label: LabelConfig = Field(default_factory=LabelConfig, description="label task settings.")
    control: ControlConfig = Field(default_factory=ControlConfig, description="This invocation only.")
    testing: TestingConfig = Field(default_factory=TestingConfig, description="Test-only fault injection.")

    @model_validator(mode="after")
    def _columns_for_task(self) -> "JobConfig":
        need = {"summarize": ["text_column"], "qa": ["question_column"], "label": ["question_column"]}[self.task]
        for key in need:
            if getattr(self.input, key) is None:
                raise ValueError(f"task {self.task} needs input.{key}")
        if self.task == "label" and (self.input.choices_column is None) == (self.label.choices is None):
            raise ValueError("task label needs exactly one of input.choices_column and label.choices")
        return self

    @property
    def task_settings(self) -> SummarizeConfig | QaConfig | LabelConfig:
        return getattr(self, self.task)

    def fingerprint(self, plan_digest: str) -> str:
        """Hash of everything that decides the output rows, plus the planned work items."""
        semantic = {
            "version": PIPELINE_VERSION, "task": self.task, "plan": plan_digest,
            "model": self.model.model_dump(mode="json", exclude={"cache_dir"}), "dart": dart_settings(self.dart),
            "generation": self.generation.model_dump(mode="json"),
            "input": self.input.model_dump(mode="json"), "batch_size": self.pool.batch_size,
            "task_settings": self.task_settings.model_dump(mode="json"),
        }
        return digest(semantic)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b.c=value` sets data[a][b][c]; values parse as YAML scalars/flow lists, never as code."""
    out = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ValueError(f"override {key}: cannot parse value {raw!r}: {err}") from None
        node = out
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {key}: {'.'.join(parts[:depth + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def validation_message(what: str, err: ValidationError) -> str:
    """One line per invalid field, each naming its dotted key."""
    lines = [f"{'.'.join(str(p) for p in e['loc']) or '<config>'}: {e['msg']}" for e in err.errors()]
    return f"invalid {what}:\n  " + "\n  ".join(lines)


def parse_config(data: dict[str, Any]) -> JobConfig:
    """Validate plain data; errors name the dotted key."""
    try:
        return JobConfig.model_validate(data)
    except ValidationError as err:
        raise ValueError(validation_message("job config", err)) from None


def load_config(path: str | Path | None, overrides: list[str] = (), task: str | None = None) -> JobConfig:
    """Read a YAML file (or nothing), apply overrides, set the job's task, and validate."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        try:
            loaded = yaml.safe_load(text)   # plain data only: python tags are refused, never run
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not a plain YAML config: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: top level must be a mapping")
        data = loaded or {}
    data = apply_overrides(data, list(overrides))
    if task is not None:
        if data.get("task", task) != task:
            raise ValueError(f"config says task {data['task']!r} but this job runs {task!r}")
        data["task"] = task
    return parse_config(data)


def dump_config(config: JobConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

"""Sections of a job config that every task shares: input, output, pool, prompts, control, testing."""
from __future__ import annotations

from string import Formatter
from typing import Any, Literal

from pydantic import Field, field_validator

from dart.config import FrozenModel


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
        if name in names:   # a field is cut to fit once; a second copy would double its tokens unseen
            raise ValueError(f"prompt template names {{{name}}} more than once; name each field once")
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
    """Where runs are written; never changes output rows, so not in the fingerprint."""

    dir: str = Field("outputs", description="Output root, a local path or an fsspec URI (s3://bucket/runs, "
                     "gs://..., memory://...); each config writes to <dir>/<task>-<fingerprint>. Under "
                     "`ray job submit` it must be absolute on shared storage, or a URI.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options of an "
                                            "object-store output.dir (e.g. {endpoint_url: http://host:9000}); "
                                            "keep secrets in the store's environment variables, not here "
                                            "(this config is written next to the outputs).")
    lease_seconds: float = Field(60, ge=5, le=3600, description="Object-store output: the driver's lease on "
                                 "the run expires this long after its last renewal (renewed every third).")


class PoolConfig(FrozenModel):
    """The Ray actor pool. Only batch_size changes outputs, so only it enters the fingerprint."""

    num_actors: int = Field(2, ge=1, description="Ray actors, each hosting one model.")
    num_gpus_per_actor: float = Field(0, ge=0, description="GPUs per actor (>1 spans a model over "
                                      "several GPUs with accelerate's device map); 0 runs on CPU.")
    cpus_per_actor: int = Field(1, ge=1, description="CPUs reserved per actor; also its torch threads on CPU.")
    memory_per_actor_gb: float | None = Field(None, gt=0, description="Host memory one CPU actor needs, in GB: "
                                              "a pool the nodes' memory cannot hold starts fewer actors, with a "
                                              "warning (a job's pool gives them the CPUs the others would have had). null: estimated from the model, dtype and DART settings "
                                              "where the driver can tell the model's size (embedded models, local "
                                              "directories); GPU actors are not sized by it.")
    batch_size: int = Field(8, ge=1, description="Rows per engine call inside an actor.")
    max_attempts: int = Field(3, ge=1, description="Attempts of a work item before its rows become error rows.")
    max_restarts: int = Field(3, ge=0, description="Times Ray restarts a dead actor.")
    in_flight_per_actor: int = Field(2, ge=1, description="Work items on each actor at once: their rows "
                                     "share the actor's continuous batch, so a row finishing in one item is "
                                     "replaced by a waiting row of another.")
    ray_address: str | None = Field(None, description="Ray cluster address ('auto': the running local "
                                    "cluster); null uses RAY_ADDRESS, else starts a private Ray on 127.0.0.1.")
    local_num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray the job starts (null: all).")
    placement_timeout_s: float = Field(600, ge=0, le=86_400, description="On a cluster whose autoscaler "
                                       "can add nodes: seconds to wait for nodes that can place the pool before "
                                       "failing. A fixed-size cluster that cannot place it fails at once.")


class ChatPromptConfig(FrozenModel):
    """How a task's user message is wrapped for the model."""

    system_prompt: str | None = Field(None, description="System message when the chat template is used.")
    use_chat_template: bool = Field(True, description="Wrap the prompt in the tokenizer's chat template if it has one.")


class GenerationTaskConfig(ChatPromptConfig):
    """A task that generates text and has references to score it against."""

    reference_nll: bool = Field(False, description="Also score the reference (QA: the first accepted answer) by "
                                "teacher forcing: mean negative log-likelihood per reference token under the masks "
                                "DART forms from the prompt (column reference_nll; one forward over the reference, "
                                "from the row's own prefill).")


class ControlConfig(FrozenModel):
    """How this invocation runs; never changes output rows, so not in the fingerprint."""

    progress: bool = Field(True, description="Show a progress bar (items, rows/s, time left).")
    max_items: int | None = Field(None, ge=0, description="Run at most this many pending work items, "
                                  "then stop (a later run resumes).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Logging level of the job (DEBUG, INFO, WARNING, ERROR or CRITICAL; any case).")

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v
    log_dir: str | None = Field(None, description="Local folder of each invocation's log file "
                                "(<task>-<UTC time>-<pid>.log: every log line, with the full traceback of a "
                                "failure that the terminal shows as one line); null: logs/ in the model cache "
                                "(DART_CACHE_DIR, default ~/.cache/dart-pipeline).")
    retry_failed: bool = Field(False, description="Run again the items whose rows became error rows after "
                               "pool.max_attempts failed attempts (by default a rerun keeps them).")


class TestingConfig(FrozenModel):
    """Fault injection for tests only; not in the fingerprint."""

    fail_ids: list[str] = Field(default_factory=list, description="A work item containing one of these "
                                "row ids raises on every attempt (tests the bounded retries).")
    delay_seconds: float = Field(0, ge=0, le=60, description="Each work item sleeps this long before it "
                                 "runs (tests stop a worker or the driver in the middle of an item).")

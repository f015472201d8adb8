"""Typed job configuration: YAML plus `key=value` overrides, validated before anything runs; what
identifies a run (the settings that can change its output rows, and their hash)."""
from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from dart.config import DartConfig, FrozenModel, GenerationConfig
from dart.model_config import ModelConfig

from .settings import ControlConfig, InputConfig, OutputConfig, PoolConfig, TestingConfig
from .tasks import TASKS, TaskContext

# Drift knobs whose value here computes exactly what the engine computed before the knob existed:
# left out of the identity at that value, so runs recorded before it keep their fingerprint.
NEUTRAL_DRIFT_KNOBS: dict[str, object] = {"replay_tokens": 0}
# Prefill knobs of the drift monitor (read by method dart alone), at their neutral values.
PREFILL_DRIFT_KNOBS: dict[str, object] = {"drift_in_prompt": True}
# Knobs whose default computes what the engine computed before they existed.
NEUTRAL_KNOBS: dict[str, object] = {"decode_masks": "per_row"}


def dart_settings(dart: DartConfig) -> dict[str, Any]:
    """The DART settings that can change what the engine computes: dense reads none of the pruning
    knobs and only dart reads `drift`, so the unread ones are left out."""
    if dart.method == "dense":
        return {"method": "dense"}
    # linear_kernel chooses how the same matmuls run, as the device does, and gather_cost when ffn_path
    # auto gathers: they change float rounding only
    how = {"linear_kernel", "gather_cost"}
    settings = dart.model_dump(mode="json", exclude=how if dart.drift_enabled else how | {"drift"})
    for knob, neutral in NEUTRAL_KNOBS.items():
        if settings[knob] == neutral:
            del settings[knob]
    if dart.drift_enabled:
        for knob, neutral in NEUTRAL_DRIFT_KNOBS.items():
            if settings["drift"][knob] == neutral:
                del settings["drift"][knob]
    if dart.prefill.mode == "dense":     # today's prefill, which reads no other prefill knob
        del settings["prefill"]
    else:
        for knob, neutral in PREFILL_DRIFT_KNOBS.items():
            if not dart.drift_enabled or settings["prefill"][knob] == neutral:
                del settings["prefill"][knob]
    return settings


def digest(value: Any, length: int = 16) -> str:
    """Hex SHA-256 of plain data in a canonical JSON form."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


# Bump when the output rows of an unchanged config would change (schema, prompts, seeds).
PIPELINE_VERSION = 1


class JobBase(FrozenModel):
    """One batch job: what to read, which model and DART settings, what to write, on what pool.
    JobConfig adds one settings section per registered task."""

    task: Literal[tuple(TASKS)] = Field(description=" | ".join(TASKS) + ".")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Which model to load (default: embedded SmolLM2).")
    dart: DartConfig = Field(default_factory=DartConfig, description="DART pruning settings.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Decoding settings.")
    input: InputConfig = Field(description="Input datasets and columns.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Where runs are written.")
    pool: PoolConfig = Field(default_factory=PoolConfig, description="Ray actor pool.")
    control: ControlConfig = Field(default_factory=ControlConfig, description="This invocation only.")
    testing: TestingConfig = Field(default_factory=TestingConfig, description="Test-only fault injection.")

    @model_validator(mode="after")
    def _columns_for_task(self) -> "JobBase":
        spec = TASKS[self.task]
        for key in spec.required_inputs:
            if getattr(self.input, key) is None:
                raise ValueError(f"task {self.task} needs input.{key}")
        if spec.check is not None:
            spec.check(self.input, self.task_settings)
        return self

    @model_validator(mode="after")
    def _gpu_device_has_gpus(self) -> "JobBase":
        if self.model.device.startswith("cuda") and self.pool.num_gpus_per_actor == 0:
            raise ValueError(f"model.device={self.model.device} needs pool.num_gpus_per_actor of 1 or more: "
                             "with 0, Ray hides every GPU from the actors; set pool.num_gpus_per_actor=1, or "
                             "model.device=cpu (auto: a GPU where the actor has one)")
        return self

    @property
    def task_settings(self) -> FrozenModel:
        return getattr(self, self.task)

    def task_context(self) -> TaskContext:
        return TaskContext(self.task_settings, self.input, self.generation, self.pool.batch_size)

    def fingerprint(self, plan_digest: str) -> str:
        """Hash of everything that decides the output rows, plus the planned work items."""
        return digest({
            "version": PIPELINE_VERSION, "task": self.task, "plan": plan_digest,
            "model": self.model.model_dump(mode="json", exclude={"cache_dir"}), "dart": dart_settings(self.dart),
            "generation": self.generation.model_dump(mode="json"),
            "input": self.input.model_dump(mode="json"), "batch_size": self.pool.batch_size,
            "task_settings": self.task_settings.model_dump(mode="json"),
        })


JobConfig = create_model(
    "JobConfig", __base__=JobBase, __module__=__name__,
    **{name: (spec.settings, Field(default_factory=spec.settings, description=f"{name} task settings: {spec.description}."))
       for name, spec in TASKS.items()})


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b.c=value` sets data[a][b][c]; values parse as YAML scalars/flow lists, never as code."""
    out = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not key=value")
        try:
            value = plain_yaml(raw) if raw.strip() else None
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


def validation_message(what: str, err: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line per invalid field, each naming its dotted key; an unknown key of `model` names the
    nearest known one."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])    # none: a check of the whole config, which names its keys
        line = f"{key}: {e['msg']}" if key else e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden" and model is not None:
            line += nearest_key(model, e["loc"])
        lines.append(line)
    if len(lines) == 1:
        return f"invalid {what}: {lines[0]}"
    return f"invalid {what}:\n  " + "\n  ".join(lines)


def nearest_key(model: type[BaseModel], loc: tuple) -> str:
    """'; did you mean input?' for an unknown key at `loc`, or '' when none is near."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        inner = field.annotation if field is not None else None
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return ""
        model = inner
    near = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    prefix = ".".join(str(p) for p in loc[:-1])
    return f"; did you mean {prefix + '.' if prefix else ''}{near[0]}?" if near else ""


def parse_config(data: dict[str, Any]) -> JobConfig:
    """Validate plain data; errors name the dotted key."""
    try:
        return JobConfig.model_validate(data)
    except ValidationError as err:
        raise ValueError(validation_message("job config", err, JobConfig)) from None


class ConfigLoader(yaml.SafeLoader):
    """Plain YAML data only: no python tags (SafeLoader), no aliases (a few bytes of nested aliases
    expand to gigabytes), no key given twice (the later one would silently win)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} found: aliases and anchors "
                                              "are not allowed in a config; write the value out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.constructor.ConstructorError(None, None, "merge keys (<<) are not allowed in a config; "
                                                        "write the keys out", key_node.start_mark)
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def plain_yaml(text: str) -> Any:
    loader = ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's top-level mapping (empty for an empty file)."""
    text = Path(path).read_text()
    try:
        loaded = plain_yaml(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not a plain YAML config: {err}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    return loaded or {}


def load_config(path: str | Path | None, overrides: list[str] = (), task: str | None = None) -> JobConfig:
    """Read a YAML file (or nothing), apply overrides, set the job's task, and validate."""
    data = {} if path is None else read_yaml(path)
    data = apply_overrides(data, list(overrides))
    if task is not None:
        if data.get("task", task) != task:
            raise ValueError(f"config says task {data['task']!r} but this job runs {task!r}")
        data["task"] = task
    return parse_config(data)


def dump_config(config: JobConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

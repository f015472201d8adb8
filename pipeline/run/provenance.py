"""What a run's finished items were made from: the input files' bytes and the model's weights.

Recorded in the run directory when the run begins (inputs) and when its first model answers (model),
and checked on every resume: a run whose inputs or model changed under it is refused, never mixed.
An input edit that shows in the Parquet footer (rows, schema, statistics) already gives a different
plan, hence a run of its own; these records catch every other edit, and weights replaced at the
same model.source path."""
from __future__ import annotations

import json
import logging
from typing import Any

from ..inputs import SourceFile
from .storage import json_bytes
from .store import RunDir

log = logging.getLogger(__name__)


def fresh_run_hint(run: RunDir) -> str:
    return f"keep the original, or start a fresh run: set output.dir elsewhere, or delete {run.root}"


class Provenance:
    """The run directory's inputs.json and model.json."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.inputs_key, self.model_key = f"{run.path}/inputs.json", f"{run.path}/model.json"
        self.model: str | None = None        # the fingerprint this run's items are made with, once known
        self.dtype: str | None = None        # their weights' dtype, where recorded

    def read(self, key: str) -> Any:
        raw = self.run.storage.read(key)
        return None if raw is None else json.loads(raw)

    def check_inputs(self, sources: list[SourceFile], anything_done: bool) -> None:
        """The inputs hold the bytes the finished items were read from (sha256 per file)."""
        now = {src.uri: src.content for src in sources}
        before = self.read(self.inputs_key)
        if before is not None and anything_done:
            for uri, digest in now.items():
                if uri in before and before[uri] != digest:
                    raise ValueError(
                        f"input file {uri} changed since this run began (sha256 {before[uri][:12]}... now "
                        f"{digest[:12]}...): resuming would mix rows read from two versions of it; "
                        + fresh_run_hint(self.run))
        if before != now:
            self.run.storage.write(self.inputs_key, json_bytes(now))

    def check_model(self, fingerprints: set[str], recorded_parts: list[str], dtypes: set[str] = frozenset()) -> None:
        """Every model answering for this run has the weights its finished items were made with.
        recorded_parts: model fingerprints found in finished parts of a run begun before model.json;
        dtypes: the weight dtypes the actors run (recorded beside the fingerprint)."""
        fingerprints = {f for f in fingerprints if f}
        if not fingerprints:
            return
        if self.model is None:
            recorded = self.read(self.model_key) or {}
            self.model = recorded.get("model_fingerprint") or (recorded_parts or [None])[0]
            self.dtype = recorded.get("model_dtype")
        if self.model is None:
            self.model, self.dtype = next(iter(sorted(fingerprints))), ",".join(sorted(dtypes)) or None
            self.run.storage.write(self.model_key, json_bytes({"model_fingerprint": self.model,
                                                               "model_dtype": self.dtype}))
        other = sorted(fingerprints - {self.model})
        if other and self.dtype and dtypes and self.dtype not in dtypes:
            raise ValueError(
                f"this run's finished items were made with {self.dtype} weights, the actors now load "
                f"{'/'.join(sorted(dtypes))} (model.dtype native picks the machine's fastest): set "
                f"model.dtype={self.dtype} to resume it, or " + fresh_run_hint(self.run))
        if other:
            raise ValueError(
                f"the model loaded from model.source is not the one this run's finished items were made with "
                f"(weights fingerprint {other[0]}, run's {self.model}): its weights changed, or differ "
                "between nodes; " + fresh_run_hint(self.run))

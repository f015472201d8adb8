"""How often following one job config from `run_job` comes back to a module (or a group) it had left.

    python -m bench.run_path [--show]

Runs one summarize job (a tiny random Llama, one Parquet file of 3 rows, one work item, one actor on a
private local Ray) and records, with `sys.setprofile` in the driver, where control is after every call
into or return from a function of the run path (`pipeline`, `pipeline.study` excepted): the module of
the innermost run-path frame. Consecutive records in the same module are one *stay*; a module's stays
after its first are its *returns* (returns = stays - modules). The same sequence is counted again with
each module mapped to its *group*: the subpackage it lies in (`pipeline.inputs`, ...), or itself for a
module at the top of `pipeline`. Module-level code run by an import is not counted. One item and one
actor make every loop of the driver run once, so the figures do not grow with the input.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).parents[1]
log = logging.getLogger(__name__)


def on_run_path(module: str) -> bool:
    return (module == "pipeline" or module.startswith("pipeline.")) and not module.startswith("pipeline.study")


def group_of(module: str) -> str:
    """`pipeline.<group>` for a module inside a subpackage of pipeline, else the module itself."""
    parts = module.split(".")
    if len(parts) > 2 or hasattr(importlib.import_module(module), "__path__"):
        return ".".join(parts[:2])
    return module


def innermost(frame) -> str | None:
    """The module of the innermost run-path frame at or above `frame` (import-time code excluded)."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if on_run_path(module) and frame.f_code.co_name != "<module>":
            return module
        frame = frame.f_back
    return None


class Walk:
    """The modules control passes through, consecutive repeats collapsed. With `first_calls`, a
    function is followed only the first time it runs (as a reader follows the code): a later call of
    it, and everything under that call, is not recorded."""

    def __init__(self, first_calls: bool) -> None:
        self.first_calls, self.sequence = first_calls, []
        self.seen: set = set()
        self.skipping = None      # the frame of a repeated call being skipped, while it runs

    def event(self, frame, event: str) -> None:
        if self.skipping is not None:
            if event == "return" and frame is self.skipping:
                self.skipping = None
            return
        if self.first_calls and event == "call" and frame.f_code.co_name != "<module>":
            if frame.f_code in self.seen:
                self.skipping = frame
                return
            self.seen.add(frame.f_code)
        module = innermost(frame if event == "call" else frame.f_back)
        if module and (not self.sequence or self.sequence[-1] != module):
            self.sequence.append(module)


def traced(call, walks: list[Walk]) -> object:
    """`call()`'s result, every run-path frame entering or leaving fed to each walk."""
    def profile(frame, event, arg) -> None:
        if event in ("call", "return") and on_run_path(frame.f_globals.get("__name__", "")):
            for walk in walks:
                walk.event(frame, event)

    sys.setprofile(profile)
    try:
        return call()
    finally:
        sys.setprofile(None)


def collapse(names: list[str]) -> list[str]:
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


def counts(stays: list[str]) -> dict[str, object]:
    per = Counter(stays)
    returns = {name: n - 1 for name, n in per.most_common() if n > 1}
    return {"modules": len(per), "stays": len(stays), "returns": len(stays) - len(per), "by_name": returns}


def job_config(model_dir: Path, data: Path, out: Path):
    from pipeline.config import parse_config

    return parse_config({
        "task": "summarize", "model": {"source": str(model_dir), "device": "cpu"},
        "dart": {"method": "dart", "keep_ratio": 0.5}, "generation": {"max_new_tokens": 4},
        "input": {"paths": [str(data)], "rows_per_item": 3, "text_column": "document",
                  "reference_column": "summary"},
        "output": {"dir": str(out)}, "pool": {"num_actors": 1, "cpus_per_actor": 1, "batch_size": 2},
        "summarize": {"max_document_tokens": 48}, "control": {"progress": False}})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--show", action="store_true", help="print the sequence of stays too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(ROOT / "tests"))
    from tinymodels import make_tiny_model_dir

    from pipeline.driver import run_job

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_model_dir(Path(tmp) / "model")
        data = Path(tmp) / "docs.parquet"
        pq.write_table(pa.table({"id": ["a", "b", "c"], "document": ["the cat sat.", "a dog ran.", "rain."],
                                 "summary": ["cat", "dog", "rain"]}), data)
        walks = [Walk(first_calls=False), Walk(first_calls=True)]
        config = job_config(model_dir, data, Path(tmp) / "out")
        summary = traced(lambda: run_job(config), walks)
    if not summary["complete"]:
        raise RuntimeError(f"the traced job did not complete: {summary}")
    for walk in walks:
        sys.stdout.write(f"{'first call of each function' if walk.first_calls else 'every call'}:\n")
        for title, stays in (("module", walk.sequence), ("group", collapse([group_of(m) for m in walk.sequence]))):
            found = counts(stays)
            by_name = ", ".join(f"{name.removeprefix('pipeline.')} {n}" for name, n in found["by_name"].items())
            sys.stdout.write(f"  by {title}: {found['modules']} {title}s, {found['stays']} stays, "
                             f"{found['returns']} returns ({by_name})\n")
            if args.show:
                sys.stdout.write("    " + " -> ".join(s.removeprefix("pipeline.") for s in stays) + "\n")

if __name__ == "__main__":
    main()

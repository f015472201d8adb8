"""Shared command line of the jobs: `--config FILE key=value ...`, run, print where and a table."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig, dump_config, load_config
from pipeline.driver import run_job
from pipeline.failures import FILE_ONLY, failure_line
from pipeline.cluster import by_sigterm
from pipeline.tasks import TASKS

from .logfile import job_logging

log = logging.getLogger(__name__)

# (column title, summary key, format) of the closing table; the task's quality columns go between.
COMMON = [("items", "items", "{:d}"), ("rows", "rows", "{:d}"), ("errors", "error_rows", "{:d}")]
TAIL = [("applied sparsity", "mean_applied_sparsity", "{:.3f}"),
        ("FFN FLOPs vs dense", "ffn_flops_executed_fraction", "{:.3f}"),   # prompt and generated tokens
        ("drift events", "drift_events", "{:d}"), ("tokens/s", "tokens_per_second", "{:.1f}")]


def format_table(summary: dict[str, Any]) -> str:
    """Two aligned lines: titles, then values ('-' where a value is missing)."""
    quality = [(title, key, "{:.3f}") for key, _, title in TASKS[summary["task"]].summary_metrics]
    columns = COMMON + quality + TAIL
    titles = [title for title, _, _ in columns]
    values = ["-" if summary.get(key) is None else fmt.format(summary[key]) for _, key, fmt in columns]
    widths = [max(len(t), len(v)) for t, v in zip(titles, values)]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in (titles, values))


def parse_args(task: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m jobs.{task}", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Run the DART {task} job over whole datasets on Ray (resumes a finished or stopped run).",
        epilog=sections_help(task))
    parser.add_argument("--config", help=f"YAML job config, e.g. conf/{task}.yaml")
    parser.add_argument("--print-config", action="store_true", help="print the effective config (the file, "
                        "then the overrides, then the defaults) as YAML and exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides with dotted keys, e.g. pool.num_actors=4")
    return parser.parse_args(argv)


def sections_help(task: str) -> str:
    """The config's sections, one a line, and where every key is described."""
    lines = [f"  {name:<11} {field.description}" for name, field in JobConfig.model_fields.items()
             if name == task or name not in TASKS]
    return ("config sections (every key, with its type, default, bounds and meaning: docs/config.md):\n"
            + "\n".join(lines))


def main(task: str, argv: list[str] | None = None) -> int:
    """Exit 0 when the run ends (complete or stopped at control.max_items), 2 when the config or the
    inputs are refused before any work, 1 when the run fails, 130/143 when stopped by a signal."""
    args = parse_args(task, argv)
    try:
        config = load_config(args.config, args.overrides, task=task)
    except (ValueError, OSError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    if args.print_config:
        sys.stdout.write(dump_config(config))
        return 0
    with job_logging(config) as log_file:
        return run(config, log_file)


def run(config: JobConfig, log_file: Path | None) -> int:
    """The job under the invocation's logging; every failure ends in one `error:` line."""
    try:
        summary = run_job(config)
    except (Exception, KeyboardInterrupt) as err:
        return failed(err, log_file)
    sys.stdout.write(closing_text(summary))
    return 0


def failed(err: BaseException, log_file: Path | None) -> int:
    """One line for what stopped a run, and its exit code: 2 for a ValueError (the config or the inputs,
    found before any work), 130/143 for a signal, 1 for a failure during the run (whose traceback goes
    to the log file only)."""
    if isinstance(err, KeyboardInterrupt):
        return stopped(err)
    if isinstance(err, ValueError):
        sys.stderr.write(f"error: {err}\n")
        return 2
    log.error("the run failed", exc_info=err, extra=FILE_ONLY)
    where = f" (full log: {log_file})" if log_file is not None else ""
    sys.stderr.write(f"error: {failure_line(err)}{where}\n")
    return 1


def stopped(err: KeyboardInterrupt) -> int:
    """Ctrl-C or SIGTERM stopped the driver: one line says so (items finished so far are kept); returns
    the exit code (130 or 143)."""
    terminated = by_sigterm(err)
    sys.stderr.write(f"stopped by {'SIGTERM' if terminated else 'interrupt'}; finished items are kept: "
                     "rerun the same command to resume\n")
    return 143 if terminated else 130


def closing_text(summary: dict[str, Any]) -> str:
    """Where the run is, the table, and how to retry items that failed every attempt."""
    state = "complete" if summary["complete"] else f"stopped at {summary['done_items']}/{summary['planned_items']} items"
    hint = f"{summary['retry_hint']}\n" if summary.get("retry_hint") else ""
    return (f"run {state}: {summary['run_dir']}\nparts: {summary['run_dir']}/parts/*.parquet\n"
            f"{format_table(summary)}\n{hint}")

"""`python -m jobs.study --config conf/study_<name>.yaml [key=value ...]`: run an efficiency study.

Runs (or resumes) every config of the sweep through the pipeline on Ray, then writes
results.parquet, summary.csv, report.md and the PNG plots under <study.output>/<study.name>/.
`--report-only` rebuilds the report from whatever rows the runs hold, without running anything.
"""
from __future__ import annotations

import argparse
import logging
import sys

from jobs.cli import failed
from jobs.logfile import invocation_logging
from pipeline.study import load_study, results_table, run_study

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.study", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="study YAML, e.g. conf/study_xsum.yaml")
    parser.add_argument("--report-only", action="store_true", help="write the report from existing rows; run nothing")
    parser.add_argument("overrides", nargs="*", help="key=value overrides with dotted keys, e.g. study.limit=16 "
                        "base.pool.num_actors=1")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        study = load_study(args.config, args.overrides)
    except (ValueError, OSError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    control = study.base.get("control", {})
    level = str(control.get("log_level", "INFO")).upper()
    with invocation_logging("study", level, control.get("log_dir")) as log_file:
        try:
            out = run_study(study, report_only=args.report_only)
        except (Exception, KeyboardInterrupt) as err:
            return failed(err, log_file)
    state = "complete" if out["complete"] else "incomplete (rerun to resume)"
    sys.stdout.write(f"study {state}: {out['study_dir']} ({out['configs']} configs, {out['wall_seconds']:.0f} s)\n"
                     f"report: {out['report']}\nplots: {', '.join(out['plots'])}\n\n{results_table(out['summary'])}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

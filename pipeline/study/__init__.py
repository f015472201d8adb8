"""Efficiency studies: a sweep of DART variants x budgets x datasets (x models), each cell one pipeline job.

    config.py    StudyConfig and its parts, load_study, expand (the sweep's cells as JobConfigs)
    sweep.py     run_study: run or resume every cell, then results and report
    results.py   results.parquet: every run's rows with study labels and derived per-item columns
    stats.py     bootstrap intervals over items
    report.py    summary.csv, comparisons.csv, report.md
    answer.py    the plain answer on cost: quality at equal end-to-end FFN FLOPs (equal_cost.csv), savings
    plots.py     the PNG plots
    scale.py     the models axis: quality retained per model size, its trend (paired), a setting per size

The study imports the run path (pipeline.config, pipeline.driver, pipeline.run, ...); the run path
never imports the study, pandas or matplotlib.
"""
from .config import StudyConfig, StudyRun, expand, load_study
from .report import results_table
from .sweep import run_study

__all__ = ["StudyConfig", "StudyRun", "expand", "load_study", "results_table", "run_study"]

"""Distributed batch pipeline: Parquet in, DART models on Ray actors, Parquet out.

Entry point: `pipeline.driver.run_job(pipeline.config.load_config(...))`. Modules import Ray only
inside functions, so everything imports without a cluster. Beside the entry points, the groups, each
entered through what its __init__ exports: checks/ (before any work), inputs/ (files, columns, the
plan, rows, ids), run/ (Job and its run directory), cluster/ (Ray), tasks/ (the task registry),
study/ (efficiency studies). docs/architecture.md draws the tree.
"""

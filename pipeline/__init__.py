"""Distributed batch pipeline: Parquet in, DART models on Ray actors, Parquet out.

Entry point: `pipeline.driver.run_job(pipeline.config.load_config(...))`. Modules import Ray only
inside functions, so everything imports without a cluster.
"""

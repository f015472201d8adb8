"""Bench: the job against the plain Ray Data pipeline a Ray user would write instead of this product:
`ray.data.read_parquet` -> `map_batches` with a callable class running Hugging Face `model.generate`
on the dense, unpatched model -> `write_parquet`. Same rows, the job's prompt token ids, greedy, the
same max_new_tokens, batch size, actors and CPUs per actor (torch threads = CPUs per actor). The
sides run alternately in one process (A B C, then C B A); the table gives documents/s of each, the
job's over the baseline's, and how many outputs equal the baseline's (the dense job: greedy on the
same model, so all of them unless batched float sums differ).

    python -m bench.raydata_baseline [--config conf/summarize.yaml] [--limit 24] [--reps 1] [key=value ...]

Every side starts its actors and loads the model per run, as a user's pipeline does. One local Ray
serves all runs, with one CPU beyond the pool's for Ray Data's read and write tasks (the job's
driver reads its rows outside Ray); pool.local_num_cpus and pool.ray_address are not used.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench import common
from pipeline.config import JobConfig, load_config
from pipeline.driver import run_job
from pipeline.tasks import TASKS

BASELINE = "Ray Data + HF generate (baseline)"


class HfGenerate:
    """The baseline's callable class: the dense Hugging Face model loaded once per actor, greedy
    `model.generate` on left-padded batches of the job's prompt ids (the task runner's `prepare`),
    then the task's `finish` on the text (the first line for QA; its quality metric), as the job does."""

    def __init__(self, config_json: str) -> None:
        import torch

        from dart.config import DartConfig
        from dart.engine import DartEngine
        from dart.loading import load_model
        from dart.sampling import eos_token_ids

        self.config = JobConfig.model_validate_json(config_json)
        if self.config.pool.num_gpus_per_actor == 0:
            torch.set_num_threads(self.config.pool.cpus_per_actor)
        self.model, self.tokenizer = load_model(self.config.model)
        # The job's runner, for its prompt building only: its engine is closed at once, which restores
        # the unpatched model that generates here.
        engine = DartEngine(self.model, self.tokenizer, DartConfig(method="dense"))
        self.task = TASKS[self.config.task].runner(self.config.task_context(), self.tokenizer, engine)
        engine.close()
        self.eos = sorted(eos_token_ids(self.model, self.tokenizer))
        self.metric = TASKS[self.config.task].quality_metrics[0][0]

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        rows = batch.to_pylist()
        prepared = [self.task.prepare(row) for row in rows]
        ids = [prompt.ids for prompt, _ in prepared]
        width, pad = max(map(len, ids)), self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in ids], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids], device=self.model.device)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False, top_p=None,
                                      top_k=None, temperature=None, eos_token_id=self.eos, pad_token_id=pad,
                                      max_new_tokens=self.config.generation.max_new_tokens)
        texts = [t.strip() for t in self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]
        values = [self.task.finish(row, text, extra) for row, text, (_, extra) in zip(rows, texts, prepared)]
        return pa.table({"id": [str(row[self.config.input.id_column]) for row in rows],
                         "output": [v.get("output", text) for v, text in zip(values, texts)],
                         self.metric: pa.array([v.get(self.metric) for v in values], pa.float64())})


def local_paths(paths: list[str]) -> list[str]:
    """Ray Data's read tasks run in workers with another working directory: absolute paths."""
    return [p if "://" in p else str(Path(p).resolve()) for p in paths]


def baseline_run(config: JobConfig, limit: int) -> tuple[float, pa.Table]:
    """(seconds, output table) of the plain Ray Data pipeline, actors started and models loaded inside."""
    import ray

    pool = config.pool
    compute = ray.data.ActorPoolStrategy(size=pool.num_actors, max_tasks_in_flight_per_actor=pool.in_flight_per_actor)
    with tempfile.TemporaryDirectory() as out:
        began = time.perf_counter()
        rows = ray.data.read_parquet(local_paths(config.input.paths)).select_columns(config.input.columns).limit(limit)
        # Blocks of one batch each, in order, so every actor gets work and batches are the job's.
        rows = rows.repartition(target_num_rows_per_block=pool.batch_size)
        rows.map_batches(HfGenerate, fn_constructor_kwargs={"config_json": config.model_dump_json()},
                         compute=compute, num_cpus=pool.cpus_per_actor, num_gpus=pool.num_gpus_per_actor,
                         batch_size=pool.batch_size, batch_format="pyarrow").write_parquet(out)
        seconds = time.perf_counter() - began
        return seconds, pq.read_table(out)


def job_run(config_path: str, overrides: list[str]) -> tuple[float, pa.Table, dict]:
    """(seconds, ok rows, summary) of the product's job in a fresh output folder."""
    with tempfile.TemporaryDirectory() as out:
        config = load_config(config_path, [*overrides, "control.progress=false", f"output.dir={out}"])
        began = time.perf_counter()
        summary = run_job(config)
        seconds = time.perf_counter() - began
        table = pq.read_table(f"{summary['run_dir']}/parts")
        return seconds, table.filter(pc.equal(table["status"], "ok")), summary


def same_outputs(table: pa.Table, reference: pa.Table) -> str:
    """'k/n': of the n ids in both, how many outputs are equal."""
    mine = dict(zip(table["id"].to_pylist(), table["output"].to_pylist()))
    theirs = dict(zip(reference["id"].to_pylist(), reference["output"].to_pylist()))
    both = mine.keys() & theirs.keys()
    return f"{sum(mine[i] == theirs[i] for i in both)}/{len(both)}"


def sides(config: JobConfig) -> dict[str, list[str] | None]:
    """Side -> the job's overrides (None: the baseline)."""
    dense = ["dart.method=dense", "dart.prefill.mode=dense"]      # block-wise prefill needs a pruning method
    out: dict[str, list[str] | None] = {BASELINE: None, "job, dense": dense}
    if config.dart.method != "dense":
        out[f"job, {config.dart.method} keep {config.dart.keep_ratio}"] = []
    return out


def prepare_ray(config: JobConfig) -> None:
    """One local Ray for every run, with a CPU for Ray Data's read and write tasks beside the pool's
    (a pool holding every CPU stalls them); row order kept, so limit and batches take the job's rows."""
    import ray

    from pipeline.cluster import start_local_ray

    if not ray.is_initialized():
        start_local_ray(config.pool.num_actors * config.pool.cpus_per_actor + 1)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False


def run_sides(args, overrides: list[str], config: JobConfig) -> dict[str, list[tuple[float, pa.Table]]]:
    """Each side `args.reps` times, the order reversed every other round."""
    plan = sides(config)
    runs: dict[str, list[tuple[float, pa.Table]]] = {side: [] for side in plan}
    for rep in range(args.reps):
        for side in (list(plan) if rep % 2 == 0 else list(reversed(plan))):
            if plan[side] is None:
                runs[side].append(baseline_run(config, args.limit))
            else:
                seconds, table, _ = job_run(args.config, [*overrides, *plan[side]])
                runs[side].append((seconds, table))
    return runs


def report(config: JobConfig, runs: dict[str, list[tuple[float, pa.Table]]], began: float) -> None:
    column, title = TASKS[config.task].quality_metrics[0]
    rate = {side: statistics.fmean(t.num_rows / s for s, t in done) for side, done in runs.items()}
    reference = runs[BASELINE][-1][1]
    rows = []
    for side, done in runs.items():
        last = done[-1][1]
        sparsity = pc.mean(last["applied_sparsity"]).as_py() if "applied_sparsity" in last.column_names else None
        quality = pc.mean(last[column]).as_py()
        rows.append([side, f"{rate[side]:.3f}", f"{rate[side] / rate[BASELINE]:.3f}",
                     ", ".join(f"{s:.0f}" for s, _ in done), "-" if side == BASELINE else same_outputs(last, reference),
                     "-" if sparsity is None else f"{sparsity:.3f}", "-" if quality is None else f"{quality:.3f}"])
    pool = config.pool
    common.write_table(
        f"Ray Data baseline: {config.task} job vs Ray Data + HF generate, {reference.num_rows} rows of {config.input.paths}, "
        f"{pool.num_actors} actors x {pool.cpus_per_actor} CPU, batch {pool.batch_size}, "
        f"{config.generation.max_new_tokens} new tokens, greedy; {len(runs[BASELINE])} run(s) per side, "
        f"{common.machine()} ({time.perf_counter() - began:.0f} s)",
        ["side", "documents/s", "vs baseline", "seconds per run", "outputs = baseline", "applied sparsity", title],
        rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="conf/summarize.yaml")
    parser.add_argument("--limit", type=int, default=24, help="rows: the first ones of the inputs, in order")
    parser.add_argument("--reps", type=int, default=1, help="runs of each side (the order alternates)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the job config (every side)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    began = time.perf_counter()
    overrides = [*args.overrides, f"input.limit={args.limit}"]
    config = load_config(args.config, overrides)
    gen = config.generation
    if gen.temperature != 0 or not gen.stop_on_eos:
        parser.error("the baseline decodes greedily and stops at EOS: use generation.temperature=0 and stop_on_eos=true")
    common.set_threads(config.pool.cpus_per_actor)   # what the table's machine line reports: the actors' threads
    prepare_ray(config)
    report(config, run_sides(args, overrides, config), began)


if __name__ == "__main__":
    main()

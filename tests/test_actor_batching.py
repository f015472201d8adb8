"""An actor runs the calls of several work items at once (pool.in_flight_per_actor); their rows share
one continuous batch, and each item's rows equal those of the item run alone."""
import threading
import time

import pyarrow as pa

from pipeline.cluster import DartWorker
from pipeline.run import Job
from pipeline_fixtures import job_config, same_rows, write_docs


def test_items_run_at_once_share_the_batch_and_equal_them_run_alone(tmp_path, tiny_model_dir):
    paths = write_docs(tmp_path / "in", bad_rows=False)
    cfg = job_config("summarize", tiny_model_dir, paths, tmp_path / "out", generation={"max_new_tokens": 6},
                     pool={"batch_size": 4}, summarize={"max_document_tokens": 48, "reference_nll": True})
    job = Job.open(cfg)
    items = job.plan[:2]       # 3 rows each: 4 slots hold rows of both
    worker = DartWorker(*job.worker_args())
    alone = [worker.run_item(item, job.rows(item), 1) for item in items]

    batch = worker.task.batch
    calls_per_step: list[set] = []
    step = batch.batcher.step

    def recording_step():
        done = step()
        calls_per_step.append({row.request.key[0] for row in batch.batcher.rows} | {key[0] for key, _ in done})
        return done

    batch.batcher.step = recording_step
    together: dict[int, pa.Table] = {}
    threads = [threading.Thread(target=lambda k=k: together.__setitem__(k, worker.run_item(items[k], job.rows(items[k]), 1)))
               for k in range(2)]
    with batch.lock:                 # both items post their rows before the first step runs
        for thread in threads:
            thread.start()
        time.sleep(1.0)
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(together) == [0, 1]
    assert any(len(calls) == 2 for calls in calls_per_step), "rows of both items should decode side by side"
    assert batch.batcher.idle
    for k in range(2):
        assert together[k].column("id").to_pylist() == alone[k].column("id").to_pylist()
        assert same_rows(together[k], alone[k])

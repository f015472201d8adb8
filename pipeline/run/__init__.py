"""One run of one job config: `Job` and its run directory (local or object store), from opening it to
its summary. Opening a run and writing a part happen here.

    job.py          Job: checks, plan and run directory of one config; an item's rows; its result or failure
    store.py        RunDir: the run directory, parts written whole, checksummed markers written last
    storage.py      Storage: a local folder or an object-store URI; atomic writes, conditional puts
    runlock.py      one driver per run: a flock on local disk, a lease on object stores
    provenance.py   what the finished items were made from: the inputs' sha256, the model's fingerprint
    faults.py       a disk or store fault while reading or writing as one failure line (writing, reading)
    schema.py       the declared output schema of every part
    summary.py      the run summary from the parts on disk
"""
from .faults import writing
from .job import Job
from .runlock import RunBusy, RunLost
from .schema import BATCH_DEPENDENT, RUN_DEPENDENT, output_schema, telemetry_fields
from .storage import Storage, check_durable_output, json_bytes, write_atomic_bytes, write_json
from .store import RunDir
from .summary import summarize_table

__all__ = ["BATCH_DEPENDENT", "Job", "RUN_DEPENDENT", "RunBusy", "RunDir", "RunLost", "Storage",
           "check_durable_output", "json_bytes", "output_schema", "summarize_table", "telemetry_fields",
           "write_atomic_bytes", "write_json", "writing"]

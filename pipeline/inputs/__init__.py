"""The job's inputs: finding the files, checking their columns, planning the work items, reading an
item's rows, and the rows' ids; also an item's rows turned into a table of the declared schema.

    sources.py     input files (any fsspec URI, a Hugging Face dataset): resolve, footers, columns, row ranges
    plan.py        WorkItem and the deterministic plan: (file x row range) items with stable ids
    preflight.py   check_inputs (files, columns, output location) and find_duplicate_ids, before any work
    records.py     ids of an item's rows (text, decoded, derived) and its part as a table (build_part, error_part)
"""
from .plan import WorkItem, plan_digest, plan_items
from .preflight import check_inputs, find_duplicate_ids
from .records import build_part, derived_id, error_part, id_strings, python_rows, row_ids
from .sources import SourceFile, read_rows, resolve_inputs

__all__ = ["SourceFile", "WorkItem", "build_part", "check_inputs", "derived_id", "error_part", "find_duplicate_ids",
           "id_strings", "plan_digest", "plan_items", "python_rows", "read_rows", "resolve_inputs", "row_ids"]

"""Run summary from the parts on disk: counts, tokens, sparsity, drift, quality, throughput."""
from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..tasks import TASKS



def _mean(column: pa.ChunkedArray) -> float | None:
    if column.null_count == len(column):
        return None
    return pc.mean(pc.cast(column, pa.float64())).as_py()


def ratio_of_sums(table: pa.Table, numerator: str, denominator: str) -> float | None:
    """sum(numerator) / sum(denominator) over the rows: e.g. FFN FLOPs executed against dense, end to end
    (prompt and generated tokens)."""
    below = pc.sum(table[denominator]).as_py() if table.num_rows else None
    return pc.sum(table[numerator]).as_py() / below if below else None


def weighted_mean(table: pa.Table, column: str, weight: str) -> float | None:
    if column not in table.column_names or not table.num_rows:
        return None
    total = pc.sum(table[weight]).as_py()
    product = pc.sum(pc.multiply(pc.cast(table[column], pa.float64()), pc.cast(table[weight], pa.float64())))
    return product.as_py() / total if total else None


def summarize_table(table: pa.Table, task: str) -> dict[str, Any]:
    """Totals over every output row; quality metrics over rows that have them."""
    ok = pc.equal(table["status"], "ok")
    okt = table.filter(ok)
    generated = pc.sum(okt["generated_tokens"]).as_py() or 0
    prompt = pc.sum(okt["prompt_tokens"]).as_py() or 0
    if generated:  # token-weighted, as the spec defines applied sparsity
        weighted = pc.sum(pc.multiply(okt["applied_sparsity"], pc.cast(okt["generated_tokens"], pa.float64())))
        sparsity = weighted.as_py() / generated
    else:
        sparsity = _mean(okt["applied_sparsity"]) if okt.num_rows else None
    summary = {
        "items": len(pc.unique(table["item_id"])) if table.num_rows else 0,
        "rows": table.num_rows,
        "ok_rows": okt.num_rows,
        "error_rows": table.num_rows - okt.num_rows,
        "prompt_tokens": prompt,
        "generated_tokens": generated,
        "mean_applied_sparsity": sparsity,
        "drift_events": pc.sum(okt["drift_events"]).as_py() or 0,
        "ffn_flops_executed_fraction": ratio_of_sums(okt, "ffn_flops_executed", "ffn_flops_dense"),
        "prompt_applied_sparsity": weighted_mean(okt, "prompt_applied_sparsity", "prompt_tokens"),
        "prefill_seconds": pc.sum(okt["prefill_seconds"]).as_py() if okt.num_rows else None,
        "decode_seconds": pc.sum(okt["decode_seconds"]).as_py() if okt.num_rows else None,
    }
    for name, column, _ in TASKS[task].summary_metrics:
        summary[name] = _mean(okt[column]) if okt.num_rows else None
    return summary

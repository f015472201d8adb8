"""What identifies a run's output rows: the settings that can change them, and their hash."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from dart.config import DartConfig

# Drift knobs whose value here computes exactly what the engine computed before the knob existed:
# left out of the identity at that value, so runs recorded before it keep their fingerprint.
NEUTRAL_DRIFT_KNOBS: dict[str, object] = {"replay_tokens": 0}
# Prefill knobs of the drift monitor (read by method dart alone), at their neutral values.
PREFILL_DRIFT_KNOBS: dict[str, object] = {"drift_in_prompt": True}
# Knobs whose default computes what the engine computed before they existed.
NEUTRAL_KNOBS: dict[str, object] = {"decode_masks": "per_row"}


def dart_settings(dart: DartConfig) -> dict[str, Any]:
    """The DART settings that can change what the engine computes: dense reads none of the pruning
    knobs and only dart reads `drift`, so the unread ones are left out."""
    if dart.method == "dense":
        return {"method": "dense"}
    # linear_kernel chooses how the same matmuls run, as the device does, and gather_cost when ffn_path
    # auto gathers: they change float rounding only
    how = {"linear_kernel", "gather_cost"}
    settings = dart.model_dump(mode="json", exclude=how if dart.drift_enabled else how | {"drift"})
    for knob, neutral in NEUTRAL_KNOBS.items():
        if settings[knob] == neutral:
            del settings[knob]
    if dart.drift_enabled:
        for knob, neutral in NEUTRAL_DRIFT_KNOBS.items():
            if settings["drift"][knob] == neutral:
                del settings["drift"][knob]
    if dart.prefill.mode == "dense":     # today's prefill, which reads no other prefill knob
        del settings["prefill"]
    else:
        for knob, neutral in PREFILL_DRIFT_KNOBS.items():
            if not dart.drift_enabled or settings["prefill"][knob] == neutral:
                del settings["prefill"][knob]
    return settings


def digest(value: Any, length: int = 16) -> str:
    """Hex SHA-256 of plain data in a canonical JSON form."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]

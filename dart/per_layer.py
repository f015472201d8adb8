"""The per-layer budget string of the reference ('0:0.89,1-5:0.6', 'all:0.3'): its syntax only, so
settings can validate it without knowing the model (dart.budget turns it into keep counts)."""
from __future__ import annotations

import re

_ITEM = re.compile(r"^\s*(all|\d+(?:\s*-\s*\d+)?)\s*:\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?|auto)\s*$")


def parse_items(spec: str | dict[int, float]) -> list[tuple[str, float | str]]:
    """(layer key, value) pairs: key 'all', 'A-B' or 'L'; value a float or 'auto'."""
    if isinstance(spec, dict):
        return [(str(k), float(v)) for k, v in spec.items()]
    items = []
    for part in spec.split(","):
        if not part.strip():
            continue
        match = _ITEM.match(part)
        if match is None:
            raise ValueError(f"per_layer entry {part.strip()!r} is not 'LAYER:VALUE', 'A-B:VALUE' or 'all:VALUE'")
        key, value = match.group(1).replace(" ", ""), match.group(2)
        items.append((key, value if value == "auto" else float(value)))
    if not items:
        raise ValueError("per_layer is empty")
    return items


def check_per_layer_syntax(spec: str | dict[int, float]) -> None:
    """Validate the form of a per-layer budget without knowing the model."""
    for _, value in parse_items(spec):
        if value == "auto":
            continue
        if value <= 0:
            raise ValueError(f"per_layer values must be > 0 (ratio in (0,1] or count > 1), got {value}")

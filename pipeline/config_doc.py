"""docs/config.md, the reference of every job config key (type, default, bounds, description),
generated from the pydantic models: `python -m pipeline.config_doc` rewrites it, `--check` fails
when it is stale (as tests/test_first_contact.py does)."""
from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .config import JobConfig

TARGET = Path(__file__).parents[1] / "docs" / "config.md"
HEADER = """# Job configuration reference

Generated from the pydantic models by `python -m pipeline.config_doc` (do not edit by hand; a test
fails when this file is stale). Every key can be set in the YAML file or as a dotted `key=value`
override; `python -m jobs.<task> --config FILE --print-config [key=value ...]` prints the effective
config (file, then overrides, then these defaults). Bounds are those the models declare; checks
across keys (e.g. `model.device=cuda` needs `pool.num_gpus_per_actor` of 1 or more) are named in
their descriptions or in the error they give.
"""
BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >="),
          ("max_length", "length <="))


def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it: `dense | static`, `int or null`, `list of str`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        named = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}" if args else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value)}`"


def bounds_text(field: FieldInfo) -> str:
    found = []
    for item in field.metadata:
        for name, sign in BOUNDS:
            value = getattr(item, name, None)
            if value is not None:
                found.append(f"{sign} {value}")
    return ", ".join(found)


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def rows(model: type[BaseModel], prefix: str) -> Iterator[str]:
    """One table row per key of `model`, nested sections as dotted keys after their own row."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        desc = field.description or ""
        yield (f"| `{key}` | {cell(type_name(field.annotation))} | {cell(default_text(field))} | "
               f"{cell(bounds_text(field))} | {cell(desc)} |")
        inner = field.annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            yield from rows(inner, f"{key}.")


def render() -> str:
    parts = [HEADER]
    for name, field in JobConfig.model_fields.items():
        annotation = field.annotation
        parts.append(f"\n## `{name}`\n\n{cell(field.description or '')}\n")
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            parts.append(f"\nType {cell(type_name(annotation))}; {default_text(field)}.\n")
            continue
        doc = " ".join((annotation.__doc__ or "").split())
        if doc:
            parts.append(f"\n{cell(doc)}\n")
        parts.append("\n| key | type | default | bounds | description |\n|---|---|---|---|---|\n")
        parts.append("\n".join(rows(annotation, f"{name}.")) + "\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.config_doc", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs from the models")
    parser.add_argument("--output", type=Path, default=TARGET, help=f"default {TARGET}")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        stale = not args.output.exists() or args.output.read_text() != text
        if stale:
            sys.stderr.write(f"{args.output} is stale: run python -m pipeline.config_doc\n")
        return int(stale)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

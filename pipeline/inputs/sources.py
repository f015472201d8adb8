"""Input files: resolve paths/globs/URIs, read footers, check columns, read row ranges."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ..failures import first_line

log = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
# Text formats refused by name (a directory's are listed too, so none is skipped unseen): how to convert.
TEXT_FORMATS = {".csv": "read_csv", ".tsv": "read_csv", ".json": "read_json", ".jsonl": "read_json",
                ".ndjson": "read_json"}
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class SourceFile:
    """One input file (or one Hugging Face split) as the plan sees it."""

    uri: str                 # as the user's path resolved it (protocol kept for remote files)
    kind: str                # "parquet" | "arrow" | "hf"
    num_rows: int
    fingerprint: str         # from the footer (row groups, statistics): part of item ids and run identity
    schema: pa.Schema
    content: str = ""        # sha256 of the file's bytes: any edit at all changes it


def _url_to_fs(path: str):
    import fsspec.core

    return fsspec.core.url_to_fs(path)


def _with_protocol(fs, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def expand_path(path: str) -> list[str]:
    """A file, a directory (its Parquet/Arrow files, recursively) or a glob, sorted."""
    fs, root = _url_to_fs(path)
    suffixes = PARQUET_SUFFIXES + ARROW_SUFFIXES + tuple(TEXT_FORMATS)
    if any(c in root for c in GLOB_CHARS):
        found = [p for p in fs.glob(root) if fs.isfile(p)]
    elif fs.isdir(root):
        found = [p for p in fs.find(root) if p.endswith(suffixes)
                 and not any(part.startswith((".", "_")) for part in p[len(root):].split("/"))]
    elif fs.exists(root):
        found = [root]
    else:
        return []
    return sorted(_with_protocol(fs, p) for p in found)


def _footer_fingerprint(meta: pq.FileMetaData) -> str:
    """Row counts, schema and column statistics of every row group: changes when the data does."""
    info = meta.to_dict()
    info.pop("created_by", None)
    for group in info.get("row_groups", []):
        for col in group.get("columns", []):
            for key in ("file_offset", "file_path", "data_page_offset", "dictionary_page_offset",
                        "index_page_offset"):
                col.pop(key, None)
    blob = json.dumps(info, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def content_digest(fs, path: str, chunk: int = 8 << 20) -> str:
    """sha256 of a file's bytes, read in chunks (never whole into memory)."""
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def open_source(uri: str) -> SourceFile:
    """Read one file's footer (Parquet) or schema and row count (Arrow IPC)."""
    refuse_text_format(uri)
    try:
        fs, path = _url_to_fs(uri)
        if uri.endswith(ARROW_SUFFIXES):
            with fs.open(path, "rb") as f:
                table = _read_ipc(f)
            digest = hashlib.sha256(table.schema.to_string().encode())
            digest.update(str(table.num_rows).encode())
            digest.update(str(fs.size(path)).encode())
            return SourceFile(uri, "arrow", table.num_rows, digest.hexdigest()[:16], table.schema,
                              content_digest(fs, path))
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            meta, schema = pf.metadata, pf.schema_arrow
        return SourceFile(uri, "parquet", meta.num_rows, _footer_fingerprint(meta), schema,
                          content_digest(fs, path))
    except Exception as err:  # any unreadable file stops the job before work starts
        raise ValueError(f"cannot read input file {uri}: {type(err).__name__}: {err}") from None


def refuse_text_format(uri: str) -> None:
    """CSV and JSON files are refused by name, with the one line that converts them to Parquet."""
    suffix = next((s for s in TEXT_FORMATS if uri.lower().endswith(s)), None)
    if suffix is None:
        return
    module = "csv" if TEXT_FORMATS[suffix] == "read_csv" else "json"
    options = ", parse_options=c.ParseOptions(delimiter='\\t')" if suffix == ".tsv" else ""
    raise ValueError(f"input file {uri} is {suffix[1:].upper()}: inputs are Parquet or Arrow IPC files; convert "
                     f"it once with python -c \"import pyarrow.{module} as c, pyarrow.parquet as p; "
                     f"p.write_table(c.{TEXT_FORMATS[suffix]}('{uri}'{options}), '{uri[:-len(suffix)]}.parquet')\"")


def _read_ipc(f) -> pa.Table:
    try:
        return ipc.open_file(f).read_all()
    except pa.ArrowInvalid:
        f.seek(0)
        return ipc.open_stream(f).read_all()


def hf_fingerprint(ds) -> str:
    """A loaded Hugging Face split's identity: its name, version, rows and the Arrow files behind it."""
    info = ds.info
    blob = json.dumps([info.dataset_name, info.config_name, str(info.version), str(ds.split), len(ds),
                       [f.get("filename") for f in ds.cache_files]], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _hf_dataset(name: str, split: str):
    import datasets

    return datasets.load_dataset(name, split=split)


def resolve_inputs(paths: list[str], hf_split: str = "train") -> list[SourceFile]:
    """Every input file in a deterministic order; a path matching nothing is an error."""
    sources: list[SourceFile] = []
    for path in paths:
        try:
            files = expand_path(path)
        except Exception as err:     # unreachable host, refused credentials, a bucket that is not there
            raise ValueError(f"cannot reach input path {path!r} ({type(err).__name__}: {first_line(err)}); "
                             "check the address, the network and the credentials") from None
        if files:
            sources.extend(open_source(f) for f in files)
            continue
        if "://" in path or path.startswith((".", "/")) or path.endswith(PARQUET_SUFFIXES + ARROW_SUFFIXES):
            raise ValueError(f"input path {path!r} matches no file")
        try:  # a Hugging Face dataset name
            ds = _hf_dataset(path, hf_split)
        except Exception as err:
            raise ValueError(f"input {path!r} is neither a file nor a loadable dataset: {err}") from None
        identity = hf_fingerprint(ds)
        sources.append(SourceFile(f"hf://{path}@{hf_split}", "hf", len(ds), identity, ds.data.table.schema, identity))
    return sources


def check_columns(sources: list[SourceFile], required: list[str], passthrough: list[str],
                  hint: Callable[[list[str]], str] = lambda missing: "") -> None:
    """Each named column exists once in every file; pass-through columns have one type everywhere.
    `hint(missing)`: what to do about missing columns, appended to the refusal."""
    for src in sources:
        repeated = sorted({c for c in src.schema.names if src.schema.names.count(c) > 1})
        if repeated:
            raise ValueError(f"input file {src.uri} has column name(s) {repeated} more than once; "
                             "rename them so each column is unambiguous")
        missing = [c for c in required if c not in src.schema.names]
        if missing:
            raise ValueError(f"input file {src.uri} lacks column(s) {missing}; it has {src.schema.names}"
                             f"{hint(missing)}")
    for col in passthrough:
        types = {str(src.schema.field(col).type) for src in sources}
        if len(types) > 1:
            raise ValueError(f"pass-through column {col!r} has different types across input files: {sorted(types)}")


def read_rows(src: SourceFile, start: int, stop: int, columns: list[str]) -> pa.Table:
    """Rows [start, stop) of one source, only the named columns."""
    if src.kind == "hf":
        name, split = src.uri[len("hf://"):].rsplit("@", 1)
        table = _hf_dataset(name, split).data.table.select(columns)
        return table.slice(start, stop - start)
    fs, path = _url_to_fs(src.uri)
    with fs.open(path, "rb") as f:
        if src.kind == "arrow":
            return _read_ipc(f).select(columns).slice(start, stop - start)
        pf = pq.ParquetFile(f)
        groups, first, offset = [], None, 0
        for i in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(i).num_rows
            if offset < stop and offset + n > start:
                groups.append(i)
                first = offset if first is None else first
            offset += n
        table = pf.read_row_groups(groups, columns=columns)
    return table.slice(start - first, stop - start)

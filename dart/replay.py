"""Replay golden DART runs with this engine: `python -m dart.replay GOLDEN.json OUT.json`.

Each run of GOLDEN.json names a model folder beside the file, a config in the reference's terms
(`layer_topk`, `mask_step`, `ranking`, `ema`, `selection`, `drift`, `rho`) and a prompt; the replay
writes, per run, what the engine did in the same format (see ../shared/golden/README.md).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

from .config import DartConfig, DriftConfig, GenerationConfig
from .engine import DartEngine

log = logging.getLogger(__name__)


def config_from_reference(ref: dict[str, Any]) -> DartConfig:
    """Map the reference's run settings onto a DartConfig."""
    topk = str(ref["layer_topk"])
    fields: dict[str, Any] = {
        "method": "dart" if ref.get("drift", False) else "static",
        "ranking": ref.get("ranking", "combined"),
        "decay": ref.get("ema"),
        "selection": ref.get("selection", "topk"),
        "mask_step": int(ref.get("mask_step", 0)),
        "drift": DriftConfig(policy="reset"),       # the reference re-masks as the paper does
    }
    if topk == "all:auto":
        fields.update(budget="auto", keep_ratio=1.0 - float(ref["rho"]) / 100.0)
    elif topk.startswith("all:") and "," not in topk:
        fields.update(budget="uniform", keep_ratio=float(topk.split(":", 1)[1]))
    else:
        fields.update(budget="per_layer", per_layer=topk)
    return DartConfig(**fields)


def _load(model_dir: Path):
    """Golden model folders hold weights and config only: prompts are token ids, no tokenizer needed."""
    from transformers import AutoModelForCausalLM

    if not (model_dir / "config.json").exists():
        raise ValueError(f"golden model folder {model_dir} has no config.json")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, use_safetensors=True)
    return model.eval(), None


def replay_run(run: dict[str, Any], base: Path, models: dict[str, Any]) -> dict[str, Any]:
    if run["model_dir"] not in models:
        models[run["model_dir"]] = _load(base / run["model_dir"])
    model, tokenizer = models[run["model_dir"]]
    engine = DartEngine(model, tokenizer, config_from_reference(run["config"]))
    try:
        gen = GenerationConfig(max_new_tokens=len(run["generated"]), stop_on_eos=False)
        result = engine.generate([run["prompt_ids"]], gen, trace=True)[0]
    finally:
        engine.close()
    out = {"name": run["name"], "generated": result.token_ids,
           "mask_formations": result.trace.mask_formations, "kept_per_forward": result.trace.kept_per_forward,
           "drift_windows": result.trace.drift_windows}
    if run.get("proxies"):
        proxies = engine.proxies
        out["proxies"] = {f"layer_{i}": {"max": proxies.pmax[i].tolist(), "mean": proxies.pmean[i].tolist()}
                          for i in range(proxies.pmax.shape[0])}
    return out


def replay_file(golden: Path) -> list[dict[str, Any]]:
    runs = json.loads(golden.read_text())
    models: dict[str, Any] = {}
    return [replay_run(run, golden.parent, models) for run in runs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("golden", type=Path, help="golden runs (JSON list), model folders beside it")
    parser.add_argument("out", type=Path, help="where to write the replay (JSON list)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(0)
    records = replay_file(args.golden)
    args.out.write_text(json.dumps(records))
    log.info("replayed %d runs into %s", len(records), args.out)


if __name__ == "__main__":
    main()

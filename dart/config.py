"""Typed, validated settings of the DART engine (DART_SPEC.md sections 2-6)."""
from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .per_layer import check_per_layer_syntax

Method = Literal["dense", "static", "griffin", "dart"]
Ranking = Literal["magnitude", "max", "mean", "combined", "product"]
Selection = Literal["topk", "mean_threshold"]
BudgetKind = Literal["uniform", "per_layer", "auto"]
FfnPath = Literal["auto", "masked", "compact"]
DecodeMasks = Literal["per_row", "shared"]
LinearKernel = Literal["auto", "torch", "onednn"]
RemaskPolicy = Literal["reset", "carry"]
PrefillMode = Literal["dense", "blockwise"]


def takes_numbers_only(annotation: Any) -> bool:
    """Whether a field's type admits int or float but not bool (pydantic would read true as 1)."""
    kinds = set(typing.get_args(annotation)) if typing.get_args(annotation) else {annotation}
    return bool(kinds & {int, float}) and bool not in kinds


class FrozenModel(BaseModel):
    """Base of every config: frozen, unknown keys refused, numbers finite and never true/false."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and takes_numbers_only(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a number, got {str(value).lower()}")
        return value


class AutoBudgetConfig(FrozenModel):
    """Depth-aware budget of spec section 4 (`auto`)."""

    alpha: float = Field(0.25, ge=0, le=1, description="Depth weight of the first layer.")
    beta: float = Field(0.35, ge=0, le=1, description="Depth weight of the last layer.")
    early_width: float = Field(0.3, gt=0, le=1, description="w_e: fraction of depth ramped up from alpha.")
    late_width: float = Field(0.15, gt=0, le=1, description="w_l: fraction of depth ramped down to beta.")
    min_sparsity: float = Field(0.10, ge=0, lt=1, description="p_min: lowest sparsity of any layer.")
    max_sparsity: float = Field(0.90, gt=0, le=1, description="p_max: highest sparsity of any layer.")
    rounds: int = Field(10, ge=0, description="Redistribution rounds after clipping.")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> "AutoBudgetConfig":
        if self.min_sparsity >= self.max_sparsity:
            raise ValueError("auto.min_sparsity must be below auto.max_sparsity")
        return self


class DriftConfig(FrozenModel):
    """Drift detection and re-masking (spec section 6)."""

    window: int = Field(5, ge=1, description="W: tokens per window of the attention signal.")
    kappa: float = Field(0.1, ge=0, description="Threshold spread multiplier.")
    delta: float = Field(0.1, ge=0, description="Minimum threshold margin below the baseline mean.")
    pressure: int = Field(1, ge=1, description="P: consecutive-ish low windows needed to fire.")
    recalibration_tokens: int = Field(
        0, ge=0, description="After a drift event, dense forwards to calibrate on before re-masking "
        "(0: the epoch's own mask_step).")
    signal_layers: int = Field(1, ge=1, description="Drift signal: attention outputs of this many last layers, "
                               "concatenated (1: the last layer, as the paper).")
    baseline_tokens: int = Field(
        0, ge=0, description="Least signal tokens an epoch's baseline forms from; it forms at mask formation "
        "or, if fewer tokens were seen, at the first forward that reaches this many (0: at mask formation).")
    replay_tokens: int = Field(
        0, ge=0, description="At a drift event, the FFN inputs of this many most recent tokens are run through "
        "every neuron once and join the new epoch's statistics, so its masks form from more than the one token "
        "after the event (0: none, as the paper).")
    policy: RemaskPolicy = Field(
        "carry", description="What a new epoch keeps: 'carry' (default) keeps the budgets and mixes the old "
        "epoch's per-token scores into the new epoch's, with no dense forward; 'reset' clears scores and budgets "
        "(the paper's policy, DART_SPEC section 6).")
    carry_weight: float = Field(1.0, ge=0, description="Under 'carry': weight of the old epoch's per-token "
                                "statistic against the new epoch's tokens (1: equal).")


class PrefillConfig(FrozenModel):
    """How the prompt runs (docs/prefill.md): in one dense forward, or in blocks pruned by DART."""

    mode: PrefillMode = Field("dense", description="dense: the prompt is one forward that calibrates (DART_SPEC); "
                              "blockwise: the prompt runs in blocks through the KV cache, the first calibrating "
                              "and the following ones on each row's kept neurons.")
    block_tokens: int = Field(64, description="blockwise: real prompt tokens per block and row (at least 1); a "
                              "block at least as long as the prompt runs it as dense mode does.")
    first_block_tokens: int | None = Field(
        None, description="blockwise: tokens of the first (calibrating) block, at least 1 (null: block_tokens). "
        "A short first block with longer blocks after it prunes more of the prompt in fewer forwards.")
    drift_in_prompt: bool = Field(
        True, description="blockwise, method dart: drift events may fire in prompt blocks. A block after an event "
        "re-forms its masks from its own tokens and so computes every neuron (a dense block's FLOPs); false: "
        "the blocks build the drift baseline and windows are watched from the first generated token on.")

    @field_validator("block_tokens", "first_block_tokens")
    @classmethod
    def _block_tokens_positive(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"prefill.{info.field_name} must be at least 1 (prompt tokens per block), got {v}")
        return v

    def starts(self, prompt_tokens: int) -> list[int]:
        """Where each block of a prompt of `prompt_tokens` tokens starts."""
        first = self.block_tokens if self.first_block_tokens is None else self.first_block_tokens
        return [0] + list(range(first, prompt_tokens, self.block_tokens))


class DartConfig(FrozenModel):
    """How one model prunes its FFN neurons. Parsed once at the boundary, then passed down."""

    method: Method = Field("dart", description="dense | static (masks once, no drift) | griffin | dart.")
    ranking: Ranking = Field("combined", description="Neuron ranking of spec section 2.")
    decay: float | None = Field(None, description="EMA decay of |a| in (0,1); None = L2 aggregation.")
    selection: Selection = Field("topk", description="topk keeps k_l per layer; mean_threshold keeps score >= mean.")
    budget: BudgetKind = Field("auto", description="uniform | per_layer | auto (depth-aware).")
    keep_ratio: float = Field(0.5, description="Kept fraction of FFN neurons (uniform), or 1 - target sparsity (auto).")
    per_layer: str | dict[int, float] | None = Field(
        None, description="per_layer budget: {layer: ratio or count} or the string form '0:0.9,1-3:0.5' / 'all:0.3'.")
    auto: AutoBudgetConfig = Field(default_factory=AutoBudgetConfig, description="Depth-aware budget knobs.")
    mask_step: int = Field(0, ge=0, description="Forward of each epoch at which masks form (0 = prefill).")
    release_step: int | None = Field(None, ge=0, description="After this many generated tokens run dense.")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Drift detection (method dart only).")
    ffn_path: FfnPath = Field("auto", description="masked multiplies by masks; compact computes only the "
                              "kept neurons (rows sharing one mask); auto picks per forward between masked, "
                              "compact and the union of the rows' kept neurons, by the weight bytes each reads "
                              "(decode) or the seconds each takes (a prompt block).")
    gather_cost: float | None = Field(None, gt=0, description="Under ffn_path auto, the decode forwards a gather "
                                      "of half the neurons takes to repay; null: measured per engine, device, dtype "
                                      "and batch size, and a prompt block's paths by their measured seconds "
                                      "(dart/gather_cost.py); given: prompt blocks by neuron-tokens, gathers free.")
    decode_masks: DecodeMasks = Field("per_row", description="per_row: each row decodes on its own kept "
                                      "neurons (a batch of rows with different sets runs on their union, which at "
                                      "4 rows and keep 0.5 is nearly every neuron); shared: a decode forward whose "
                                      "rows hold different sets runs all of them on one set per layer, the top of "
                                      "their summed scores (each row's scaled to sum 1) at their mean width, so the "
                                      "FFN shrinks at any batch size, and a row's tokens depend on its batch mates. A "
                                      "forward not yet gathered (auto's wait, or ffn_path masked) runs masked by the "
                                      "shared set, so tokens do not depend on the path; a forward in which a row forms "
                                      "or calibrates its masks runs each row on its own.")
    prefill: PrefillConfig = Field(default_factory=PrefillConfig, description="Dense or block-wise prompt.")
    linear_kernel: LinearKernel = Field("auto", description="Matmul kernel of the model's Linears on a CPU: "
                                        "torch's default, oneDNN on packed weights, or auto (the faster of the "
                                        "two, measured when the engine starts; dart/kernels.py).")

    @field_validator("keep_ratio")
    @classmethod
    def _keep_ratio_in_range(cls, v: float) -> float:
        if not 0.0 < v <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {v}")
        return v

    @field_validator("decay")
    @classmethod
    def _decay_in_range(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v < 1.0:
            raise ValueError(f"decay must be in (0, 1) or null, got {v}")
        return v

    @model_validator(mode="after")
    def _per_layer_given(self) -> "DartConfig":
        if self.budget == "per_layer" and self.per_layer is None:
            raise ValueError("budget 'per_layer' needs per_layer (e.g. '0:0.9,1-5:0.5')")
        if self.per_layer is not None:
            check_per_layer_syntax(self.per_layer)
        return self

    @property
    def blockwise(self) -> bool:
        """The prompt runs in pruned blocks; method dense runs its prompt whole whatever prefill says."""
        return self.prefill.mode == "blockwise" and self.prunes

    @property
    def prunes(self) -> bool:
        return self.method != "dense"

    @property
    def drift_enabled(self) -> bool:
        return self.method == "dart"

    @property
    def effective_mask_step(self) -> int:
        """auto needs one complete forward first; griffin forms from the prompt."""
        if self.method == "griffin":
            return 1
        if self.budget == "auto":
            return max(1, self.mask_step)
        return self.mask_step

    @property
    def target_sparsity(self) -> float:
        return 1.0 - self.keep_ratio


MIN_TEMPERATURE = 1e-4
MIN_TOP_P = 1e-6

# The rowwise prompt path gathers a copy of each row's kept FFN weights: together at most this many
# times the FFN weights (at keep 0.5, four rows; Llama-3.1-8B's copy is 5.25 GiB a row), else the union.
ROWWISE_MAX_FFN_COPIES = 2.0


class GenerationConfig(FrozenModel):
    """Decoding settings shared by every row of a batch."""

    max_new_tokens: int = Field(64, ge=1, description="Tokens to generate at most.")
    temperature: float = Field(0.0, ge=0, description=f"0 = greedy; from {MIN_TEMPERATURE} on, samples.")
    top_p: float = Field(1.0, ge=MIN_TOP_P, le=1, description="Nucleus sampling mass (at least "
                         f"{MIN_TOP_P}: below it the float32 probabilities it is compared with underflow).")
    seed: int = Field(0, description="Base seed; each row samples from its own generator.")
    stop_on_eos: bool = Field(True, description="Stop a row at the tokenizer's EOS tokens.")

    @field_validator("temperature")
    @classmethod
    def _temperature_samples(cls, v: float) -> float:
        if 0 < v < MIN_TEMPERATURE:   # logits / temperature overflow to inf, and sampling to NaN
            raise ValueError(f"temperature {v} is below {MIN_TEMPERATURE} and would overflow the logits; "
                             "use 0 for greedy decoding")
        return v

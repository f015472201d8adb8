"""Batched generation and scoring with per-sequence DART state on a patched Hugging Face model."""
from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence

import torch
from transformers import DynamicCache

from . import budget
from .compact import FfnPlan, GatherCache
from .config import DartConfig, GenerationConfig
from .patch import Runtime, check_supported, decoder_layers, patch_model, unpatch_model
from .proxies import Proxies, load_or_compute
from .runtime import ForwardPass, batch_masks
from .sampling import next_tokens, row_generator
from .state import FfnExecution, ForwardPhase, ModelShape, SequenceState
from .telemetry import ContinuationScores, GenerationResult, SequenceTelemetry

log = logging.getLogger(__name__)


class DartEngine:
    """Owns one patched model. Not thread-safe: one batch at a time."""

    def __init__(self, model, tokenizer, config: DartConfig, *, fingerprint: str | None = None,
                 proxies: Proxies | None = None) -> None:
        check_supported(model)
        self.model, self.tokenizer, self.config = model, tokenizer, config
        cfg = model.config
        layers = decoder_layers(model)
        self.shape = ModelShape(len(layers), layers[0].mlp.down_proj.in_features, cfg.hidden_size,
                                layers[0].mlp.down_proj.weight.element_size())
        self.device = model.get_input_embeddings().weight.device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.fixed_counts = self._fixed_counts(config)
        needs_proxies = config.method in ("static", "dart") and config.ranking != "magnitude"
        if needs_proxies and proxies is None:
            down = [layer.mlp.down_proj.weight for layer in layers]
            proxies = load_or_compute(down, model.get_input_embeddings().weight.detach(), fingerprint)
        self.proxies = None if proxies is None else Proxies(proxies.pmax.to(self.device), proxies.pmean.to(self.device))
        self.runtime = Runtime()
        self._handles = patch_model(model, self.runtime, config.drift.signal_layers if config.drift_enabled else 1)
        self._uids = itertools.count()
        self._mask_cache: tuple[tuple, torch.Tensor | None] = ((), None)
        self._gather = GatherCache([layer.mlp for layer in decoder_layers(model)], config.ffn_path, self.dtype)
        self.eos_ids = self._eos_ids()

    # ---- setup ----------------------------------------------------------------------------
    def _fixed_counts(self, config: DartConfig) -> list[int] | None:
        L, N = self.shape.num_layers, self.shape.width
        if config.method == "griffin" or config.budget == "uniform":
            return budget.uniform_counts(config.keep_ratio, L, N)
        if config.budget == "per_layer":
            return budget.per_layer_counts(config.per_layer, L, N)
        return None

    def _eos_ids(self) -> set[int]:
        ids = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            ids.update(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
        return ids

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad if pad is not None else next(iter(self.eos_ids), 0))

    def close(self) -> None:
        """Restore the unpatched model."""
        unpatch_model(self.model, self._handles)
        self._handles = []

    def new_state(self, trace: bool = False) -> SequenceState:
        return SequenceState(self.config, self.shape, self.proxies, self.fixed_counts, self.device,
                             trace=trace, uid=next(self._uids))

    def check_prompt(self, prompt: Sequence[int]) -> None:
        if len(prompt) == 0:
            raise ValueError("empty prompt: give at least one token")
        if len(prompt) >= self.max_context:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the model's context of "
                             f"{self.max_context} tokens (truncate it)")

    # ---- one forward ----------------------------------------------------------------------
    def _masks(self, states, phases) -> torch.Tensor | None:
        key = tuple((s.uid, s.mask_version, p.masked) for s, p in zip(states, phases))
        if any(p.form_in_forward for p in phases):
            return batch_masks(states, phases, self.dtype, self.device)
        if key != self._mask_cache[0]:
            self._mask_cache = (key, batch_masks(states, phases, self.dtype, self.device))
        return self._mask_cache[1]

    def _forward(self, states, phases, input_ids, attention_mask, position_ids, cache, token_mask, all_logits=False):
        plan = self._gather.plan(states, phases)
        masks = None if plan.gathered else self._masks(states, phases)
        self.runtime.current = ForwardPass(states, phases, token_mask, masks, plan.weights)
        try:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, use_cache=True, logits_to_keep=0 if all_logits else 1)
        finally:
            self.runtime.current = None
        return out.logits.float(), self._execution(states, plan, masks)

    def _execution(self, states, plan: FfnPlan, masks: torch.Tensor | None) -> FfnExecution:
        """What the forward just run computed in the FFN, for each row's ledger."""
        sequences = len({s.uid for s in states})
        if plan.path == "masked":
            elements = 0 if masks is None else self.shape.num_layers * self.shape.width
            return FfnExecution("masked", None, elements, sequences)
        elements = sum(plan.widths) if plan.path == "union" else 0
        return FfnExecution(plan.path, plan.widths, elements, sequences)

    def _step(self, states, input_ids, attention_mask, position_ids, cache, token_mask):
        """Advance every row's schedule by one forward; returns last-position logits [B, V]."""
        tokens = token_mask.sum(-1).tolist()
        unique = {s.uid: (s, t) for s, t in zip(states, tokens)}.values()
        phase_of = {s.uid: s.begin_forward(t) for s, t in unique}
        phases = [phase_of[s.uid] for s in states]
        logits, execution = self._forward(states, phases, input_ids, attention_mask, position_ids, cache, token_mask)
        for state, count in zip(states, tokens):
            state.end_forward(count, execution)
        return logits[:, -1]

    # ---- generation -----------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], gen: GenerationConfig,
                 seeds: Sequence[int] | None = None, trace: bool = False) -> list[GenerationResult]:
        """Generate for a batch of token-id prompts; each row keeps its own DART state."""
        for prompt in prompts:
            self.check_prompt(prompt)
        if not prompts:
            return []
        batch = len(prompts)
        states = [self.new_state(trace) for _ in prompts]
        generators = [row_generator(gen.seed if seeds is None else seeds[b], self.device) for b in range(batch)]
        width = max(len(p) for p in prompts)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long, device=self.device)
        attention_mask = torch.zeros((batch, width), dtype=torch.long, device=self.device)
        for b, prompt in enumerate(prompts):
            input_ids[b, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            attention_mask[b, width - len(prompt):] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache(config=self.model.config)

        start = time.perf_counter()
        logits = self._step(states, input_ids, attention_mask, position_ids, cache, attention_mask.bool())
        prefill_seconds = time.perf_counter() - start
        decode_seconds = [0.0] * batch
        outputs: list[list[int]] = [[] for _ in prompts]
        finish: list[str | None] = [None] * batch
        active = list(range(batch))
        next_pos = attention_mask.sum(-1)
        tokens = next_tokens(logits, gen, generators)
        while True:
            for i, row in enumerate(active):
                token = int(tokens[i])
                outputs[row].append(token)
                if gen.stop_on_eos and token in self.eos_ids:
                    finish[row] = "eos"
                elif len(outputs[row]) >= gen.max_new_tokens or len(prompts[row]) + len(outputs[row]) >= self.max_context:
                    finish[row] = "length"
            keep = [i for i, row in enumerate(active) if finish[row] is None]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                attention_mask, next_pos, tokens = attention_mask[index], next_pos[index], tokens[index]
                active = [active[i] for i in keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], dim=1)
            step_start = time.perf_counter()
            logits = self._step([states[r] for r in active], tokens[:, None], attention_mask, next_pos[:, None],
                                cache, torch.ones(len(active), 1, dtype=torch.bool, device=self.device))
            tokens = next_tokens(logits, gen, [generators[r] for r in active])
            next_pos = next_pos + 1
            elapsed = time.perf_counter() - step_start
            for row in active:
                decode_seconds[row] += elapsed
        self._gather.clear()
        return [GenerationResult(outputs[b], finish[b] or "length",
                                 self.telemetry(states[b], len(prompts[b]), len(outputs[b]), prefill_seconds,
                                                decode_seconds[b]), states[b].trace)
                for b in range(batch)]

    # ---- scoring --------------------------------------------------------------------------
    @torch.inference_mode()
    def continuation_logprobs(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]
                              ) -> tuple[list[torch.Tensor], SequenceTelemetry]:
        """Log-probs [len(c), V] of each continuation's positions after the prompt, in one forward over
        all continuations, with the masks DART forms from the prompt (no drift inside a continuation)."""
        self.check_prompt(prompt)
        if not continuations or any(len(c) == 0 for c in continuations):
            raise ValueError("every continuation needs at least one token")
        longest = max(len(c) for c in continuations)
        if len(prompt) + longest > self.max_context:
            raise ValueError(f"prompt plus continuation ({len(prompt) + longest} tokens) exceeds the context "
                             f"of {self.max_context}")
        state = self.new_state()
        ids = torch.tensor([list(prompt)], dtype=torch.long, device=self.device)
        mask = torch.ones_like(ids)
        cache = DynamicCache(config=self.model.config)
        start = time.perf_counter()
        first = torch.log_softmax(self._step([state], ids, mask, mask.cumsum(-1) - 1, cache, mask.bool()), -1)
        prefill_seconds = time.perf_counter() - start
        state.form_now()
        count = len(continuations)
        cache.batch_repeat_interleave(count)
        cont = torch.full((count, longest), self.pad_id, dtype=torch.long, device=self.device)
        cont_mask = torch.zeros_like(cont)
        for i, c in enumerate(continuations):
            cont[i, :len(c)] = torch.tensor(list(c), dtype=torch.long)
            cont_mask[i, :len(c)] = 1
        attention = torch.cat([mask.expand(count, -1), cont_mask], dim=1)
        positions = len(prompt) + torch.arange(longest, device=self.device).expand(count, -1)
        start = time.perf_counter()
        phases = [ForwardPhase(masked=state.kept is not None)] * count
        logits, execution = self._forward([state] * count, phases, cont, attention, positions, cache,
                                          cont_mask.bool(), all_logits=True)
        state.end_forward(int(cont_mask.sum()), execution)
        logprobs = torch.log_softmax(logits, dim=-1)                      # [C, T, V]
        per_position = [torch.cat([first, logprobs[i, :len(c) - 1]]) for i, c in enumerate(continuations)]
        telemetry = self.telemetry(state, len(prompt), 0, prefill_seconds, time.perf_counter() - start)
        return per_position, telemetry

    def score_continuations(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> ContinuationScores:
        """Sum of log-probs of each continuation after the prompt, under the prompt's DART masks."""
        per_position, telemetry = self.continuation_logprobs(prompt, continuations)
        totals = [float(lp.gather(1, torch.tensor(list(c), device=lp.device)[:, None]).sum())
                  for lp, c in zip(per_position, continuations)]
        return ContinuationScores(totals, [len(c) for c in continuations], telemetry)

    # ---- telemetry ------------------------------------------------------------------------
    def telemetry(self, state: SequenceState, prompt_tokens: int, generated: int, prefill_seconds: float,
                  decode_seconds: float) -> SequenceTelemetry:
        ledger = state.ledger
        per_token = ledger.sparsity[:generated]
        final = state.kept
        kept_fraction = [1.0] * self.shape.num_layers if final is None else \
            [k.numel() / self.shape.width for k in final]
        return SequenceTelemetry(
            method=self.config.method, prompt_tokens=prompt_tokens, generated_tokens=generated,
            mask_step=self.config.effective_mask_step if self.config.prunes else 0, epochs=state.epoch + 1,
            drift_events=len(state.drift_positions), drift_positions=list(state.drift_positions),
            drift_cosines=list(state.drift_cosines), drift_cosine_positions=list(state.drift_cosine_positions),
            epoch_thresholds=list(state.thresholds), kept_fraction_per_layer=kept_fraction,
            sparsity_per_token=per_token, applied_sparsity=sum(per_token) / len(per_token) if per_token else 0.0,
            ffn_flops_dense=ledger.flops_dense, ffn_flops_kept=ledger.flops_kept,
            ffn_flops_executed=ledger.flops_executed, ffn_bytes_dense=ledger.bytes_dense,
            ffn_bytes_executed=ledger.bytes_executed, dart_overhead_flops=ledger.overhead_flops,
            dart_state_bytes=state.peak_state_bytes, compact_forwards=ledger.compact_forwards,
            union_forwards=ledger.union_forwards, prefill_seconds=prefill_seconds, decode_seconds=decode_seconds)

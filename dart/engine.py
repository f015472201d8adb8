"""Batched generation and scoring with per-sequence DART state on a patched Hugging Face model."""
from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence

import torch

from . import budget, scoring
from .accounting import FfnExecution, ModelShape
from .batch import DecodeBatch
from .compact import FfnPlan
from .config import DartConfig, GenerationConfig
from .gather import GatherCache
from .kernels import Routing, choose_kernel, route_linears
from .kv_cache import growing_cache
from .model_config import cache_root
from .patch import Runtime, check_supported, decoder_layers, patch_model, unpatch_model
from .phase import IDLE, ForwardPhase
from .prefill import run_blocks
from .proxies import Proxies, load_or_compute
from .runtime import ForwardPass, batch_masks
from .sampling import eos_token_ids, next_tokens, row_generator
from .state import SequenceState
from .telemetry import ContinuationScores, GenerationResult, SequenceTelemetry, sequence_telemetry


class DartEngine:
    """Owns one patched model. Not thread-safe: one forward at a time.

    Generation is composed of two steps, as gpt-fast's: `prefill` runs prompts as the first forward
    of new rows and returns a `DecodeBatch`; `decode_step` feeds one token per row of it. `generate`
    and the scoring methods are built on them; a scheduler may drive them directly.
    """

    def __init__(self, model, tokenizer, config: DartConfig, *, fingerprint: str | None = None,
                 proxies: Proxies | None = None, cache_dir: str | None = None) -> None:
        check_supported(model)
        self.model, self.tokenizer, self.config = model, tokenizer, config
        cfg = model.config
        layers = decoder_layers(model)
        self.shape = ModelShape(len(layers), layers[0].mlp.down_proj.in_features, cfg.hidden_size,
                                layers[0].mlp.down_proj.weight.element_size())
        self.device = model.get_input_embeddings().weight.device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.fixed_counts = budget.fixed_counts(config, self.shape.num_layers, self.shape.width)
        needs_proxies = config.method in ("static", "dart") and config.ranking != "magnitude"
        if needs_proxies and proxies is None:
            down = [layer.mlp.down_proj.weight for layer in layers]
            proxies = load_or_compute(down, model.get_input_embeddings().weight.detach(), fingerprint,
                                      cache_root(cache_dir) / "proxies")
        self.proxies = None if proxies is None else Proxies(proxies.pmax.to(self.device), proxies.pmean.to(self.device))
        self.runtime = Runtime()
        self._handles = patch_model(model, self.runtime, config.drift.signal_layers if config.drift_enabled else 1)
        self.verdicts = cache_root(cache_dir) / "kernels"      # measured choices of this machine (dart.kernels)
        self.kernel = choose_kernel(config.linear_kernel, [layer.mlp.gate_proj.weight for layer in layers],
                                    cfg.hidden_size, self.verdicts)
        self._routing = route_linears(model, layers) if self.kernel == "onednn" else Routing([])   # DartMLPs' too
        self._uids = itertools.count()
        self._mask_cache: tuple[tuple, torch.Tensor | None] = ((), None)
        self.gathers = GatherCache([layer.mlp for layer in layers], config, self.dtype, onednn=self.kernel == "onednn",
                                   cache_dir=self.verdicts)
        self.eos_ids = eos_token_ids(model, tokenizer)

    # ---- setup ----------------------------------------------------------------------------
    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad if pad is not None else next(iter(self.eos_ids), 0))

    def close(self) -> None:
        """Restore the unpatched model and free the engine's weight copies."""
        self.gathers.close(), self._routing.undo()
        unpatch_model(self.model, self._handles)
        self._handles = []

    def release_gathered(self) -> None:
        """Free the FFN weights gathered for the last mask sets; a later forward gathers again if need be."""
        self.gathers.clear()

    def new_state(self, trace: bool = False) -> SequenceState:
        return SequenceState(self.config, self.shape, self.proxies, self.fixed_counts, self.device,
                             trace=trace, uid=next(self._uids))

    def fork(self, batch: DecodeBatch, rows: Sequence[int]) -> DecodeBatch:
        """A new batch of copies of `rows`, each with its own copy of the row's state and cache: what runs
        on the fork leaves the rows as they were."""
        return batch.fork(rows, [batch.states[i].fork(next(self._uids)) for i in rows])

    def check_prompt(self, prompt: Sequence[int]) -> None:
        if len(prompt) == 0:
            raise ValueError("empty prompt: give at least one token")
        if len(prompt) >= self.max_context:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the model's context of "
                             f"{self.max_context} tokens (truncate it)")

    # ---- steps ----------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]], states: Sequence[SequenceState] | None = None
                ) -> tuple[torch.Tensor, DecodeBatch]:
        """Run token-id prompts, left-padded to one width, as the first forward of new rows, or under
        `prefill.mode: blockwise` as its first forwards, one per block (`states`: fresh ones from
        `new_state`, made here if not given). Returns the next-token logits [B, V] (float32) and the
        batch to decode from."""
        if not prompts:
            raise ValueError("prefill needs at least one prompt")
        for prompt in prompts:
            self.check_prompt(prompt)
        states = [self.new_state() for _ in prompts] if states is None else list(states)
        if len(states) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(states)} states: give one state per prompt")
        blockwise = self.config.blockwise
        starts = self.config.prefill.starts(max(len(p) for p in prompts)) if blockwise else [0]
        for state, prompt in zip(states, prompts):
            state.prompt_forwards = sum(start < len(prompt) for start in starts)
        batch = DecodeBatch.empty(states, growing_cache(self.model.config), self.device)
        logits = run_blocks(lambda ids, mask, counts, logits: self._step(batch, ids, mask, counts, blockwise, logits),
                            prompts, starts, self.pad_id, self.device)
        return logits, batch

    @torch.inference_mode()
    def decode_step(self, batch: DecodeBatch, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (tokens: [B] ids) as the next forward of every row's schedule.
        Returns the next-token logits [B, V] (float32)."""
        if tokens.shape != (len(batch),):
            raise ValueError(f"decode_step takes one token per row: shape ({len(batch)},), got {tuple(tokens.shape)}")
        return self._step(batch, tokens[:, None], torch.ones(len(batch), 1, dtype=torch.bool, device=self.device),
                          [1] * len(batch))

    @torch.inference_mode()
    def teacher_force(self, batch: DecodeBatch, input_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Run known tokens [B, T] (token_mask [B, T] bool, False at padding) under each row's masks,
        formed now from its statistics if not yet: no calibration, no drift monitoring. Each distinct
        state accounts one forward of its rows' tokens. Returns logits at every position [B, T, V]."""
        phase_of = {s.uid: s.form_now() for s in batch.states}
        phases = [phase_of[s.uid] for s in batch.states]
        return self._run(batch, phases, input_ids, token_mask, token_mask.sum(-1).tolist(), keep=0)

    def _step(self, batch: DecodeBatch, input_ids: torch.Tensor, token_mask: torch.Tensor, counts: list[int],
              prompt_block: bool = False, logits: bool = True) -> torch.Tensor | None:
        """One forward that advances the schedule of every row with a token in it (counts: each row's real
        tokens, known to the host); returns last-position logits [B, V], or None without `logits`."""
        tokens = self._tokens_per_state(batch.states, counts)
        phase_of = {uid: state.begin_forward(count, prompt_block) if count else IDLE
                    for uid, (state, count) in tokens.items()}
        phases = [phase_of[s.uid] for s in batch.states]
        out = self._run(batch, phases, input_ids, token_mask, counts, keep=1 if logits else None)
        return None if out is None else out[:, -1]

    @staticmethod
    def _tokens_per_state(states: list[SequenceState], counts: list[int]) -> dict[int, tuple]:
        """{uid: (state, real tokens of its rows)}: rows sharing a state count as one sequence."""
        out: dict[int, tuple] = {}
        for state, count in zip(states, counts):
            out[state.uid] = (state, out.get(state.uid, (state, 0))[1] + count)
        return out

    def _run(self, batch: DecodeBatch, phases: list[ForwardPhase], input_ids: torch.Tensor,
             token_mask: torch.Tensor, counts: list[int], keep: int | None = 1) -> torch.Tensor | None:
        """Forward the tokens through the model and the cache, then account it in each state. Logits of the
        last `keep` positions (0: all; None: none, the LM head not run)."""
        attention_mask, position_ids = batch.append(token_mask)
        logits, execution = self._forward(batch.states, phases, input_ids, attention_mask, position_ids,
                                          batch.cache, token_mask, counts, keep)
        batch.advance(attention_mask, token_mask)
        for state, count in self._tokens_per_state(batch.states, counts).values():
            if count:
                state.end_forward(count, execution[state.uid])
        return logits

    # ---- one forward ----------------------------------------------------------------------
    def _masks(self, states, phases) -> torch.Tensor | None:
        key = tuple((s.uid, s.mask_version, p.masked) for s, p in zip(states, phases))
        if any(p.form_in_forward for p in phases):
            return batch_masks(states, phases, self.dtype, self.device)
        if key != self._mask_cache[0]:
            self._mask_cache = (key, batch_masks(states, phases, self.dtype, self.device))
        return self._mask_cache[1]

    def _forward(self, states, phases, input_ids, attention_mask, position_ids, cache, token_mask, counts, keep=1):
        plan = self.gathers.plan(states, phases, counts, token_mask.shape[1])
        masks = plan.masks if plan.masks is not None or plan.gathered else self._masks(states, phases)
        self.runtime.current = ForwardPass(states, phases, token_mask, counts, masks, plan.weights, plan.row_weights)
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                      use_cache=True)
        try:
            logits = None
            if keep is None:         # the decoder alone: no row needs this forward's logits
                self.model.get_decoder()(**inputs)
            else:
                logits = self.model(**inputs, logits_to_keep=keep).logits.float()
        finally:
            self.runtime.current = None
        return logits, self._execution(states, plan, masks, counts)

    def _execution(self, states, plan: FfnPlan, masks: torch.Tensor | None, counts) -> dict[int, FfnExecution]:
        """What the forward just run computed in the FFN, for each row's ledger: {uid: execution}."""
        active = [s for s, count in zip(states, counts) if count]
        sequences = len({s.uid for s in active})
        if plan.path == "rowwise":          # each row reads its own gathered weights
            return {s.uid: FfnExecution("rowwise", [w.width for w in weights], 0, sequences, reads_alone=True)
                    for s, weights in zip(states, plan.row_weights) if weights is not None}
        if plan.path == "masked":
            elements = 0 if masks is None else self.shape.num_layers * self.shape.width
            execution = FfnExecution("masked", None, elements, sequences, applied=plan.applied)
        else:
            execution = FfnExecution(plan.path, plan.widths, sum(plan.widths) if plan.path == "union" else 0,
                                     sequences, applied=plan.applied)
        return {s.uid: execution for s in states}

    # ---- generation -----------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], gen: GenerationConfig,
                 seeds: Sequence[int] | None = None, trace: bool = False) -> list[GenerationResult]:
        """Generate for a batch of token-id prompts; each row keeps its own DART state."""
        if not prompts:
            return []
        count = len(prompts)
        states = [self.new_state(trace) for _ in prompts]
        generators = [row_generator(gen.seed if seeds is None else seeds[b], self.device) for b in range(count)]
        start = time.perf_counter()
        logits, batch = self.prefill(prompts, states)
        prefill_seconds = time.perf_counter() - start
        decode_seconds = [0.0] * count
        outputs: list[list[int]] = [[] for _ in prompts]
        finish: list[str | None] = [None] * count
        rows = list(range(count))                  # prompt index of each batch row
        tokens = next_tokens(logits, gen, generators)
        while True:
            for i, row in enumerate(rows):
                outputs[row].append(int(tokens[i]))
                finish[row] = self.finish_reason(len(prompts[row]), outputs[row], gen)
            keep = [i for i, row in enumerate(rows) if finish[row] is None]
            if not keep:
                break
            if len(keep) < len(rows):
                batch.select(keep)
                tokens, rows = tokens[torch.tensor(keep, device=self.device)], [rows[i] for i in keep]
            step_start = time.perf_counter()
            logits = self.decode_step(batch, tokens)
            tokens = next_tokens(logits, gen, [generators[r] for r in rows])
            elapsed = time.perf_counter() - step_start
            for row in rows:
                decode_seconds[row] += elapsed
        self.release_gathered()
        return [GenerationResult(outputs[b], finish[b] or "length",
                                 self.telemetry(states[b], len(prompts[b]), len(outputs[b]), prefill_seconds,
                                                decode_seconds[b]), states[b].trace)
                for b in range(count)]

    def finish_reason(self, prompt_tokens: int, output: list[int], gen: GenerationConfig) -> str | None:
        """Why a row stops after its last token, or None while it goes on."""
        if gen.stop_on_eos and output[-1] in self.eos_ids:
            return "eos"
        if len(output) >= gen.max_new_tokens or prompt_tokens + len(output) >= self.max_context:
            return "length"
        return None

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
        start = time.perf_counter()
        logits, batch = self.prefill([prompt], [state])
        first = torch.log_softmax(logits, -1)                               # [1, V]
        prefill_seconds = time.perf_counter() - start
        start = time.perf_counter()
        per_position = scoring.forced_logprobs(self, batch, first, continuations)
        telemetry = self.telemetry(state, len(prompt), 0, prefill_seconds, time.perf_counter() - start)
        scored = state.ledger.scored_sparsity(state.prompt_forwards, [len(c) for c in continuations])
        return per_position, dataclasses.replace(telemetry, applied_sparsity=scored)

    def score_continuations(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> ContinuationScores:
        """Sum of log-probs of each continuation after the prompt, under the prompt's DART masks."""
        per_position, telemetry = self.continuation_logprobs(prompt, continuations)
        return ContinuationScores(scoring.totals(per_position, continuations), [len(c) for c in continuations],
                                  telemetry)

    # ---- telemetry ------------------------------------------------------------------------
    def telemetry(self, state: SequenceState, prompt_tokens: int, generated: int, prefill_seconds: float,
                  decode_seconds: float) -> SequenceTelemetry:
        mask_step = self.config.effective_mask_step if self.config.prunes else 0
        return sequence_telemetry(state, self.config.method, mask_step, prompt_tokens, generated,
                                  prefill_seconds, decode_seconds)

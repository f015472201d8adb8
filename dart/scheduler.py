"""Continuous batching on the engine's steps: a finished row's slot is refilled from the waiting rows,
which are prefilled and join the running decode batch, each with its own DART state.

A row's tokens and telemetry do not depend on the rows beside it (each row keeps its own state,
generator, cache positions and attention mask), so they equal those of the row generated alone, up to
float rounding; the FFN weight bytes a forward reads are shared among its rows and so differ.
Waiting rows are taken longest first, and rows of similar length are prefilled together, so a
prefill pads little: a group grows only while its padding stays within `max_padding` of its tokens,
and only while it fits the engine's `GroupCap` (positions, and the longest prompt). A group shares
each forward's weight reads and pays its padding and an explicit attention mask (which gives up the
causal attention kernel), so on a CPU the cap is measured per machine and prompt schedule
(dart.group_cost): on an AMD EPYC in float32 4-row groups of Quoref prompts prefilled 1.14x slower than
each prompt alone, while on an AMX Xeon in bf16 block-wise DART's prompts prefilled 8% faster grouped
(their calibrating first blocks share a forward). On accelerators groups hold up to 4096 positions.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from .batch import DecodeBatch
from .config import GenerationConfig
from .engine import DartEngine
from .group_cost import GroupCap, group_cap
from .sampling import next_tokens, row_generator
from .scoring import score_prefilled
from .state import SequenceState
from .telemetry import GenerationResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    key: Hashable
    prompt: Sequence[int]
    seed: int
    score: Sequence[int] = ()     # a continuation to score after the prompt (GenerationResult.score)


@dataclass
class Row:
    """A request in flight: its state, sampler, tokens so far and time spent."""

    request: Request
    state: SequenceState
    generator: torch.Generator
    output: list[int] = field(default_factory=list)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    score: float | None = None


def prefill_groups(lengths: Sequence[int], max_rows: int, max_padding: float,
                   max_tokens: float | None = None, max_longest: float | None = None) -> list[int]:
    """Sizes of consecutive groups of the (longest first) lengths: each at most max_rows, and each
    grown only while its padding stays within max_padding of its real tokens, its positions (rows
    times the longest) within max_tokens and its longest prompt within max_longest (None: no bound);
    a group of one row is always allowed."""
    sizes, start = [], 0
    while start < len(lengths):
        size = 1
        while (start + size < len(lengths) and size < max_rows
               and (max_tokens is None or lengths[start] * (size + 1) <= max_tokens)
               and (max_longest is None or lengths[start] <= max_longest)
               and lengths[start] * (size + 1) - sum(lengths[start:start + size + 1])
               <= max_padding * sum(lengths[start:start + size + 1])):
            size += 1
        sizes.append(size)
        start += size
    return sizes


class ContinuousBatcher:
    """Generates for submitted requests, at most `max_rows` at a time; `step` advances every running row
    by one token and admits waiting rows into free slots first. Not thread-safe (as the engine)."""

    def __init__(self, engine: DartEngine, gen: GenerationConfig, max_rows: int, max_padding: float = 0.125,
                 group_tokens: int | None = None) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.engine, self.gen, self.max_rows, self.max_padding = engine, gen, max_rows, max_padding
        self.group = group_cap(engine) if group_tokens is None else GroupCap(group_tokens)
        self.waiting: list[Request] = []
        self.rows: list[Row] = []
        self.batch: DecodeBatch | None = None
        self.tokens: torch.Tensor | None = None     # the next token of each running row, to feed

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.rows

    def submit(self, requests: Sequence[Request]) -> None:
        """Queue requests; a prompt the engine refuses comes back from `step` as a ValueError."""
        self.waiting.extend(requests)
        self.waiting.sort(key=lambda r: -len(r.prompt))      # stable: equal lengths keep their order

    def step(self) -> list[tuple[Hashable, GenerationResult | ValueError]]:
        """Admit waiting rows into free slots, then one decode forward of the running rows. Returns the
        rows that finished, as (key, result), or (key, error) for a prompt the engine refused."""
        done = self.admit()
        if self.rows:
            began = time.perf_counter()
            logits = self.engine.decode_step(self.batch, self.tokens)
            self.tokens = next_tokens(logits, self.gen, [row.generator for row in self.rows])
            elapsed = time.perf_counter() - began
            for row in self.rows:
                row.decode_seconds += elapsed
            done += self.record(self.tokens)
        if not self.rows:
            self.engine.release_gathered()
        return done

    def admit(self) -> list[tuple[Hashable, GenerationResult | ValueError]]:
        """Prefill waiting rows into the free slots (longest first, in groups of similar length)."""
        done: list = []
        free = self.max_rows - len(self.rows)
        if self.batch is not None and not self.batch.joinable:
            free = 0 if self.rows else self.max_rows     # a cache rows cannot join: whole batches only
        taken, self.waiting = self.waiting[:free], self.waiting[free:]
        start = 0
        for size in prefill_groups([len(r.prompt) for r in taken], self.max_rows, self.max_padding,
                                   self.group.tokens, self.group.longest):
            done += self.prefill(taken[start:start + size])
            start += size
        return done

    def prefill(self, requests: list[Request]) -> list[tuple[Hashable, GenerationResult | ValueError]]:
        refused, accepted = [], []
        for request in requests:
            try:
                self.engine.check_prompt(request.prompt)
                accepted.append(request)
            except ValueError as err:
                refused.append((request.key, err))
        requests = accepted
        if not requests:
            return refused
        rows = [Row(r, self.engine.new_state(), row_generator(r.seed, self.engine.device)) for r in requests]
        began = time.perf_counter()
        logits, batch = self.engine.prefill([r.prompt for r in requests], [row.state for row in rows])
        tokens = next_tokens(logits, self.gen, [row.generator for row in rows])
        for row in rows:
            row.prefill_seconds = time.perf_counter() - began
        for i, row in enumerate(rows):
            if row.request.score:
                row.score = self.score(batch, i, logits, row.request.score)
        if self.batch is None or not self.rows:
            self.batch, self.rows, self.tokens = batch, rows, tokens
        else:
            self.batch.join(batch)
            self.rows += rows
            self.tokens = torch.cat([self.tokens, tokens])
        first = len(self.rows) - len(rows)
        return refused + self.record(tokens, first)

    def score(self, batch: DecodeBatch, row: int, logits: torch.Tensor, continuation: Sequence[int]) -> float | None:
        """The continuation's log-prob sum after a row just prefilled, or None (logged) if the engine refuses it."""
        try:
            return score_prefilled(self.engine, batch, row, logits, continuation)
        except ValueError as err:
            log.warning("continuation not scored: %s", err)
            return None

    def record(self, tokens: torch.Tensor, first: int = 0) -> list[tuple[Hashable, GenerationResult]]:
        """Append each row's new token (rows from index `first`); finished rows leave the batch."""
        done, keep = [], list(range(first))
        for i, token in enumerate(tokens.tolist(), start=first):
            row = self.rows[i]
            row.output.append(int(token))
            reason = self.engine.finish_reason(len(row.request.prompt), row.output, self.gen)
            if reason is None:
                keep.append(i)
            else:
                done.append((row.request.key, self.result(row, reason)))
        if len(keep) < len(self.rows):
            self.rows = [self.rows[i] for i in keep]
            if keep:
                self.batch.select(keep)
                self.batch.trim()
                self.tokens = self.tokens[torch.tensor(keep, device=self.tokens.device)]
            else:
                self.batch, self.tokens = None, None
        return done

    def result(self, row: Row, reason: str) -> GenerationResult:
        telemetry = self.engine.telemetry(row.state, len(row.request.prompt), len(row.output), row.prefill_seconds,
                                          row.decode_seconds)
        return GenerationResult(row.output, reason, telemetry, row.state.trace, row.score)


def generate_continuously(engine: DartEngine, requests: Sequence[Request], gen: GenerationConfig, max_rows: int
                          ) -> dict[Hashable, GenerationResult | ValueError]:
    """Every request generated with continuous batching: {key: result, or the engine's refusal}."""
    batcher = ContinuousBatcher(engine, gen, max_rows)
    batcher.submit(requests)
    out: dict = {}
    while not batcher.idle:
        out.update(batcher.step())
    return out

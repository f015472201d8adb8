"""How many prompts one prefill may group on a CPU: measured once per machine, dtype, kernel and prompt
schedule, cached beside the kernel verdicts.

Grouping prompts into one prefill shares each forward's weight reads among them, and costs the group's
padding and an explicit attention mask (which gives up the causal attention kernel). Which wins depends
on the machine and the config: on an AMD EPYC in float32, 4-row groups of Quoref prompts prefilled 1.14x
slower than each alone; on an AMX Xeon in bf16, dense prompts of 512 tokens lost 4-6% grouped and of 256
gained 15%, while block-wise DART's gained 11-13% at 512 (7.5% of the summarize job's prefill), its rows'
calibrating first blocks sharing one forward (bench/README.md section 26). So the engine as configured
prefills two prompts of each length of MEASURED_LENGTHS, longest first, grouped and alone, and lets
prompts group up to the longest length at which the group took at most GROUP_MAX_FRACTION of their time
alone (at the longest measured: any length). Two prompts gave the verdicts four did, in half the time:
4-5 s on that Xeon in bf16, 18 s in float32, once per machine and prompt schedule.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from .gather_cost import synchronize
from .kernels import best_seconds
from .verdicts import cached_measurement

log = logging.getLogger(__name__)

# Positions a prefill group may hold (rows times the longest prompt) where grouping did not measure
# faster (a 256-token prompt already fills a CPU's matmuls), and where it did or on accelerators.
UNGROUPED_TOKENS = 256
GROUPED_TOKENS = 4096
# GROUP_ROWS prompts of about each of these lengths are measured, longest first, until grouping pays.
# The second prompt is 1/32 shorter (the group padded), as in the scheduler's groups of similar lengths.
MEASURED_LENGTHS = (512, 256)
GROUP_ROWS = 2
# Grouping pays where it takes at most this fraction of the prompts' seconds alone.
GROUP_MAX_FRACTION = 0.95


@dataclass(frozen=True)
class GroupCap:
    """What one prefill group may hold: `tokens` positions (rows times the longest prompt), and prompts of
    at most `longest` tokens (inf: any)."""

    tokens: float
    longest: float = math.inf


def group_cap(engine) -> GroupCap:
    """The scheduler's prefill groups for this engine (dart.engine.DartEngine): measured on a CPU, once per
    machine, dtype, kernel and prompt schedule (engines differing in keep ratio or method share it)."""
    if engine.device.type != "cpu":
        return GroupCap(GROUPED_TOKENS)
    cfg = engine.config         # what a prompt's forwards are: one, or the blocks of a pruning method
    schedule = cfg.prefill.model_dump(mode="json") if cfg.blockwise else "one forward"
    key = {"shape": [engine.shape.num_layers, engine.shape.width, engine.shape.hidden], "dtype": str(engine.dtype),
           "kernel": engine.kernel, "prefill": schedule, "lengths": list(MEASURED_LENGTHS), "rows": GROUP_ROWS}
    return cached_measurement("group", key, engine.device, engine.verdicts, GroupCap,
                              lambda: measured_group_cap(engine))


@torch.inference_mode()
def measured_group_cap(engine) -> GroupCap:
    """GROUP_ROWS prompts of random tokens of about each MEASURED_LENGTHS length, longest first, prefilled by
    `engine` as configured as one group and each alone (the best of 2 alternated runs after one each; the
    gathered weights freed after each prefill, as a batcher frees them), until the group takes at most
    GROUP_MAX_FRACTION of the time: prompts then group up to that length (any, at the longest); where it
    never does, groups hold UNGROUPED_TOKENS positions."""
    generator = torch.Generator().manual_seed(0)
    vocab = int(engine.model.config.vocab_size)

    def prefill(group: list[list[int]]) -> None:
        engine.prefill(group)
        synchronize(engine.device)
        engine.release_gathered()

    cap = GroupCap(UNGROUPED_TOKENS)
    for length in MEASURED_LENGTHS:
        lengths = [min(length - length * i // 32, engine.max_context - 1) for i in range(GROUP_ROWS)]
        prompts = [torch.randint(vocab, (n,), generator=generator, device="cpu").tolist() for n in lengths]   # host ids
        seconds = best_seconds({"grouped": lambda: prefill(prompts), "alone": lambda: [prefill([p]) for p in prompts]},
                               reps=2)
        log.info("%d prompts of %d-%d tokens prefilled as one group in %.0f ms, alone in %.0f (%s, %s)", GROUP_ROWS,
                 min(lengths), max(lengths), 1e3 * seconds["grouped"], 1e3 * seconds["alone"], engine.dtype,
                 engine.kernel)
        if seconds["grouped"] <= GROUP_MAX_FRACTION * seconds["alone"]:
            cap = GroupCap(GROUPED_TOKENS, math.inf if length == MEASURED_LENGTHS[0] else max(lengths))
            break
    log.info("prefill groups: up to %d positions, prompts of up to %s tokens", cap.tokens, cap.longest)
    return cap

"""What one sequence does in one forward: the output of its schedule (dart.state), read by the
forward pass (dart.runtime), the FFN planner (dart.compact) and the accounting (dart.accounting)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ForwardPhase:
    """What one sequence does in one forward."""

    calibrate: bool = False          # its tokens join the neuron statistics
    form_in_forward: bool = False    # mask_step 0: each layer's mask forms from this forward's tokens
    masked: bool = False             # masks apply in this forward
    collect_signal: bool = False     # drift signal joins the epoch's baseline set
    form_baseline: bool = False      # drift baseline forms at the last layer's attention
    monitor: bool = False            # drift windows are watched
    accumulate: bool = False         # a masked prompt block: the activations it computes join the statistics


DENSE = ForwardPhase()
IDLE = ForwardPhase()                # a row with no token in this forward (past the end of its prompt)


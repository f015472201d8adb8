"""Whether a job's DART settings prune anything the job computes, checked before any work: a config
that says `method: dart` but computes every FFN neuron gets one warning naming the setting that would
prune."""
from __future__ import annotations

import logging

from ..config import JobConfig

log = logging.getLogger(__name__)


def forwards_after_prompt(config: JobConfig) -> int | None:
    """Forwards a row runs after its prompt's (None: several, or not known before the run). The first
    generated token, and a one-token continuation's score, come from the prompt's own forward."""
    if config.task == "label":
        return 0 if config.label.score == "label" else None     # one letter: one token
    return config.generation.max_new_tokens - 1


def unpruned_reason(config: JobConfig) -> str | None:
    """Why this config prunes no FFN neuron the job computes, and what would; None when it prunes."""
    dart = config.dart
    if not dart.prunes:
        return None
    if dart.keep_ratio >= 1.0 and dart.budget != "per_layer":
        return "dart.keep_ratio=1.0 keeps every FFN neuron; set dart.keep_ratio below 1 to prune"
    if dart.blockwise:
        return None                 # the prompt's blocks after the first run on the kept neurons
    after = forwards_after_prompt(config)
    what = ("each choice is scored as one token, from the prompt's forward" if config.task == "label"
            else "generation.max_new_tokens=1 comes from the prompt's forward")
    if after == 0:
        return (f"{what}, which dart.prefill.mode=dense runs on every neuron; set dart.prefill.mode=blockwise to "
                "prune the prompt (or dart.method=dense to run dense)")
    if dart.release_step == 0:
        return ("dart.release_step=0 runs every generated token dense and dart.prefill.mode=dense the prompt; "
                "set dart.release_step above 0 or dart.prefill.mode=blockwise to prune")
    return None


def warn_if_unpruned(config: JobConfig) -> None:
    """One warning when the config's method prunes but nothing the job computes is pruned."""
    reason = unpruned_reason(config)
    if reason is not None:
        log.warning("dart.method=%s prunes nothing this %s job computes: %s", config.dart.method, config.task,
                    reason)

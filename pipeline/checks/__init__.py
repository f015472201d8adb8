"""Checks of the model and the DART settings that run in the driver before any work, without a model
library: the model source (a local dir, an embedded model's wheels, a hub id offline or unknown to the
hub) and the token limits against its context; a warning when the settings prune nothing; the memory
an actor needs.

    model_check.py   check_model: the source exists, the token limits fit the model's context
    hub.py           check_hub_source: a hub id is cached (offline) or known to the hub (online)
    pruning.py       warn_if_unpruned: DART settings that prune nothing the job computes
    actor_memory.py  actor_bytes: the host memory one CPU actor needs (the pool is sized by it)
"""
from .actor_memory import actor_bytes
from .hub import check_hub_source
from .model_check import check_model
from .pruning import unpruned_reason, warn_if_unpruned

__all__ = ["actor_bytes", "check_hub_source", "check_model", "unpruned_reason", "warn_if_unpruned"]

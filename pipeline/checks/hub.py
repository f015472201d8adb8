"""A model.source that names a Hugging Face hub id, checked in the driver before any actor starts:
offline (HF_HUB_OFFLINE) it must be in the local cache; online the hub must know it. A hub that
cannot be asked leaves the question to the actors, which then stop the job with one line."""
from __future__ import annotations

import difflib
import logging
import os

from dart.model_config import EMBEDDED_MODEL, ModelConfig, source_kind

from ..failures import first_line

log = logging.getLogger(__name__)
ASK_TIMEOUT_S = 10


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def near_name(source: str) -> str:
    """'; did you mean ...?' when the embedded model's name is near `source`."""
    near = difflib.get_close_matches(source.lower(), [EMBEDDED_MODEL], n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r} (embedded: no download)?" if near else ""


def cached(model: ModelConfig) -> bool:
    """The hub model's config is in this machine's Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model.source, "config.json", revision=model.revision), str)


def check_hub_source(model: ModelConfig, local_actors: bool) -> None:
    """ValueError naming the fix when a hub id cannot be loaded; nothing for other sources.
    `local_actors`: the actors run on this machine (a private local Ray), so its cache is theirs."""
    if source_kind(model.source) != "hub":
        return
    what = (f"model.source {model.source!r} is not a local directory, a .gguf file or an embedded model, "
            "so it names a Hugging Face hub model")
    if offline():
        if not cached(model):
            raise ValueError(f"{what}, and none of that id is in the local cache (HF_HUB_OFFLINE is set: nothing "
                             f"is downloaded){near_name(model.source)}")
        return
    from huggingface_hub import model_info
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        model_info(model.source, revision=model.revision, timeout=ASK_TIMEOUT_S)
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise ValueError(f"{what}, and the hub has none of that id ({type(err).__name__}; a private model needs "
                         f"HF_TOKEN){near_name(model.source)}") from None
    except Exception as err:       # offline, a proxy, a gated model
        if local_actors and not cached(model):
            raise ValueError(f"{what}, which is not in the local cache, and the hub cannot be reached "
                             f"({type(err).__name__}: {first_line(err, 150)}){near_name(model.source)}") from None
        log.info("could not ask the hub about %s (%s: %s); the actors will try to load it", model.source,
                 type(err).__name__, first_line(err))

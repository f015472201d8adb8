"""SIGTERM (what schedulers and `ray job stop` send) stops the driver the way Ctrl-C does."""
from __future__ import annotations

import signal
import threading

# Whether this process received SIGTERM. A signal is a fact about the process, and the exception
# alone cannot carry it: a SIGTERM that lands while the driver blocks in ray.wait/ray.get comes
# back from Ray's native wait as a plain KeyboardInterrupt.
_sigterm_received = threading.Event()


class Terminated(KeyboardInterrupt):
    """Raised in the driver's main thread on SIGTERM: the pool's cleanup runs, finished items stay."""


def raise_terminated(signum, frame) -> None:
    _sigterm_received.set()
    raise Terminated()


def stop_on_sigterm() -> None:
    """Route SIGTERM to `Terminated`. Ray's core worker installs a native SIGTERM handler that dumps a
    stack and aborts the driver; this replaces it, so it must run after Ray has started."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)


def by_sigterm(err: KeyboardInterrupt) -> bool:
    """Whether a KeyboardInterrupt that stopped the driver came from SIGTERM (not Ctrl-C)."""
    return isinstance(err, Terminated) or _sigterm_received.is_set()

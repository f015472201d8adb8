"""SIGTERM (what schedulers and `ray job stop` send) stops the driver the way Ctrl-C does."""
from __future__ import annotations

import signal
import threading


class Terminated(KeyboardInterrupt):
    """Raised in the driver's main thread on SIGTERM: the pool's cleanup runs, finished items stay."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


def stop_on_sigterm() -> None:
    """Route SIGTERM to `Terminated`. Ray's core worker installs a native SIGTERM handler that dumps a
    stack and aborts the driver; this replaces it, so it must run after Ray has started."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)

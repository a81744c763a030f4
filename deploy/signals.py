"""SIGTERM handled like Ctrl-C: the running tool unwinds (staging folders removed, nothing half-installed) and
exits 143. Paddle installs C++ handlers for SIGTERM and friends at import time that print a "FatalError"
block and abort; ``reclaim_from_paddle`` puts ours back once Paddle is imported."""
from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Optional


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM: unwind as for Ctrl-C, then exit 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def _raise_terminated(signum: int, frame: Optional[FrameType]) -> None:
    raise Terminated(signum)


def install() -> None:
    """Turn SIGTERM into a Terminated exception in the main thread."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def reclaim_from_paddle() -> None:
    """After ``import paddle``: drop Paddle's C++ signal handlers and reinstall Python's (ours for SIGTERM,
    Python's own for SIGINT), so a signal unwinds through our cleanup instead of aborting the process."""
    paddle = sys.modules.get("paddle")
    if paddle is None or not hasattr(paddle, "disable_signal_handler"):
        return
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    paddle.disable_signal_handler()
    for sig, handler in handlers.items():
        if handler is not None:  # None: set from C, not by Python; leave it
            signal.signal(sig, handler)

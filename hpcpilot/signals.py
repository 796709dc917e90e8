"""The first signal a rank received, set from a signal handler and read by the rank's loop.

Its own module so a worker rank can install it without importing rank 0's controller.
"""

from __future__ import annotations

import signal
from typing import Any


class SignalFlag:
    """The first signal the pilot received (set from a signal handler, read by the loops)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        # Every distinct signal in arrival order: a TERM after the warning signal still cut the pilot short.
        self.received: list[int] = []

    def handler(self, signum: int, _frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        if signum not in self.received:
            self.received.append(signum)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGSEGV, signal.SIGXCPU, signal.SIGUSR1,
                    signal.SIGBUS, signal.SIGINT):
            signal.signal(sig, self.handler)

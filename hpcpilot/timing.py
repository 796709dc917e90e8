"""Phase timing of a job, reported to PanDA as pilotTiming, and PanDA's time format."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from hpcpilot.log import current_panda_id

log = logging.getLogger("hpcpilot.job")

# pilotTiming's field order, as the server parses it.
PILOT_TIMING_ORDER = ("getjob", "stagein", "payload", "stageout", "initialsetup", "setup")


def panda_time(epoch: float) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in UTC: the form the server stores (it drops epoch floats)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


@dataclass
class Timing:
    """Seconds spent in each phase of a job; phases may be entered more than once."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one phase and log its start and end at INFO: a worker rank's log then says what each job
        was doing when (the operator's first question after a failure), not only how it ended."""
        panda_id = current_panda_id()
        label = f"job {panda_id}: " if panda_id is not None else ""
        log.info("%s%s started", label, name)
        start = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
            log.info("%s%s ended after %.1f s", label, name, elapsed)

    def pilot_timing(self) -> str:
        """``getjob|stagein|payload|stageout|initialsetup|setup`` in whole seconds."""
        return "|".join(str(round(self.seconds.get(name, 0.0))) for name in PILOT_TIMING_ORDER)

"""The PanDA server's backchannel: commands that came with its answers, and the lost-heartbeat rule.

Commands (updateJob ``command``, updateEventRanges ``Command``) are kept only for jobs this pilot is
running, until rank 0 polls.  Once no job update has succeeded for ``panda.lost_heartbeat`` seconds, each
running job gets one ``Command(panda_id, "lostheartbeat")`` (the controller fails those with
EXCEEDEDMAXWAITTIME 1317, as pilot3 does after 3 h).  Times are on the monotonic clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from hpcpilot.sources import Command

logger = logging.getLogger(__name__)

LOST_HEARTBEAT = "lostheartbeat"


class Backchannel:
    """Running jobs, the commands received for them, and when the server last took a job update."""

    def __init__(self, lost_heartbeat: float) -> None:
        self.lost_heartbeat = lost_heartbeat
        self._lock = threading.Lock()  # senders write, rank 0's thread polls
        self._commands: list[Command] = []
        self._running: dict[int, float] = {}  # PandaID -> monotonic time leased
        self._lost_reported: set[int] = set()
        self._last_success: float | None = None

    def started(self, panda_id: int) -> None:
        """A job was leased: commands for it are taken from now on."""
        with self._lock:
            self._running[panda_id] = time.monotonic()

    def ended(self, panda_id: int) -> None:
        """A job's final update was queued: later commands for it are ignored."""
        with self._lock:
            self._running.pop(panda_id, None)

    def job_update_taken(self) -> None:
        """The server acknowledged a job update: the heartbeat is alive."""
        with self._lock:
            self._last_success = time.monotonic()

    def heard(self, commands: Mapping[int, list[str]]) -> None:
        """Commands from an answer, per PandaID: kept for running jobs, logged and dropped for others."""
        with self._lock:
            for panda_id, names in commands.items():
                for name in names:
                    if panda_id in self._running:
                        logger.info("job %s: server command %s", panda_id, name)
                        self._commands.append(Command(panda_id, name))
                    else:
                        logger.info("job %s: server command %s ignored (job not running here)",
                                    panda_id, name)

    def poll(self) -> list[Command]:
        """Commands received since the last poll, plus 'lostheartbeat' once per running job when no job
        update succeeded for ``lost_heartbeat`` seconds."""
        mono = time.monotonic()
        with self._lock:
            out, self._commands = self._commands, []
            for panda_id, leased_at in self._running.items():
                baseline = max(leased_at, self._last_success or leased_at)
                if mono - baseline >= self.lost_heartbeat and panda_id not in self._lost_reported:
                    self._lost_reported.add(panda_id)
                    logger.error("job %s: no successful server update for %.0f s (lost heartbeat)", panda_id,
                                 mono - baseline)
                    out.append(Command(panda_id, LOST_HEARTBEAT))
        return out

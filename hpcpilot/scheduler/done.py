"""``DoneRecords``: the final records of the jobs rank 0 has ended, in the order they ended."""

from __future__ import annotations

from hpcpilot.records import JobRecord
from hpcpilot.states import JobState


class DoneRecords(list[JobRecord]):
    """A list of final records that counts its failed ones as it goes: the status line asks every few
    seconds, and a pilot of 100,000 jobs must not recount them each time."""

    def __init__(self) -> None:
        super().__init__()
        self._failed = 0
        self._seen = 0

    def failed(self) -> int:
        """Failed records, looking only at those added since the last call (each record is looked at once)."""
        for record in self[self._seen:]:
            self._failed += record.state == JobState.FAILED
        self._seen = len(self)
        return self._failed

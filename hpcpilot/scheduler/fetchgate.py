"""``FetchGate``: when rank 0 asks its job source for jobs, how many, and when it stops asking.

The gate counts the requests under way (each one's ``n``), the jobs leased, and failed requests in a
row.  An outage counts once per request sent into it, not once per request already under way when it
began; while the source fails, one request at a time probes it.  It gives up for good (``gave_up``
says why) after ``getjob_failures`` failed requests in a row with nothing running, on a failure that
will not heal, or when the credentials would end before another job could.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hpcpilot.credentials import CredentialGuard
from hpcpilot.scheduler.actions import Fetch
from hpcpilot.scheduler.events import JobsFetched
from hpcpilot.scheduler.policy import SchedulerPolicy


@dataclass
class FetchGate:
    policy: SchedulerPolicy
    in_flight: list[int] = field(default_factory=list)
    """The ``n`` of each Fetch under way (at most ``policy.fetches_in_flight``)."""
    leased: int = 0
    failures: int = 0
    outage_open: int = 0
    """Requests that were under way when the last counted failure came: their failures are the same
    outage and do not count again towards ``getjob_failures``."""
    retry_at: float = 0.0
    source_empty: bool = False
    gave_up: str = ""
    """Why the pilot stopped asking its job source for work ('' = it did not give up)."""
    credentials: CredentialGuard | None = None
    """The proxy and token lifetimes rank 0 leases by (hpcpilot.credentials); None = no credentials to watch."""
    groups: set[str | None] = field(default_factory=set)
    """The ranks' architectures (one group per set of GPUs; {None} where jobs are not matched to GPUs)."""
    exhausted: set[str | None] = field(default_factory=set)
    """Architectures the source had no job for: not asked again; the source is empty when every group is."""
    asked_for: Counter[str | None] = field(default_factory=Counter)
    """Jobs asked for and not yet answered, per architecture."""

    def answered(self, event: JobsFetched, now: float, busy: bool) -> None:
        """Take in the source's answer; ``busy``: something runs or waits, so failures do not end leasing."""
        self.asked_for[event.architecture] -= self._take_off(event.asked)
        self.leased += len(event.jobs) + len(event.rejected)
        if event.unavailable:
            self.retry_at = now + self.policy.fetch_retry
            if event.reason:
                self._count_failure()
                if not busy:
                    self._maybe_give_up(event)
        else:
            self.failures, self.outage_open = 0, 0
            if not event.jobs and not event.rejected:
                self.exhausted.add(event.architecture)
                self.source_empty = self.groups <= self.exhausted

    def _take_off(self, asked: int | None) -> int:
        """Take the answered request off those under way (the oldest when the answer does not say its size);
        the number of jobs it had asked for (0: none was under way)."""
        if asked is not None and asked in self.in_flight:
            self.in_flight.remove(asked)  # a handful at most: O(fetches_in_flight)
            return asked
        if self.in_flight:
            return self.in_flight.pop(0)
        return 0

    def _count_failure(self) -> None:
        """One outage counts once per request sent into it, not once per request that was already under way."""
        if self.outage_open > 0:
            self.outage_open -= 1
            return
        self.failures += 1
        self.outage_open = len(self.in_flight)

    def _maybe_give_up(self, event: JobsFetched) -> None:
        """With nothing running, ``getjob_failures`` failed requests in a row (or one that will not heal)
        end the leasing, so an allocation does not idle to its walltime asking a dead server."""
        if event.hopeless or self.failures >= self.policy.getjob_failures:
            self.source_empty = True
            self.gave_up = (f"gave up on the job source after {self.failures} failed request(s) in a row "
                            f"with nothing running: {event.reason or 'no answer'}")

    def may_lease(self, winding_down: bool) -> bool:
        """More jobs may be leased (``winding_down``: the pilot stops or the walltime guard was reached)."""
        if winding_down or self.source_empty or self._credentials_end():
            return False
        return self.policy.max_jobs is None or self.leased < self.policy.max_jobs

    def _credentials_end(self) -> bool:
        """True (for good, saying why in ``gave_up``) once the credentials would end before another job could."""
        verdict = self.credentials.verdict(leased_before=self.leased > 0) if self.credentials else None
        if verdict is not None:
            self.source_empty, self.credentials = True, None
            self.gave_up = self.gave_up or f"credentials: {verdict.text()}"
        return verdict is not None

    def requests(self, wanted: int, now: float, architecture: str | None = None) -> list[Fetch]:
        """Fetches for ``wanted`` ranks of ``architecture`` that no queued job covers (less what requests under
        way for them cover), each up to ``jobs_per_fetch`` and up to ``fetches_in_flight`` at once (all
        architectures together); while the source is failing, one at a time, so an outage is probed by one
        request rather than met with a burst."""
        if now < self.retry_at or architecture in self.exhausted:
            return []
        room = 1 if self.failures else self.policy.fetches_in_flight
        wanted -= max(self.asked_for[architecture], 0)
        actions: list[Fetch] = []
        while wanted > 0 and len(self.in_flight) < room:
            n = min(wanted, self.policy.jobs_per_fetch)
            if self.policy.max_jobs is not None:
                n = min(n, self.policy.max_jobs - self.leased - sum(self.in_flight))
            if n <= 0:
                break
            self.in_flight.append(n)
            self.asked_for[architecture] += n
            wanted -= n
            actions.append(Fetch(n, architecture))
        return actions

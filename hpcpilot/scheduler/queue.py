"""The jobs rank 0 holds but has not started: leased from the source, waiting for an idle rank.

Each job remembers the architecture it was fetched for (a rank group's ``target_architecture``; None where the
pilot's ranks are all alike), because PanDA matched it to that group's GPUs: under ranks of several architectures
a job may only go to a rank of its own.  The count per architecture is kept as jobs come and go, so the scheduler
asks "is anything queued for this group?" at O(1) a pass instead of walking the queue.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator

from hpcpilot.records import JobSpec


class JobQueue:
    """Leased jobs, oldest first, with the architecture each was fetched for."""

    def __init__(self) -> None:
        self._jobs: deque[JobSpec] = deque()
        self._architecture: dict[int, str | None] = {}  # PandaID -> the architecture it was fetched for
        self._count: Counter[str | None] = Counter()

    def __len__(self) -> int:
        return len(self._jobs)

    def __bool__(self) -> bool:
        return bool(self._jobs)

    def __iter__(self) -> Iterator[JobSpec]:
        return iter(self._jobs)

    def extend(self, jobs: Iterable[JobSpec], architecture: str | None) -> None:
        for job in jobs:
            self._jobs.append(job)
            self._architecture[job.panda_id] = architecture
            self._count[architecture] += 1

    def popleft(self) -> JobSpec:
        return self._left(self._jobs.popleft())

    def queued_for(self, architecture: str | None) -> int:
        return self._count[architecture]

    def architectures(self) -> list[str | None]:
        """The architectures that have a job queued."""
        return [architecture for architecture, count in self._count.items() if count > 0]

    def take_where(self, take: Callable[[JobSpec, str | None], bool]) -> list[tuple[JobSpec, str | None]]:
        """One walk of the queue, oldest first: each job that ``take`` (given the job and its architecture) takes
        leaves it, with that architecture; the others keep their places.  The caller hands each out or reports it."""
        taken: list[tuple[JobSpec, str | None]] = []
        left: deque[JobSpec] = deque()
        for job in self._jobs:
            architecture = self._architecture.get(job.panda_id)
            if take(job, architecture):
                taken.append((self._left(job), architecture))
            else:
                left.append(job)
        self._jobs = left
        return taken

    def _left(self, job: JobSpec) -> JobSpec:
        if job.panda_id in self._architecture:
            self._count[self._architecture.pop(job.panda_id)] -= 1
        return job

"""``EsJobs``: rank 0's decisions about its event-service jobs, one ``EsBook`` (range ledger) per job.

The books own the ranges; this room decides, per loop pass and per event, what the books' state
means for the pilot: when to lease more ranges, deal them, bundle and report outputs, heartbeat and
close a job, and how a server command or a rank's memory report stops a job's part on a rank.  Which
rank works on what stays with the scheduler's ``RankRegistry``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from hpcpilot.config import SiteConfig
from hpcpilot.errors import ErrorCode
from hpcpilot.eventservice.book import EsBook
from hpcpilot.monitor.metrics import check_report, limits_for_job
from hpcpilot.records import JobRecord, JobSpec
from hpcpilot.scheduler.actions import Action, CloseEsJob, FetchRanges, Kill, Report, SetDebugMode, StopRank
from hpcpilot.scheduler.events import BundleStaged, EsJobClosed, RangesFetched, RangesReported, ReportReceived
from hpcpilot.scheduler.policy import KILL_COMMANDS, SchedulerPolicy

NO_RANK_LEFT = "no rank of the job is left to process it"


class EsJobs:
    """The event-service jobs rank 0 runs, by PandaID, oldest first."""

    def __init__(self, config: SiteConfig, policy: SchedulerPolicy) -> None:
        self.config, self.policy = config, policy
        self.books: dict[int, EsBook] = {}

    def __contains__(self, panda_id: object) -> bool:
        return panda_id in self.books

    def __len__(self) -> int:
        return len(self.books)

    def __iter__(self) -> Iterator[EsBook]:
        return iter(self.books.values())

    def get(self, panda_id: int | None) -> EsBook | None:
        return self.books.get(panda_id) if panda_id is not None else None

    def start(self, job: JobSpec, leader: int, now: float) -> EsBook:
        """A new event-service job: its first rank (the leader) stages its inputs in."""
        limits = limits_for_job(job.min_ram_count, job.core_count, job.looping_check, self.config.monitor,
                                self.config.gpu.memory_limit_mb)
        book = EsBook(job, self.config.eventservice, leader=leader, limits=limits, last_heartbeat=now)
        self.books[job.panda_id] = book
        return book

    def wanting_ranks(self) -> EsBook | None:
        """The oldest event-service job that can use another rank."""
        return next((book for book in self.books.values() if book.wants_ranks()), None)

    def staging(self) -> bool:
        """A job's first rank is staging its inputs in: its other ranks wait for it to open."""
        return bool(self.books) and any(not book.is_open and not book.leasing_stopped for book in self.books.values())

    def member_lost(self, book: EsBook, rank: int, code: int, diag: str, idle_ranks: bool) -> None:
        """A member rank was lost; with no member and no idle rank to join, its queued ranges fail now."""
        book.member_gone(rank, code, diag)
        self.drop_if_orphaned(book, idle_ranks)

    @staticmethod
    def drop_if_orphaned(book: EsBook, idle_ranks: bool) -> None:
        if not book.members and not idle_ranks:  # idle ranks would join it in this pass
            book.drop_queue(int(ErrorCode.EXCEEDEDMAXWAITTIME), NO_RANK_LEFT)

    def check_report(self, event: ReportReceived, now: float) -> list[Action]:
        """Memory and looping are per rank in an ES job: only the offending rank's part is killed."""
        book = self.books[event.report.panda_id]
        if event.rank not in book.members or event.rank in book.killing:
            return []
        verdict = check_report(event.report, book.limits, book.opened_at or now)
        if verdict is None:
            return []
        book.killing.add(event.rank)
        return [Kill(event.rank, book.panda_id, int(verdict.code), verdict.diag)]

    def command(self, panda_id: int, name: str) -> list[Action]:
        """tobekilled stops the job on every rank now; softkill lets the ranges in hand finish."""
        book = self.books[panda_id]
        if name in KILL_COMMANDS:
            code, diag = KILL_COMMANDS[name]
            actions: list[Action] = list(book.stop_leasing(int(code), diag, job_failure=True))
            return actions + self._stop_members(book, lambda rank: Kill(rank, book.panda_id, int(code), diag))
        if name == "softkill":
            return list(book.stop_leasing(int(ErrorCode.ESRECOVERABLE), "soft kill by the PanDA server",
                                          job_failure=False))
        if name in ("debug", "debugoff"):
            return [SetDebugMode(rank, book.panda_id, name == "debug") for rank in sorted(book.members)]
        return []

    def stop_all(self, code: int, diag: str) -> list[Action]:
        """The pilot stops: no more ranges, every member rank told to stop."""
        actions: list[Action] = []
        for book in self.books.values():
            actions += book.stop_leasing(code, diag, job_failure=True)
            actions += self._stop_members(book, lambda rank: StopRank(rank, code, diag))
        return actions

    @staticmethod
    def _stop_members(book: EsBook, stop: Callable[[int], Action]) -> list[Action]:
        """Stop each member rank not already being stopped, once."""
        actions: list[Action] = []
        for rank in sorted(book.members - book.killing):
            book.killing.add(rank)
            actions.append(stop(rank))
        return actions

    # -- the ledger's events ---------------------------------------------------------

    def on_fetched(self, event: RangesFetched, now: float, idle_ranks: bool) -> list[Action]:
        book = self.books.get(event.panda_id)
        if book is None:
            return []
        book.on_fetched(now, event, self.policy.fetch_retry)
        self.drop_if_orphaned(book, idle_ranks)  # its ranks were lost while the fetch was under way
        return list(book.serve_waiting(self.policy.guard_at, now))

    def on_reported(self, event: RangesReported, now: float) -> list[Action]:
        book = self.books.get(event.panda_id)
        return list(book.on_report(now, event, self.policy.guard_at)) if book is not None else []

    def on_bundle_staged(self, event: BundleStaged) -> list[Action]:
        book = self.books.get(event.panda_id)
        report = book.on_bundle(event) if book is not None else None
        return [report] if report is not None else []

    def closed(self, event: EsJobClosed) -> JobRecord | None:
        """The job's final record, now its ranges are all reported (None for a job already closed)."""
        book = self.books.pop(event.record.panda_id, None)
        if book is None:
            return None
        event.record.rank = book.leader
        return event.record

    def tick(self, now: float) -> list[Action]:
        """Per pass: lease ranges ahead of demand, deal to waiting ranks, bundle, report, beat, close."""
        if not self.books:
            return []
        guard_at, heartbeat = self.policy.guard_at, self.policy.heartbeat
        actions: list[Action] = []
        for book in list(self.books.values()):
            n = book.fetch_wanted(now, guard_at)
            if n:
                book.fetching = True
                actions.append(FetchRanges(book.spec, n))
            actions += book.serve_waiting(guard_at, now)
            actions += [due for due in (book.due_bundle(now), book.due_report(now)) if due is not None]
            if now - book.last_heartbeat >= heartbeat and not book.closing:
                book.last_heartbeat = now
                actions.append(Report(book.progress_record(), final=False))
            if book.is_done():
                book.closing = True
                actions.append(CloseEsJob(book.spec, book.final_record()))
        return actions

"""A rank MPI reports dead (``mpirun --with-ft ulfm``) is lost at once, the way a silent rank is lost later."""

from __future__ import annotations

from hpcpilot.records import JobRecord
from hpcpilot.scheduler import Assign, JobEnded, JobsFetched, RankDied, RankStopped, StopRank, WorkRequested
from hpcpilot.states import JobState
from hpcpilot.transport import QueueHub, fault_tolerant_launch
from tests.unit.test_liveness import LOST, final_codes, job, of, scheduler


def test_a_busy_rank_reported_dead_is_lost_with_its_job_at_once_and_the_other_goes_on() -> None:
    s = scheduler(2)
    s.handle(1.0, [JobsFetched((job(1), job(2), job(3)))])
    diag = "rank 1 on node7 died: MPI reports its process failed"
    actions = s.handle(1.5, [RankDied(1, diag)])  # long before the 10 s liveness limit
    assert final_codes(actions) == [(1, LOST)]
    assert s.done[-1].pilot_error_diag == diag
    assert of(actions, StopRank) == [StopRank(1, LOST, diag)]
    actions = s.handle(2.0, [JobEnded(2, JobRecord(2, JobState.FINISHED)), WorkRequested(2)])
    assert [(a.rank, a.job.panda_id) for a in of(actions, Assign)] == [(2, 3)]  # never to the dead rank
    actions = s.handle(3.0, [RankDied(1, diag)])  # reported again: lost once
    assert not final_codes(actions) and not of(actions, StopRank)


def test_a_rank_that_left_after_its_work_is_not_lost_when_mpi_reports_it_gone() -> None:
    s = scheduler(2)
    s.handle(1.0, [JobsFetched(())])  # nothing to do: both ranks are told to leave
    actions = s.handle(2.0, [RankStopped(1), RankDied(1, "rank 1 on n died")])
    assert not of(actions, StopRank) and not final_codes(actions)


def test_fault_tolerance_is_the_launchers_choice_and_in_process_ranks_never_die_alone() -> None:
    assert fault_tolerant_launch({"OMPI_MCA_mpi_ft_enable": "1"})
    assert not fault_tolerant_launch({"OMPI_MCA_mpi_ft_enable": "0"}) and not fault_tolerant_launch({})
    assert QueueHub(2).transport(0).lost() == []

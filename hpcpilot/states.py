"""Job, event-range and rank states, with the PanDA strings they travel as."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """A job's state as PanDA's updateJob knows it."""

    STARTING = "starting"
    """Leased and being set up (stage-in); the first update the server gets."""
    RUNNING = "running"
    """Payload running; every heartbeat says this."""
    FINISHED = "finished"
    """Payload succeeded and outputs are staged out."""
    FAILED = "failed"
    """Ended with a pilot or payload error code."""
    HOLDING = "holding"
    """Final state the server keeps until its Adder has run (never sent by hpcpilot)."""


class EventRangeStatus(StrEnum):
    """An event range's status as PanDA's updateEventRanges knows it."""

    RUNNING = "running"
    """Handed to a payload (never stored by the server)."""
    FINISHED = "finished"
    """Processed and its output staged out."""
    FAILED = "failed"
    """Failed; the server may hand it out again."""
    FATAL = "fatal"
    """Failed and must not be retried."""


class RankState(StrEnum):
    """What rank 0 believes a rank is doing."""

    STARTING = "starting"
    """Not yet asked for work."""
    IDLE = "idle"
    """Asked for work and holds none."""
    BUSY = "busy"
    """Runs a job."""
    STOPPING = "stopping"
    """Told there is no more work, or told to stop; its acknowledgement is awaited."""
    STOPPED = "stopped"
    """Acknowledged the stop (or failed its start-up check): it will send nothing more."""
    LOST = "lost"
    """Stopped reporting; its job was failed."""


TERMINAL_JOB_STATES = frozenset({JobState.FINISHED, JobState.FAILED})
TERMINAL_RANGE_STATES = frozenset({EventRangeStatus.FINISHED, EventRangeStatus.FAILED, EventRangeStatus.FATAL})

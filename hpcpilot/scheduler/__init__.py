"""Rank 0's decisions, as a pure state machine: ``Scheduler.handle(now, events) -> actions``.

The rooms: ``events`` and ``actions`` (what goes in and out), ``core`` (the ``Scheduler`` and its table
of handlers), ``ranks`` (``RankRegistry``), ``due`` (``DueQueue``), ``jobs`` (a running job and its
timers), ``fetchgate`` (``FetchGate``: asking the job source), ``esjobs`` (event-service jobs),
``policy`` (the numbers it decides with), ``done`` (the ended jobs' records).
"""

from hpcpilot.scheduler.actions import *  # noqa: F403 -- one import names every action
from hpcpilot.scheduler.actions import __all__ as _actions
from hpcpilot.scheduler.core import HANDLERS, Scheduler
from hpcpilot.scheduler.events import *  # noqa: F403 -- one import names every event
from hpcpilot.scheduler.events import __all__ as _events
from hpcpilot.scheduler.policy import KILL_COMMANDS, SchedulerPolicy

__all__ = [*_actions, *_events, "HANDLERS", "KILL_COMMANDS", "Scheduler", "SchedulerPolicy"]

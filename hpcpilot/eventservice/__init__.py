"""The event service: one PanDA job's event ranges processed by many ranks at once.

* ``book``: rank 0's pure ledger of one event-service job (which range is where; what is owed
  to the server), driven by the scheduler.
* ``bundle``: rank 0's aggregated stage-out (zip of event outputs, checksummed and copied).
* ``link``: the worker's mailbox between its message loop and the job thread.
* ``channel``: the AthenaMP message protocol a long-running payload speaks.
* ``executors``: how a worker rank processes ranges (per-range command, protocol payload, no-op).
* ``eslife``: the life of an event-service job on one worker rank.
"""

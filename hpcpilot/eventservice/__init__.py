"""The event service: one PanDA job's event ranges processed by many ranks at once.

* ``book``: rank 0's pure ledger of one event-service job (which range is where; what is owed
  to the server), driven by the scheduler; it coordinates its parts:
  ``messages`` (what goes between it and the scheduler), ``holdings`` (what each rank holds),
  ``waiting`` (ranks waiting for ranges), ``register`` and ``reported`` (ranges taken in, settled),
  ``outbox`` (statuses waiting for a bundle or a report), ``tally`` (the running totals),
  ``pacing`` (how many ranges to lease and to deal), ``esrecord`` (the job's records).
* ``bundle``: rank 0's aggregated stage-out (zip of event outputs, checksummed and copied).
* ``link``: the worker's mailbox between its message loop and the job thread.
* ``channel``: the AthenaMP message protocol a long-running payload speaks.
* ``executors``: how a worker rank processes ranges (per-range command, protocol payload, no-op).
* ``eslife``: the life of an event-service job on one worker rank.
"""

"""Who this pilot is to the batch system and to PanDA: the fields that link a PanDA job to its batch job.

pilot3 sends them with every updateJob (panda-wire B.5): ``batchID`` (the batch job id), ``pilotID``
(``<GTAG>|<batch type>|<version tag>|<pilot version>``, the batch part only if known) and ``schedulerID``.
Without them an operator cannot go from a failed PanDA job to the Slurm job (and its output file) that ran it.
"""

from __future__ import annotations

from collections.abc import Mapping

# (environment variable, batch system) in the order they are looked at; the first one set names the batch job.
BATCH_JOB_VARIABLES = (("SLURM_JOB_ID", "SLURM"), ("SLURM_JOBID", "SLURM"), ("PBS_JOBID", "PBS"),
                       ("LSB_JOBID", "LSF"))
VERSION_TAG = "PR"  # pilot3's default --version-tag (production)


def batch_job(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(batch system, job id) of the batch job this process runs in, or None outside one."""
    for variable, system in BATCH_JOB_VARIABLES:
        value = environ.get(variable, "").strip()
        if value:
            return system, value
    return None


def scheduler_id(environ: Mapping[str, str]) -> str:
    """The scheduler that submitted the pilot: ``PANDA_JSID`` as pilot3 reads it, else Harvester's id; '' if
    neither is known."""
    return (environ.get("PANDA_JSID") or environ.get("HARVESTER_ID") or "").strip()


def pilot_identity(environ: Mapping[str, str], version: str) -> dict[str, str]:
    """The updateJob fields naming this pilot: pilotID always, batchID and schedulerID when known."""
    gtag = environ.get("GTAG", "").strip() or "unknown"
    job = batch_job(environ)
    parts = [gtag, *([job[0]] if job else []), VERSION_TAG, version]
    fields = {"pilotID": "|".join(parts)}
    if job:
        fields["batchID"] = job[1]
    scheduler = scheduler_id(environ)
    if scheduler:
        fields["schedulerID"] = scheduler
    return fields

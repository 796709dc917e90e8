"""The inputs Harvester placed for a job: ``PoolFileCatalog_H.xml`` and ``inFilePaths``.

With its own stager, Harvester brings a job's inputs, links them into the access point, writes
a POOL file catalog (``<File ID="guid"><physical><pfn name="path"/></physical><logical><lfn
name="lfn"/></logical></File>``) and puts ``inFilePaths`` (a comma list aligned with ``inFiles``)
into the job.  Rank 0 turns whichever of them is there into one absolute ``inFilePaths`` for the
job, so the rank that runs it needs nothing from the access point: an input's path comes from
``inFilePaths`` if given, else from the catalog, else the file of that name in the job's
directory of the access point (Harvester's link).  An input with none of them gets an empty
entry, and its stage-in fails naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hpcpilot.catalogs import read_pool_catalog
from hpcpilot.records import is_null
from hpcpilot.stageio.staging import IN_FILE_PATHS

log = logging.getLogger(__name__)


def read_catalog(path: Path) -> dict[str, str]:
    """``{lfn: pfn}`` from Harvester's POOL catalog; {} (logged) when it is missing or unusable."""
    try:
        entries = read_pool_catalog(path)
    except ValueError as exc:
        log.error("%s: not a usable POOL file catalog (%s); its inputs are not used", path, exc)
        return {}
    return {entry.lfn: _local_path(entry.pfn) for entry in entries if entry.lfn and entry.pfn}


def _local_path(pfn: str) -> str:
    """A catalog PFN as a path: ``file://`` and ``file:`` prefixes dropped."""
    for prefix in ("file://", "file:"):
        if pfn.startswith(prefix):
            return pfn[len(prefix):]
    return pfn


def _split(value: Any) -> list[str]:
    return [] if is_null(value) else [item.strip() for item in str(value).split(",")]


def place_inputs(job: dict[str, Any], job_dir: Path, catalogs: Iterable[Path]) -> None:
    """Set the job's ``inFilePaths`` to the absolute path of each input Harvester placed ('' if none)."""
    lfns = [lfn for lfn in _split(job.get("inFiles")) if lfn]
    if not lfns:
        return
    given = _split(job.get(IN_FILE_PATHS))
    catalog: dict[str, str] = {}
    for path in catalogs:  # the first catalog naming an LFN wins
        for lfn, pfn in read_catalog(path).items():
            catalog.setdefault(lfn, pfn)
    paths = []
    for index, lfn in enumerate(lfns):
        path = given[index] if index < len(given) and given[index] else catalog.get(lfn, "")
        if not path and (job_dir / lfn).exists():
            path = lfn
        paths.append(str(job_dir / path) if path else "")  # an absolute path stays as it is
    job[IN_FILE_PATHS] = ",".join(paths)

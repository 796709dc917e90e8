"""A Harvester access point as the job source: jobs in from files, reports out to files.

File names and shapes are those of Harvester's shared-file messenger, named per queue by the
site config's ``[harvester]`` keys.  ``layout``: where each file is for each of Harvester's
mappings and reading the job definitions; ``files``: writing and taking files without ever
handing Harvester half a file or an entry twice; ``jsonstream`` and ``feed``: range feeds read one
range at a time as they are leased, never whole; ``catalog``: the inputs Harvester placed;
``reports``: a job's reports in the shapes Harvester reads; ``source``: the JobSource, with late binding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpcpilot.harvester.source import HarvesterSource

__all__ = ["HarvesterSource"]


def __getattr__(name: str) -> Any:
    """``HarvesterSource`` imported on first use (PEP 562).

    Start-up: every rank imports ``hpcpilot.harvester.layout`` to check the access point before MPI
    starts, and a package's ``__init__`` runs before any of its modules.  A worker rank never uses the
    source (rank 0's), and importing it here pulled in the catalog, staging and copy tools, the PanDA
    auth and the sources modules on every worker rank.  ``source`` does not import this package's
    ``__init__`` names, so this hides no import cycle.
    """
    if name == "HarvesterSource":
        from hpcpilot.harvester.source import HarvesterSource

        return HarvesterSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

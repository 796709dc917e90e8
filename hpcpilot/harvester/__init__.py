"""A Harvester access point as the job source: jobs in from files, reports out to files.

File names and shapes are those of Harvester's shared-file messenger, named per queue by the
site config's ``[harvester]`` keys.  ``layout``: where each file is for each of Harvester's
mappings and reading the job definitions; ``files``: writing and taking files without ever
handing Harvester half a file or an entry twice; ``jsonstream`` and ``feed``: range feeds read one
range at a time as they are leased, never whole; ``catalog``: the inputs Harvester placed;
``reports``: a job's reports in the shapes Harvester reads; ``source``: the JobSource, with late binding.
"""

from hpcpilot.harvester.source import HarvesterSource

__all__ = ["HarvesterSource"]

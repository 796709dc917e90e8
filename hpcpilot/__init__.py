"""hpcpilot: an MPI pilot that runs PanDA jobs and event ranges inside HPC allocations.

Importing the package never imports mpi4py: only ``hpcpilot.transport`` does, and only when
the pilot runs under an MPI launcher.
"""

__version__ = "0.1.0"

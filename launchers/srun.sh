#!/bin/sh
# Start the pilot as an srun step: launchers/srun.sh --site-config FILE --harvester-dir DIR --workdir W
# Inside an allocation srun uses its task count; HPCPILOT_MPI picks srun's MPI plugin (pmi2 for the pip
# MPICH wheel, pmix for Open MPI, cray_shasta for Cray MPICH).  HPCPILOT_PYTHON: the venv's python.
# Logic lives in hpcpilot/launchers.py (SrunLauncher); this shim only execs.
exec srun --mpi="${HPCPILOT_MPI:-pmi2}" "${HPCPILOT_PYTHON:-python3}" -m hpcpilot run "$@"

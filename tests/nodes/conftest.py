"""The nodes tier: tests across several "nodes" on one machine (tests/nodes/netns.py), root only.

Skipped, with the reason shown by ``pytest -ra``, only where nodes cannot be made: not root, iproute2 or
util-linux missing, or no network namespace can be created.  Anywhere else nodes that cannot be made, or
cleanup that leaves something behind, are failures.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import replace

import pytest

from hpcpilot_serve.server import PandaTestServer
from tests.mpi.conftest import openmpi_venv  # the MPI tier's fixture, shared
from tests.nodes import netns
from tests.pilotrun import MPICH, Mpi, open_mpi

NODES = 3
RANKS_PER_NODE = 2
__all__ = ["openmpi_venv"]


@functools.cache
def _skip_reason() -> str | None:
    return netns.probe()


@pytest.fixture
def nodes_possible() -> None:
    """Skip the test, with the reason, where nodes cannot be made here."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def cluster(nodes_possible: None) -> Iterator[netns.Cluster]:
    """Three nodes for one test, removed after it (also when it fails)."""
    with netns.make_nodes(NODES) as made:
        yield made


@pytest.fixture(params=["mpich", "openmpi"])
def node_mpi(request: pytest.FixtureRequest, cluster: netns.Cluster) -> Mpi:
    """The MPI tier's two MPIs, launching across the cluster's nodes (``RANKS_PER_NODE`` ranks on each)."""
    base = MPICH if request.param == "mpich" else open_mpi(request.getfixturevalue("openmpi_venv"))
    nodes = cluster.mpich_args(RANKS_PER_NODE) if base.name == "mpich" else cluster.openmpi_args(RANKS_PER_NODE)
    return replace(base, launcher=(*base.launcher, *nodes))


@pytest.fixture
def panda_server(cluster: netns.Cluster) -> Iterator[PandaTestServer]:
    """The PanDA test double on the bridge's address (127.0.0.1 inside a node is the node's own loopback)."""
    server = PandaTestServer(cluster.shared / "state.sqlite", host=cluster.bridge_address).start()
    try:
        yield server
    finally:
        server.close()

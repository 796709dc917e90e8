"""The nodes tier: tests across several "nodes" on one machine (tests/nodes/netns.py), root only.

Skipped, with the reason shown by ``pytest -ra``, only where nodes cannot be made: not root, iproute2 or
util-linux missing, or no network namespace can be created.  Anywhere else nodes that cannot be made, or
cleanup that leaves something behind, are failures.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest

from tests.nodes import netns

NODES = 3


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

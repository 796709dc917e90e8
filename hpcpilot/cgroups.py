"""Payload cgroups (v1 memory, v2, or none). Placeholder: being written."""

from __future__ import annotations

from typing import NamedTuple


class CgroupMemory(NamedTuple):
    """Memory of a payload cgroup in kB; version 1 or 2."""

    version: int
    current_kb: int
    peak_kb: int
    swap_kb: int

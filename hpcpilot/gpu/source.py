"""What every inventory source shares: its two ways to fail, running a vendor tool, PCI addresses.

A source that cannot answer (library not loadable, driver not talking, tool exits non-zero) raises
``Unavailable`` and the inventory tries the next one; a source that answers with something it cannot read
(garbage output, an unreadable sysfs file) raises ``BadData``: the inventory says so in one line and counts the
node as a CPU node rather than bind ranks to GPUs it does not understand.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

TOOL_TIMEOUT = 60.0
"""Seconds a vendor tool may take (nvidia-smi without persistence mode initialises every GPU: seconds)."""


class Unavailable(Exception):
    """This source has nothing to say on this node: try the next one."""


class BadData(Exception):
    """This source answered with something unreadable: one line, and the node counts as a CPU node."""


def run_tool(argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """The tool's standard output; Unavailable when it cannot run, fails or hangs.  ``subprocess`` is imported
    here: a worker rank does not import it before its first job, and a CPU node never runs a tool."""
    import subprocess

    try:
        done = subprocess.run(list(argv), env=dict(environ), stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=TOOL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip() or done.stdout.decode(errors="replace").strip()
        raise Unavailable(f"{' '.join(argv)} exited {done.returncode}: {said.splitlines()[0] if said else ''}")
    return done.stdout.decode(errors="replace")


_BUS = re.compile(r"^(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$")


def pci_address(text: str) -> str:
    """``dddd:bb:dd.f``, lower case, from any of the vendor spellings ("00000000:07:00.0", "0000:C1:00.0",
    "07:00.0"); BadData for anything else."""
    match = _BUS.match(text.strip())
    if match is None:
        raise BadData(f"{text.strip()[:60]!r} is not a PCI address")
    domain, bus, device, function = match.groups()
    return f"{int(domain or '0', 16) & 0xFFFF:04x}:{int(bus, 16):02x}:{int(device, 16):02x}.{function}"

"""A rank's guard: a small process that kills the rank's payloads when the rank dies.

PR_SET_PDEATHSIG (``hpcpilot.payload``) makes the kernel kill a payload's first process when its
rank dies, but not that process's children -- and ``/bin/sh -c`` does not exec its last command,
so even a job's plain ``sleep 300`` is a grandchild.  So each worker rank starts this guard at
start-up (``RankGuard.start``): a child in a session of its own (a launcher that kills the rank's
process group leaves it alone), blocked reading a pipe whose only writer is the rank.  The kernel
closes that pipe however the rank ends.  The guard then kills every process carrying the rank's
identity in its environment (every payload the rank started and their descendants, unless they
scrubbed their environment) and removes the payload cgroups of dead ranks of the workdir.

A rank that ends normally closes the pipe too: its payloads are gone already, and the guard only
makes sure of it.  The guard costs one idle process per rank and no CPU while the rank lives.

    python -m hpcpilot.rankguard OWNER PILOT_DIR     (stdin: the pipe)
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

CLOSE_WAIT = 10.0
"""Seconds a rank that ends normally waits for its guard's last sweep."""
IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
"""The guard ends only with its rank: a batch system's warning or stop signal goes to the rank, whose
orderly stop the guard must outlive (SIGKILL still ends it)."""


class RankGuard:
    """The rank's end of the guard: the pipe's write end, and the guard process."""

    def __init__(self, process: subprocess.Popen[bytes], write_fd: int) -> None:
        self.process, self.write_fd = process, write_fd

    @classmethod
    def start(cls, owner: str, pilot_dir: Path) -> RankGuard | None:
        """Start the guard of rank ``owner`` (``payload.owner_id()``); None (logged) if it cannot start."""
        read_fd, write_fd = os.pipe()  # neither end is inherited by payloads (PEP 446, close_fds)
        try:
            process = subprocess.Popen([sys.executable, "-m", "hpcpilot.rankguard", owner, os.fspath(pilot_dir)],
                                       stdin=read_fd, stdout=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            log.warning("no guard for this rank's payloads: %s", exc)
            os.close(write_fd)
            return None
        finally:
            os.close(read_fd)
        return cls(process, write_fd)

    def close(self, timeout: float = CLOSE_WAIT) -> None:
        """The rank ends normally: let the guard make its last sweep and wait for it (bounded)."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("rank guard %d still sweeping after %.0f s; not waiting for it", self.process.pid, timeout)


def sweep(owner: str, pilot_dir: Path) -> tuple[int, int]:
    """Kill what rank ``owner`` left: (processes hit, cgroups removed)."""
    from hpcpilot.payload import kill_marked, reap_stale_cgroups

    return kill_marked(owner), reap_stale_cgroups(pilot_dir, dead_owner=owner)


def main(argv: list[str]) -> int:
    """Wait for the rank's end (end of file on stdin), then sweep."""
    if len(argv) != 2:
        print("usage: python -m hpcpilot.rankguard OWNER PILOT_DIR", file=sys.stderr)
        return 2
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s [rank guard {argv[0]}] %(levelname)s %(message)s")
    while True:
        try:
            if not os.read(0, 4096):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    processes, cgroups = sweep(argv[0], Path(argv[1]))
    if processes or cgroups:
        log.warning("rank ended: %d payload process(es) killed, %d payload cgroup(s) removed", processes, cgroups)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

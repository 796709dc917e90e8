"""A podman container as the pilot sees it: its payload is conmon's child, not the pilot's (podman-run(1)).

So what works by descent for a bare payload goes through the container here: the processes to monitor start at
the container's own first process (``podman inspect``'s State.Pid, the root the sampler walks), its CPU is read
from the container's cgroup while it runs (the pilot never reaps those processes, so ``wait4`` cannot count
them), and it is stopped with ``podman kill`` and removed with ``podman rm -f`` (a SIGKILL to ``podman run``
alone would leave it running).  The pilot's token and rank identity are passed into the container (``-e``), so
the payload's processes are also found, signalled and, should the rank die, killed like any payload's.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Mapping

from hpcpilot.cgroups import cpu_usage_seconds

log = logging.getLogger(__name__)

ROOT_WAIT = 60.0  # podman starts a container in well under a second; a slow store can take tens of seconds
INSPECT_EVERY = 0.5  # between looks for the first process while the payload is polled
COMMAND_TIMEOUT = 60.0


class PodmanContainer:
    """One named podman container of one payload start."""

    def __init__(self, program: str, name: str, env: Mapping[str, str]) -> None:
        self.program, self.name, self.env = program, name, dict(env)
        self.root: int | None = None
        self._cpu = 0.0
        self._next_inspect = 0.0

    def __repr__(self) -> str:
        return f"PodmanContainer({self.name})"

    def _podman(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([self.program, *args], env=self.env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return subprocess.CompletedProcess([self.program, *args], 1, "", str(exc))

    def _inspect(self) -> int | None:
        done = self._podman("inspect", "--format", "{{.State.Pid}}", self.name)
        text = done.stdout.strip()
        if done.returncode == 0 and text.isdigit() and int(text) > 0:
            self.root = int(text)
        return self.root

    def root_pid(self, alive: Callable[[], bool]) -> int | None:
        """The container's first process, waiting (bounded) while the payload is alive and it is not up yet."""
        end = time.monotonic() + ROOT_WAIT
        while self.root is None and alive() and time.monotonic() < end:
            if self._inspect() is None:
                time.sleep(0.1)
        return self.root

    def track(self) -> None:
        """Read the container's CPU now (called while the payload runs: the cgroup goes with the container)."""
        now = time.monotonic()
        if self.root is None and now >= self._next_inspect:
            self._next_inspect = now + INSPECT_EVERY
            self._inspect()
        if self.root is not None:
            usage = cpu_usage_seconds(self.root)
            if usage is not None:
                self._cpu = max(self._cpu, usage)

    def cpu_seconds(self) -> float:
        """The container's CPU as last read."""
        return self._cpu

    def stop(self, grace: float) -> None:
        """SIGTERM to the container's first process, as podman delivers it (the caller waits ``grace``)."""
        self.track()
        done = self._podman("kill", "--signal", "TERM", self.name)
        if done.returncode != 0:
            log.debug("podman kill %s: %s", self.name, done.stderr.strip()[:200])

    def remove(self) -> None:
        """Kill and remove the container if anything of it is left (its ``--rm`` may not have run)."""
        done = self._podman("rm", "-f", "-t", "0", "--ignore", self.name)
        if done.returncode != 0:
            log.warning("podman rm -f %s failed: %s", self.name, " ".join(done.stderr.split())[:200])

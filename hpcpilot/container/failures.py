"""Tell a container runtime's own failure from the payload's exit, from the exit status and the runtime's stderr.

A runtime that cannot start the payload exits with its own status and says why on stderr, in its own prefix:
apptainer/singularity ``FATAL:`` and 255, podman ``Error:`` and 125 (126/127: the command inside could not be
invoked / found), shifter a ``FAILED`` line and 1 (127 for an exec failure), ch-run ``ch-run[PID]: error:`` and 1
(pilot-behaviour.md §16.4).  Only an exit with the runtime's status *and* its prefixed line counts, so a payload
that exits 1 or 255 by itself keeps the payload's code.  The message then picks pilot3's code (§16.3); a runtime
failure no pattern names is SINGULARITYGENERALFAILURE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpcpilot.errors import ErrorCode

_PREFIX = {
    "apptainer": re.compile(r"^\s*FATAL:\s*(?P<msg>.*)$", re.M),
    "singularity": re.compile(r"^\s*FATAL:\s*(?P<msg>.*)$", re.M),
    "podman": re.compile(r"^Error: (?P<msg>.*)$", re.M),
    "podman-hpc": re.compile(r"^Error: (?P<msg>.*)$", re.M),
    "shifter": re.compile(r"^(?P<msg>.*FAILED.*)$", re.M),
    "charliecloud": re.compile(r"^ch-run\[\d+\]: error: (?P<msg>.*)$", re.M),
}
_STATUSES = {
    "apptainer": (255,), "singularity": (255,), "podman": (125, 126, 127), "podman-hpc": (125, 126, 127),
    "shifter": (1, 127), "charliecloud": (1,),
}
_MESSAGES: tuple[tuple[re.Pattern[str], ErrorCode], ...] = (
    (re.compile(r"image not known|manifest unknown|no such image|could not open image|"
                r"can't stat: .*no such file|failed to lookup image|repository .* not found", re.I),
     ErrorCode.IMAGENOTFOUND),
    (re.compile(r"no more available loop devices", re.I), ErrorCode.SINGULARITYNOLOOPDEVICES),
    (re.compile(r"not mounting requested bind point|can't mkdir|can't bind|bind mount", re.I),
     ErrorCode.SINGULARITYBINDPOINTFAILURE),
    (re.compile(r"failed to mount image|while mounting|can't mount", re.I), ErrorCode.SINGULARITYIMAGEMOUNTFAILURE),
    (re.compile(r"failed to create user namespace|user namespace", re.I), ErrorCode.SINGULARITYFAILEDUSERNAMESPACE),
)
MAX_DIAG = 250


@dataclass(frozen=True, slots=True)
class RuntimeFailure:
    """The runtime, not the payload, failed: the job's code and a one-line diagnostic."""

    code: ErrorCode
    diag: str


def runtime_failure(runtime: str, exit_code: int, stderr_text: str) -> RuntimeFailure | None:
    """The runtime's own failure behind ``exit_code``, or None when the exit is the payload's."""
    if exit_code not in _STATUSES.get(runtime, ()):
        return None
    lines = [m["msg"].strip() for m in _PREFIX[runtime].finditer(stderr_text)]
    if not lines:
        return None
    message = lines[-1]
    code = next((c for pattern, c in _MESSAGES if pattern.search(message)), ErrorCode.SINGULARITYGENERALFAILURE)
    text = " ".join(message.split())
    return RuntimeFailure(code, f"{runtime} failed (exit {exit_code}): {text[:MAX_DIAG]}")

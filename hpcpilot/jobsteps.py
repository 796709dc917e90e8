"""Several transformations in one job (004 step 5): one payload that runs them in order.

A job may carry several transformations: ``transformation``, ``jobPars`` and ``homepackage`` are then
newline-separated lists, one line per step, with equal counts (``homepackage`` may also be one release
for every step).  A job whose ``transformation`` is one line is one step, whatever newlines its
``jobPars`` holds (a shell script in ``-c`` is common).

The steps run as one shell payload, each in a subshell of its own, in order, in the same workdir: so
the memory monitor, the looping and walltime checks, a kill, the CPU time (the whole process tree) and
the payload phase of pilotTiming cover all of them without any per-step bookkeeping.  The first step
that fails ends the payload with its exit code; which step it was is read back from ``STEPS_LOG``,
which the payload appends ``<step> <exit code>`` to after each step.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcpilot.errors import ErrorCode, JobDefinitionError
from hpcpilot.records import JobSpec, checked_text, is_null, show_value

STEPS_LOG = "payload_steps.txt"
"""Per-step exit codes of a several-transformation job, in its workdir (a pilot file: no input may replace it)."""


@dataclass(frozen=True, slots=True)
class Step:
    """One transformation of a job: its command, parameters and release."""

    transformation: str
    job_pars: str
    homepackage: str = ""

    def command(self) -> str:
        return f"{self.transformation} {self.job_pars}".strip()


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.split("\n")]


def _homepackage(spec: JobSpec) -> str:
    value: Any = spec.wire.get("homepackage")
    if is_null(value):
        return ""
    if not isinstance(value, str):
        raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE, f"field homepackage is not text: {show_value(value)}")
    return checked_text(value, "field homepackage")


def job_steps(spec: JobSpec) -> list[Step]:
    """The job's transformations in order; NOTSAMELENGTH (1312) when the per-step fields do not line up."""
    releases = _lines(_homepackage(spec)) if _homepackage(spec) else [""]
    transformations = _lines(spec.transformation.strip())
    if len(transformations) == 1:
        return [Step(transformations[0], spec.job_pars, releases[0] if len(releases) == 1 else "")]
    pars = _lines(spec.job_pars) if spec.job_pars else []
    if len(pars) != len(transformations):
        raise JobDefinitionError(ErrorCode.NOTSAMELENGTH, f"jobPars has {len(pars)} line(s) but transformation "
                                                          f"has {len(transformations)}")
    if len(releases) == 1:
        releases = releases * len(transformations)
    if len(releases) != len(transformations):
        raise JobDefinitionError(ErrorCode.NOTSAMELENGTH, f"homepackage has {len(releases)} line(s) but "
                                                          f"transformation has {len(transformations)}")
    if not all(transformations):
        raise JobDefinitionError(ErrorCode.TRANSFORMNOTFOUND, f"job {spec.panda_id} has an empty transformation line")
    return [Step(t, p, r) for t, p, r in zip(transformations, pars, releases, strict=True)]


def payload_command(steps: list[Step]) -> str:
    """The shell command that runs ``steps`` in order and stops at the first failure with its exit code."""
    if len(steps) == 1:
        return steps[0].command()
    log = shlex.quote(STEPS_LOG)
    parts = [f": > {log}"]
    for number, step in enumerate(steps, 1):
        parts.append(f"(\n{step.command()}\n)\nrc=$?; echo \"{number} $rc\" >> {log}; "
                     f"[ \"$rc\" -eq 0 ] || exit \"$rc\"")
    return "\n".join(parts)


def failure_diag(workdir: Path, steps: list[Step], exit_code: int) -> str:
    """The diagnostic of a payload that exited with ``exit_code``: which step failed, for several steps."""
    if len(steps) > 1:
        failed = _failed_step(workdir / STEPS_LOG)
        if failed is not None and 1 <= failed <= len(steps):
            name = Path(steps[failed - 1].transformation.split()[0]).name[:80]
            return f"step {failed} of {len(steps)} ({name}) exited with code {exit_code}"
    return f"payload exited with code {exit_code}"


def _failed_step(path: Path) -> int | None:
    """The step whose line in ``STEPS_LOG`` records a non-zero exit (None when the log says none)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1] != "0":
            return int(fields[0])
    return None

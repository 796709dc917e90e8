"""Direct access to inputs (004 step 7): read them in place instead of copying them into the workdir.

A job reads its inputs in place only when both the site (``stage.direct_access``) and the job
(``transferType = "direct"``) choose it.  Then its inputs are not copied: each one's location at the
site (its turl: the absolute path in ``stage.input_dir``, or where Harvester placed it) is checked to
exist and goes into ``PoolFileCatalog.xml``, and the payload is told to use it with
``--usePFCTurl --directIn``.  A zip input is not unpacked in that mode (there is no local copy).

Otherwise every input is staged in, and those two options are removed from the job's parameters: a
payload told to read turls would look past the local copies it was given.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hpcpilot.config import SiteConfig
from hpcpilot.errors import ErrorCode, JobDefinitionError, PilotError
from hpcpilot.jobsteps import Step
from hpcpilot.records import JobSpec, is_null, show_value
from hpcpilot.stageio import staging
from hpcpilot.stageio.files import check_lfn, check_not_reserved, show_name

DIRECT_TRANSFER_TYPE = "direct"
DIRECT_OPTIONS = ("--usePFCTurl", "--directIn")
_OPTION = re.compile(r"(?:^|[ \t]+)(?:--usePFCTurl|--directIn)(?=\s|$)")  # the option and the blanks before it


def chosen(spec: JobSpec, config: SiteConfig) -> bool:
    """True when the site and the job both choose direct access (transferType must be text, else 1302)."""
    value = spec.wire.get("transferType")
    if is_null(value):
        return False
    if not isinstance(value, str):
        raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE, f"field transferType is not text: {show_value(value)}")
    return config.stage.direct_access and value.strip().lower() == DIRECT_TRANSFER_TYPE


def adjust_step(step: Step, direct: bool) -> Step:
    """``step`` with ``--usePFCTurl --directIn`` added for direct access, or removed when inputs are local."""
    pars = _OPTION.sub("", step.job_pars).strip() if _OPTION.search(step.job_pars) else step.job_pars
    if direct:
        pars = f"{pars} {' '.join(DIRECT_OPTIONS)}".strip()
    return Step(step.transformation, pars, step.homepackage)


def turls(spec: JobSpec, input_dir: Path, config: SiteConfig, reserved: tuple[str, ...]) -> list[str]:
    """Each input's location at the site, aligned with ``spec.inputs``; STAGEINFAILED for one that is not there."""
    placed = staging.placed_paths(spec) if staging.harvester_stages(config) else []
    out = []
    for index, fspec in enumerate(spec.inputs):
        check_lfn(fspec.lfn)
        check_not_reserved(fspec.lfn, reserved, "input")
        if staging.harvester_stages(config):
            where = placed[index] if index < len(placed) else ""
        else:
            where = str(input_dir / fspec.lfn)
        if not where or not os.path.isfile(where):
            raise PilotError(ErrorCode.STAGEINFAILED, f"input {show_name(fspec.lfn)} for direct access is not at "
                                                      f"{show_name(where) if where else 'any known place'}")
        out.append(os.path.abspath(where))
    return out

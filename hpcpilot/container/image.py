"""The image a job asks for: ``container_name``, else ``--containerImage`` taken out of its parameters.

pilot3 (``JobData.extract_container_image``) moves ``--containerImage=X`` / ``--containerImage X`` out of
``jobPars`` so the transform never sees it, and that image wins over ``container_name``.  The same is done here,
but only when the site runs payloads in a container: with runtime ``none`` a job's parameters reach its payload
exactly as sent.  An image name becomes one argument of the runtime's command line, so one that could be read as
an option or holds blanks fails the job (CONVERSIONFAILURE) instead of reaching the runtime.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hpcpilot.errors import ErrorCode, JobDefinitionError
from hpcpilot.records import JobSpec, is_null, show_value

_OPTION = re.compile(r"(?:^|[ \t])--containerImage(?:=|[ \t]+)(?P<image>[^\s]+)")
"""pilot3's form; blanks only, so that in a several-step job it never takes a word of the next step's line."""


@dataclass(frozen=True, slots=True)
class JobImage:
    """The image a job runs in ('' = the site's default) and its parameters without ``--containerImage``."""

    image: str
    job_pars: str


def check_image(image: str, where: str) -> str:
    """``image`` if a runtime can only take it as an image; else the job fails naming the field."""
    if image.startswith("-") or any(ch.isspace() or not ch.isprintable() for ch in image) or len(image) > 1024:
        raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE, f"{where} is not an image name: {show_value(image)}")
    return image


def job_image(spec: JobSpec) -> JobImage:
    """The job's own image choice; ``--containerImage`` in jobPars wins over ``container_name`` (as in pilot3)."""
    job_pars, image = spec.job_pars, ""
    match = _OPTION.search(job_pars)
    if match is not None:
        image = check_image(match["image"], "--containerImage in jobPars")
        job_pars = job_pars[:match.start()] + job_pars[match.end():]
    value: Any = spec.wire.get("container_name")
    if not image and not is_null(value):
        if not isinstance(value, str):
            raise JobDefinitionError(ErrorCode.CONVERSIONFAILURE,
                                     f"field container_name is not text: {show_value(value)}")
        image = check_image(value.strip(), "field container_name")
    return JobImage(image, job_pars)

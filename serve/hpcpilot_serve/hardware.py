"""GPU matching of the test server's acquire_jobs (1.0): a job's task architecture against a pilot's target.

As panda-server 1.0.4 does it (read in its code, not copied): the task's ``architecture`` gives a GPU spec
(``JediTaskSpec.get_host_gpu_spec``: a JSON ``{"gpu_spec": {...}}`` or the legacy ``...&vendor-model:cuda>=12.0:
vram>=40960:uarch=Ampere:driver>=575.0`` form, ``model!=X`` excluding); ``hardware_matching.match_gpu_spec`` then
passes vendor and model (a case-insensitive regular expression from the start) and microarchitecture if **any** GPU
matches, and vram, version (against ``framework_version``) and driver_version (operator strings) only if **all**
GPUs meet them.  A task without a GPU spec, or a target without a ``gpus`` key, matches.

A job of the test server names its task's architecture in its definition under ``TASK_ARCHITECTURE_KEY`` (the real
server reads it from JEDI_Tasks; the key is taken out of the job the pilot receives).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from packaging.version import InvalidVersion, Version

TASK_ARCHITECTURE_KEY = "taskArchitecture"
_SHORTHANDS = {"cuda": "version", "uarch": "microarchitecture", "driver": "driver_version", "model": "model",
               "vram": "vram"}
_OPERATORS = {"==": Version.__eq__, "!=": Version.__ne__, ">=": Version.__ge__, "<=": Version.__le__,
              ">": Version.__gt__, "<": Version.__lt__}


def gpu_spec(architecture: str | None) -> dict[str, Any] | None:
    """The GPU requirement of a task architecture, or None (no GPU asked)."""
    if not architecture:
        return None
    try:
        spec = json.loads(architecture).get("gpu_spec")
        return {"vendor": "*", "model": "*", **spec} if isinstance(spec, dict) else None
    except (ValueError, AttributeError):
        pass
    found = re.search(r"&([^\^@#]*)", architecture)
    if not found or not found.group(1):
        return None
    legacy, *attributes = found.group(1).split(":")
    vendor, _, model = legacy.partition("-")
    spec = {"vendor": vendor or "*", "model": model or "*"}
    for attribute in attributes:
        parsed = re.match(r"(\w+)(>=|<=|!=|==|>|<|=)(.*)", attribute)
        key = _SHORTHANDS.get(parsed.group(1)) if parsed else None
        if parsed is None or key is None:
            continue
        op, value = parsed.group(2), parsed.group(3)
        if key == "model":
            spec["model"] = {"pattern": value, "excl": True} if op == "!=" else value
        elif key == "microarchitecture":
            spec[key] = value
        else:
            spec[key] = ("==" if op == "=" else op) + value
    return spec


def _meets(value: Any, condition: str) -> bool:
    """``value`` against an operator string such as ">=12.0" (versions compared as versions)."""
    parsed = re.match(r"([=><!]+)(.+)", condition)
    if not parsed or value in (None, ""):
        return False
    op = "==" if parsed.group(1).strip() == "=" else parsed.group(1).strip()
    try:
        return bool(_OPERATORS[op](Version(str(value)), Version(parsed.group(2).strip())))
    except (KeyError, InvalidVersion):
        return False


def _any_matches(pattern: str, values: Sequence[Any]) -> bool:
    return any(value and re.match(pattern, str(value), re.IGNORECASE) for value in values)


def matches(spec: Mapping[str, Any], gpus: Sequence[Mapping[str, Any]]) -> bool:
    """Whether GPUs satisfy a task's GPU spec: selection keys on any GPU, minimum keys on all."""
    vendor = spec.get("vendor", "*")
    if vendor != "*" and not _any_matches(vendor, [g.get("vendor") for g in gpus]):
        return False
    model = spec.get("model", "*")
    if model != "*":
        pattern, exclude = (model["pattern"], bool(model.get("excl"))) if isinstance(model, dict) else (model, False)
        if not gpus or _any_matches(pattern, [g.get("model") for g in gpus]) == exclude:
            return False
    for key, field in (("vram", "vram"), ("version", "framework_version"), ("driver_version", "driver_version")):
        if key in spec and not (gpus and all(_meets(g.get(field), spec[key]) for g in gpus)):
            return False
    if "microarchitecture" in spec:
        wanted = spec["microarchitecture"]
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        if not any(g.get("architecture") in wanted for g in gpus):
            return False
    return True


def job_fits(definition: Mapping[str, Any], target: Mapping[str, Any] | None) -> bool:
    """Whether a job may go to a pilot with ``target`` (None: the pilot sent no target_architecture)."""
    if target is None or "gpus" not in target:
        return True
    spec = gpu_spec(definition.get(TASK_ARCHITECTURE_KEY))
    return spec is None or matches(spec, list(target.get("gpus") or ()))

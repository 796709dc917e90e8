"""What a PanDA server's reply proves: one strict parser per endpoint.

The rule (panda-wire A.5): an answer is an acknowledgement only when it proves one.

* v1 ``/api/v1/...``: ``success: true`` **and** the ``data`` the endpoint documents.  ``success:
  false`` is a refusal with a message; of those, only the endpoint's own no-jobs answer ("No jobs in
  PanDA", ``data: null``) means "no jobs", and "Timed out" is the server's timeout (status 10).
* legacy ``/server/panda/...``: an integer ``StatusCode`` (a decimal string in URL-encoded mode)
  plus the fields the endpoint answers with.

Anything else -- an HTML page from a proxy, truncated JSON, ``{"success": true}`` without data,
``StatusCode: "zero"``, ``Returns`` that is not a list -- raises ``Unproven``: it is neither
"delivered" nor "no jobs", and the caller treats the call as not acknowledged.  Messages are one
line and quote at most a short excerpt of the reply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from hpcpilot.panda.wire import (
    STATUS_FAILED,
    STATUS_NO_JOBS,
    STATUS_OK,
    STATUS_TIMEOUT,
    WireError,
    is_null,
    snippet,
)

V1_NO_JOBS_MESSAGE = "no jobs in panda"
V1_TIMEOUT_MESSAGE = "timed out"
_INTEGER = re.compile(r"-?\d{1,18}")


class Unproven(WireError):
    """A reply that proves nothing: not an acknowledgement, not a refusal, not "no jobs"."""


@dataclass(frozen=True)
class JobsReply:
    """acquire_jobs / getJob: StatusCode (20 = no jobs) and the job dicts."""

    status: int
    jobs: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""


@dataclass(frozen=True)
class JobUpdateReply:
    """update_job / updateJob: StatusCode, backchannel commands and pilotSecrets."""

    status: int
    commands: list[str] = field(default_factory=list)
    secrets: Any = None
    message: str = ""


@dataclass(frozen=True)
class RangesReply:
    """acquire_event_ranges / getEventRanges: StatusCode and the ranges (empty = no more)."""

    status: int
    ranges: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""


@dataclass(frozen=True)
class RangeUpdateReply:
    """update_event_ranges / updateEventRanges: StatusCode, per-range Returns, commands per PandaID."""

    status: int
    returns: list[Any] = field(default_factory=list)
    commands: dict[int, list[str]] = field(default_factory=dict)
    message: str = ""


# ----------------------------------------------------------------------------------- decoding

def decode_body(body: bytes) -> dict[str, Any]:
    """A reply body as a dict: a JSON object, or URL-encoded ``key=value&...`` (values stay strings)."""
    text = body.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise Unproven(f"server reply is broken JSON: {snippet(text)!r}") from None
        if not isinstance(value, dict):
            raise Unproven(f"server reply is not a JSON object: {snippet(text)!r}")
        return value
    if text == "Succeeded":
        return {"StatusCode": "0"}
    if "=" in text and not text.startswith("<"):
        try:
            return dict(parse_qsl(text, keep_blank_values=True, strict_parsing=True))
        except ValueError:
            pass
    raise Unproven(f"server reply is neither JSON nor URL-encoded: {snippet(text)!r}")


def status_of(reply: Mapping[str, Any]) -> int:
    """The integer StatusCode of a legacy-style reply; anything but an integer proves nothing."""
    value = reply.get("StatusCode")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    raise Unproven(f"server reply has no integer StatusCode: {snippet(json.dumps(value, default=str))}")


def nested_json(value: Any, what: str) -> Any:
    """A value that may be a JSON string inside the reply (URL-encoded mode, Returns/Command)."""
    if not isinstance(value, str):
        return value
    if is_null(value):
        return None
    try:
        return json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        raise Unproven(f"{what} in the server reply is not JSON: {snippet(value)!r}") from None


def split_commands(value: Any) -> list[str]:
    """A backchannel command field -> command names ('debug,tobekilled' -> two; NULL -> none)."""
    if is_null(value):
        return []
    return [part.strip() for part in str(value).split(",") if not is_null(part.strip())]


def _v1(reply: Mapping[str, Any], endpoint: str) -> tuple[bool, str, Any]:
    """(success, message, data) of a v1 reply; a reply without a boolean ``success`` proves nothing."""
    success = reply.get("success")
    if not isinstance(success, bool):
        raise Unproven(f"{endpoint}: v1 reply without a boolean 'success': {snippet(json.dumps(reply, default=str))}")
    return success, str(reply.get("message") or ""), reply.get("data")


def _v1_refusal(endpoint: str, message: str, data: Any, no_jobs: bool = False) -> int:
    """The status a v1 ``success: false`` stands for: the server's own timeout, no jobs, or a refusal."""
    if isinstance(data, Mapping) and "StatusCode" in data:
        return status_of(data)
    text = " ".join(message.lower().split()).rstrip(".")
    if no_jobs and text == V1_NO_JOBS_MESSAGE and data is None:
        return STATUS_NO_JOBS
    if text == V1_TIMEOUT_MESSAGE:
        return STATUS_TIMEOUT
    return STATUS_FAILED


def _object_list(value: Any, what: str) -> list[dict[str, Any]]:
    items = nested_json(value, what)
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise Unproven(f"{what} in the server reply is not a list of objects: {snippet(str(value))!r}")
    return items


def _no_data(endpoint: str) -> Unproven:
    return Unproven(f"{endpoint}: v1 reply with success but without the documented data")


# ------------------------------------------------------------------------------ per endpoint

def parse_jobs(reply: Mapping[str, Any], v1: bool) -> JobsReply:
    """acquire_jobs (v1) or getJob (legacy).  Status 20 only for the server's explicit no-jobs answers."""
    if v1:
        success, message, data = _v1(reply, "acquire_jobs")
        if not success:
            return JobsReply(_v1_refusal("acquire_jobs", message, data, no_jobs=True), [], message)
        if isinstance(data, list):
            return JobsReply(STATUS_OK, _object_list(data, "jobs"), message)
        if not isinstance(data, Mapping):
            raise _no_data("acquire_jobs")
        reply = data
    status = status_of(reply)
    message = str(reply.get("errorDialog") or "")
    if status != STATUS_OK:
        return JobsReply(status, [], message)
    if "jobs" in reply:
        return JobsReply(status, _object_list(reply["jobs"], "jobs"), message)
    if "PandaID" in reply:
        return JobsReply(status, [dict(reply)], message)
    raise Unproven("getJob: StatusCode 0 without jobs or a PandaID")


def parse_job_update(reply: Mapping[str, Any], v1: bool) -> JobUpdateReply:
    """update_job (v1, data {StatusCode, command, pilotSecrets}) or updateJob (legacy)."""
    message = ""
    if v1:
        success, message, data = _v1(reply, "update_job")
        if not success:
            return JobUpdateReply(_v1_refusal("update_job", message, data), [], None, message)
        if not isinstance(data, Mapping):
            raise _no_data("update_job")
        reply = data
    status = status_of(reply)
    secrets = reply.get("pilotSecrets")
    return JobUpdateReply(status, split_commands(reply.get("command")), None if is_null(secrets) else secrets,
                          message or str(reply.get("errorDialog") or ""))


def parse_ranges(reply: Mapping[str, Any], v1: bool) -> RangesReply:
    """acquire_event_ranges (v1, data = list of ranges) or getEventRanges (legacy ``eventRanges``)."""
    if v1:
        success, message, data = _v1(reply, "acquire_event_ranges")
        if not success:
            return RangesReply(_v1_refusal("acquire_event_ranges", message, data), [], message)
        if isinstance(data, Mapping):
            status = status_of(data) if "StatusCode" in data else STATUS_OK
            if "eventRanges" not in data:
                raise _no_data("acquire_event_ranges")
            return RangesReply(status, _object_list(data["eventRanges"], "eventRanges"), message)
        if not isinstance(data, list):
            raise _no_data("acquire_event_ranges")
        return RangesReply(STATUS_OK, _object_list(data, "eventRanges"), message)
    status = status_of(reply)
    message = str(reply.get("errorDialog") or "")
    if status != STATUS_OK:
        return RangesReply(status, [], message)
    if "eventRanges" not in reply:
        raise Unproven("getEventRanges: StatusCode 0 without eventRanges")
    return RangesReply(status, _object_list(reply["eventRanges"], "eventRanges"), message)


def _commands_map(value: Any) -> dict[int, list[str]]:
    commands = nested_json(value, "Command")
    if commands is None:
        return {}
    if not isinstance(commands, Mapping):
        raise Unproven(f"Command in the server reply is not an object: {snippet(str(value))!r}")
    out: dict[int, list[str]] = {}
    for key, command in commands.items():
        if not _INTEGER.fullmatch(str(key).strip()):
            raise Unproven(f"Command in the server reply has a bad PandaID: {snippet(str(key))!r}")
        names = split_commands(command)
        if names:
            out[int(str(key).strip())] = names
    return out


def parse_range_update(reply: Mapping[str, Any], v1: bool) -> RangeUpdateReply:
    """update_event_ranges (v1, data {Returns, Commands}) or updateEventRanges (legacy; Returns and
    Command are JSON strings even inside a JSON reply).  A status-0 reply whose Returns is not a list
    (the server's answer to input it could not parse, panda-wire A.6.4) proves nothing."""
    message = ""
    if v1:
        success, message, data = _v1(reply, "update_event_ranges")
        if not success:
            return RangeUpdateReply(_v1_refusal("update_event_ranges", message, data), [], {}, message)
        if not isinstance(data, Mapping) or "Returns" not in data:
            raise _no_data("update_event_ranges")
        reply = data
        status = status_of(data) if "StatusCode" in data else STATUS_OK
    else:
        status = status_of(reply)
    if status != STATUS_OK:
        return RangeUpdateReply(status, [], {}, message or str(reply.get("errorDialog") or ""))
    returns = nested_json(reply.get("Returns"), "Returns")
    if not isinstance(returns, list):
        raise Unproven(f"Returns in the server reply is not a list: {snippet(str(reply.get('Returns')))!r}")
    return RangeUpdateReply(status, returns, _commands_map(reply.get("Command", reply.get("Commands"))), message)


def parse_range_statuses(reply: Mapping[str, Any], v1: bool) -> dict[str, str]:
    """get_event_range_statuses (v1) or get_events_status (legacy, the bare JSON dict):
    ``{job_id: {eventRangeID: {"status": ...}}}`` -> ``{eventRangeID: status}`` ({} = none known)."""
    if v1:
        success, message, data = _v1(reply, "get_event_range_statuses")
        if not success:
            raise Unproven(f"get_event_range_statuses refused: {snippet(message or '-')}")
        reply = data
    if not isinstance(reply, Mapping):
        raise _no_data("get_event_range_statuses")
    out: dict[str, str] = {}
    for per_job in reply.values():
        if not isinstance(per_job, Mapping):
            raise Unproven(f"event range statuses are not objects: {snippet(str(per_job))!r}")
        for range_id, info in per_job.items():
            status = info.get("status") if isinstance(info, Mapping) else info
            if not isinstance(status, str):
                raise Unproven(f"event range {snippet(str(range_id), 60)!r} has no status")
            out[str(range_id)] = status
    return out


def parse_job_statuses(reply: Mapping[str, Any], v1: bool, asked: Sequence[int]) -> dict[int, str]:
    """get_job_status (v1: data = [{job_id, status, attempt_number}]) or getStatus (legacy:
    ``status=running+holding`` aligned with the ids asked) -> {PandaID: status}."""
    if v1:
        success, message, data = _v1(reply, "get_job_status")
        if not success:
            raise Unproven(f"get_job_status refused: {snippet(message or '-')}")
        if not isinstance(data, list):
            raise _no_data("get_job_status")
        out: dict[int, str] = {}
        for item in data:
            if not isinstance(item, Mapping) or not isinstance(item.get("status"), str) \
                    or not _INTEGER.fullmatch(str(item.get("job_id")).strip()):
                raise Unproven(f"get_job_status entry is not {{job_id, status}}: {snippet(str(item))!r}")
            out[int(str(item["job_id"]).strip())] = item["status"]
        return out
    if status_of(reply) != STATUS_OK or not isinstance(reply.get("status"), str):
        raise Unproven("getStatus: no status list in the reply")
    states = [s for s in re.split(r"[+\s]", reply["status"]) if s]
    if len(states) != len(asked):
        raise Unproven(f"getStatus: {len(states)} status(es) for {len(asked)} job(s)")
    return dict(zip(asked, states, strict=True))

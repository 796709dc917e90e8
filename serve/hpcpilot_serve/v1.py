"""The v1 API of the test server: ``/api/v1/...`` JSON bodies, ``{success, message, data}`` replies.

Requests are refused as the real server refuses them (panda-wire A.5): a form body or a non-integer
count is a type error, a look-up that is not a GET or whose ``job_ids`` are not integers is refused, an
unknown worker-node field is an argument error; and update_event_ranges answers HTTP 500 after
committing, on 0.8.1 and 1.0.4 alike (its body depends on the request's ``version``, A.5, A.7).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from hpcpilot.panda import replies, wire
from hpcpilot_serve.handler import HandlerBase
from hpcpilot_serve.reply import Reply
from hpcpilot_serve.state import as_int

_INT_ARGUMENTS = ("job_id", "n_jobs", "n_ranges")


def v1_event_update_bug_body(version: Any) -> bytes:
    """What v1 update_event_ranges answers (HTTP 500, after committing) on 0.8.1 and 1.0.4 alike (A.5, A.7)."""
    if (as_int(version, 0) or 0) >= 1:
        return b"unhashable type: 'list'"
    return b"Type not serializable for {'Returns', 'Commands'} (<class 'set'>)"


def _type_error(name: str, got: str) -> dict[str, Any]:
    return {"success": False, "data": None, "message": f"Type error: '{name}' must be of type int, got {got}."}


class V1Endpoints(HandlerBase):
    """Reading v1 requests (with the server's own refusals) and writing v1 replies."""

    def _v1(self, method: str, body: bytes) -> None:
        if method in wire.LOOKUPS:
            self._v1_lookup(method)
            return
        if "application/json" not in self.headers.get("Content-Type", ""):
            form = dict(parse_qsl(body.decode(), keep_blank_values=True))
            self.app.record("v1", method, form, 200, self._auth())
            self._v1_reply(_type_error(next(iter(form), "job_id"), "str"))
            return
        try:
            fields = json.loads(body) if body else {}
        except ValueError as exc:  # 1.0.4's words (0.8.1 answers the bare exception text)
            self.app.record("v1", method, {}, 500, self._auth())
            self._send(500, f"ERROR : received invalid JSON : {exc}".encode())
            return
        if not self._token_ok():
            self.app.record("v1", method, fields, 401, self._auth())
            self._send(401, b"invalid token")
            return
        target: Any = None
        if method == wire.GET_JOB and wire.TARGET_ARCHITECTURE in fields:
            target, refusal = self._target_of(fields[wire.TARGET_ARCHITECTURE])
            if refusal:
                self.app.record("v1", method, fields, 200, self._auth())
                self._v1_reply({"success": False, "data": None, "message": refusal})
                return
        bad = [k for k in _INT_ARGUMENTS if k in fields and not isinstance(fields[k], int)]
        if bad:
            self.app.record("v1", method, fields, 200, self._auth())
            self._v1_reply(_type_error(bad[0], type(fields[bad[0]]).__name__))
            return
        legacy = wire.from_v1(method, fields)
        legacy[wire.TARGET_ARCHITECTURE] = target  # parsed (None: none sent), for the job selection
        self._serve("v1", method, fields, legacy)

    def _worker_node(self, body: bytes) -> None:
        """v1 update_worker_node: inserts or refreshes a node of the worker-node map (1.0.4); unknown fields, missing
        required ones and values of the wrong type are refused as v1 refuses them (0.8.1 and 1.0.4 take the same
        fields); 0.8.1 answers success and stores nothing (read in its code and seen on it)."""
        fields = json.loads(body) if body else {}
        self.app.record("v1", wire.UPDATE_WORKER_NODE, fields, 200, self._auth())
        refusal = _map_refusal(fields, wire.WORKER_NODE_TYPES, ("site", "host_name", "cpu_model"))
        if refusal:
            self._v1_reply({"success": False, "data": None, "message": refusal})
            return
        if self.app.release == "0.8":  # its row look-up is missing from its code: a success that stores nothing
            self._v1_reply({"success": True, "data": None,
                            "message": "Another pilot was updating the worker node at the same time."})
            return
        self._v1_reply({"success": True, "data": None, "message": self.app.upsert_worker_node(fields)})

    def _target_of(self, target: Any) -> tuple[dict[str, Any] | None, str]:
        """acquire_jobs' ``target_architecture`` as 1.0.4 reads it (a dict or a JSON string; empty = none), and
        why it is refused ('' = taken): 0.8.1 has no such argument; 1.0.4 refuses what is not a JSON object."""
        if self.app.release == "0.8":
            return None, f"Argument error: got an unexpected keyword argument '{wire.TARGET_ARCHITECTURE}'"
        if not target:
            return None, ""
        if isinstance(target, str):
            try:
                target = json.loads(target)
            except ValueError as exc:
                return None, f"failed to parse target_architecture with {exc}"
        if not isinstance(target, dict):
            return None, "target_architecture must be a JSON object"
        return target, ""

    def _worker_node_gpu(self, body: bytes) -> None:
        """v1 update_worker_node_gpu: 1.0.4 upserts one row per (site, host, vendor, model); 0.8.1 takes the same
        fields and answers every call with its lock message (its row look-up is missing from its code)."""
        fields = json.loads(body) if body else {}
        self.app.record("v1", wire.UPDATE_WORKER_NODE_GPU, fields, 200, self._auth())
        refusal = _map_refusal(fields, wire.WORKER_NODE_GPU_TYPES, wire.WORKER_NODE_GPU_REQUIRED)
        if refusal:
            self._v1_reply({"success": False, "data": None, "message": refusal})
            return
        if self.app.release == "0.8":
            self._v1_reply({"success": False, "data": None,
                            "message": "Another pilot was updating the worker node GPU at the same time."})
            return
        self._v1_reply({"success": True, "data": None, "message": self.app.upsert_worker_node_gpu(fields)})

    def _v1_lookup(self, method: str) -> None:
        """The v1 look-ups, GET only, with their arguments cast as the server casts them (A.5)."""
        pairs = parse_qsl(urlsplit(self.path).query, keep_blank_values=True)
        if self.command != "GET":
            self.app.record("v1", method, dict(pairs), 200, self._auth())
            self._v1_reply({"success": False, "data": None, "message": f"expecting GET, received {self.command}"})
            return
        if method == wire.GET_EVENTS_STATUS:
            fields: dict[str, Any] = dict(pairs)
            self._serve("v1", method, fields, {"ids": fields.get("job_task_ids", "")})
            return
        values = [v for k, v in pairs if k == "job_ids"]
        if not values or any(as_int(v) is None for v in values):  # List[int] is cast from repeated parameters
            self.app.record("v1", method, {"job_ids": values}, 200, self._auth())
            self._v1_reply({"success": False, "data": None, "message": f"Type error: 'job_ids' with value "
                                                                      f"'{values}' could not be casted to type "
                                                                      "List from list."})
            return
        self._serve("v1", method, {"job_ids": [as_int(v) for v in values]}, {"ids": " ".join(values)})

    def _v1_encode(self, method: str, fields: Mapping[str, Any], reply: Reply) -> tuple[int, bytes, str]:
        """(HTTP status, body, content type) of a method's reply on v1."""
        if method == wire.UPDATE_EVENT_RANGES and self.app.v1_event_update_bug:
            return 500, v1_event_update_bug_body(fields.get("version")), "text/plain"  # A.5: committed, then 500
        return 200, json.dumps(_v1_envelope(method, reply)).encode(), "application/json"


def _map_refusal(fields: Mapping[str, Any], types: Mapping[str, type], required: tuple[str, ...]) -> str:
    """Why a worker-node or GPU map is refused ('' = taken), in the server's words: an unknown or missing
    argument, or a value not of its declared type (``isinstance``, so an int where a float is declared)."""
    unknown = sorted(set(fields) - set(types))
    if unknown:
        return f"Argument error: got an unexpected keyword argument '{unknown[0]}'"
    missing = [k for k in required if k not in fields]
    if missing:
        return f"Argument error: missing a required argument: '{missing[0]}'"
    for name, value in fields.items():
        if value is not None and not isinstance(value, types[name]):
            return f"Type error: '{name}' must be of type {types[name].__name__}, got {type(value).__name__}."
    return ""


def _v1_envelope(method: str, reply: Reply) -> dict[str, Any]:
    """The ``{success, message, data}`` reply for a method's answer."""
    data = reply.data
    if method == wire.GET_JOB:
        if data.get("StatusCode") == wire.STATUS_NO_JOBS:
            return {"success": False, "message": "No jobs in PanDA", "data": None}
        return {"success": True, "message": "", "data": {"StatusCode": 0, "jobs": data.get("jobs") or [data]}}
    if method == wire.GET_EVENT_RANGES:
        return {"success": True, "message": "", "data": data.get("eventRanges", [])}
    if method == wire.UPDATE_EVENT_RANGES:
        return {"success": True, "message": "",
                "data": {"StatusCode": 0, "Returns": replies.nested_json(data["Returns"], "Returns"),
                         "Commands": replies.nested_json(data["Command"], "Command")}}
    if reply.v1_error is not None:
        return {"success": False, "message": reply.v1_error, "data": None}
    if reply.v1 is not None:
        return {"success": True, "message": "", "data": reply.v1}
    return {"success": True, "message": "", "data": data}

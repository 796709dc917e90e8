"""Faults ``hpcpilot serve`` injects, so tests provoke every answer class of panda-wire A.5 for real.

A fault applies to the next ``count`` requests (all while set, if None) of one method (all methods
if None), either *before* the server acts (nothing is committed) or *after* it committed the call
(``after_commit``: the server did the work, the pilot cannot tell from the answer).  Kinds:

* ``5xx`` HTTP 503, ``500`` HTTP 500 with an exception text;
* ``garbage`` an HTML page with HTTP 200 (a proxy's maintenance page);
* ``no-data`` HTTP 200 ``{"success": true}`` (v1) or ``{"message": "ok"}`` (legacy): no proof;
* ``status-zero`` ``StatusCode: "zero"``;
* ``truncated`` the JSON reply cut in half;
* ``slow`` the answer comes ``delay`` seconds late (before or after committing);
* ``reset`` the connection is closed without an answer.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

FAULT_KINDS = frozenset({"5xx", "500", "garbage", "no-data", "status-zero", "truncated", "slow", "reset"})
HTML_PAGE = b"<html><body>Maintenance</body></html>"


@dataclass
class Fault:
    kind: str
    count: int | None = None
    delay: float = 0.0
    method: str | None = None
    after_commit: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r} (one of {', '.join(sorted(FAULT_KINDS))})")


class FaultBox:
    """The fault now set, taken request by request (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fault: Fault | None = None

    def set(self, fault: Fault | None) -> None:
        with self._lock:
            self._fault = fault

    def take(self, method: str) -> Fault | None:
        """The fault for one request of ``method`` (and count it), or None."""
        with self._lock:
            fault = self._fault
            if fault is None or (fault.method is not None and fault.method != method):
                return None
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self._fault = None
            return fault


def fault_answer(fault: Fault, v1: bool, real_body: bytes | None) -> tuple[int, bytes, str] | None:
    """(HTTP status, body, content type) a fault answers with; None = close the connection."""
    if fault.kind == "reset":
        return None
    if fault.kind == "5xx":
        return 503, b"Service Unavailable", "text/plain"
    if fault.kind == "500":
        return 500, b"OperationalError: could not serialize access (fault injected)", "text/plain"
    if fault.kind == "garbage":
        return 200, HTML_PAGE, "text/html"
    if fault.kind == "no-data":
        body = {"success": True, "message": ""} if v1 else {"message": "ok"}
        return 200, json.dumps(body).encode(), "application/json"
    if fault.kind == "status-zero":
        body = {"success": True, "message": "", "data": {"StatusCode": "zero"}} if v1 else {"StatusCode": "zero"}
        return 200, json.dumps(body).encode(), "application/json"
    whole = real_body or json.dumps({"success": True, "data": {"StatusCode": 0, "jobs": []}}).encode()
    return 200, whole[: max(1, len(whole) // 2)], "application/json"  # truncated

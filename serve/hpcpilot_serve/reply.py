"""What one PanDA method of the test server returns, before it is written in the request's dialect."""

from __future__ import annotations

from typing import Any


class Reply:
    """A method's answer: a legacy-style dict (the v1 ``data`` is derived from it unless ``v1`` is given), or
    a ready legacy body (``raw``); ``v1_error`` makes v1 answer ``success: false`` with that message."""

    def __init__(self, data: Any, http_status: int = 200, raw: bytes | None = None, v1: Any = None,
                 v1_error: str | None = None) -> None:
        self.data = data
        self.http_status = http_status
        self.raw = raw
        self.v1 = v1  # the v1 ``data`` where it is not derived from the legacy reply
        self.v1_error = v1_error  # v1 answers ``success: false`` with this message

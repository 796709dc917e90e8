"""The legacy API of the test server: ``/server/panda/<method>``, as panda-server 0.8.1 serves it.

Requests come form-encoded or as gzip JSON (the legacy server always gunzips a JSON body); replies are
URL-encoded, or JSON with ``Accept: application/json``.  A release without the legacy API (1.0) answers
every legacy path HTTP 403 ``ERROR : method X is forbidden``, as it does for an unknown method.
"""

from __future__ import annotations

import gzip
import json
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from hpcpilot.panda import wire
from hpcpilot_serve.handler import HandlerBase
from hpcpilot_serve.reply import Reply


class LegacyEndpoints(HandlerBase):
    """Reading legacy requests and writing legacy replies."""

    def _legacy_fields(self, body: bytes) -> dict[str, Any]:
        query = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        if "application/json" in self.headers.get("Content-Type", ""):
            data = json.loads(gzip.decompress(body)) if body else {}  # legacy always gunzips JSON bodies
            return {**query, **{k: (str(v) if isinstance(v, bool) else v) for k, v in data.items()}}
        return {**query, **dict(parse_qsl(body.decode(), keep_blank_values=True))}

    def _legacy(self, method: str, body: bytes) -> None:
        if method not in wire.METHODS + wire.LOOKUPS or "legacy" not in self.app.apis:  # 1.0: every method
            self.app.record("legacy", method, {}, 403, self._auth())
            self._send(403, f"ERROR : method {method} is forbidden".encode())
            return
        fields = self._legacy_fields(body)
        if not self._token_ok():
            self.app.record("legacy", method, fields, 401, self._auth())
            self._send(401, b"invalid token")
            return
        self._serve("legacy", method, fields, fields)

    def _legacy_encode(self, reply: Reply) -> tuple[int, bytes, str]:
        """(HTTP status, body, content type) of a method's reply on the legacy API."""
        if "application/json" in self.headers.get("Accept", ""):
            return reply.http_status, json.dumps(reply.data).encode(), "application/json"
        if reply.raw is not None:
            return reply.http_status, reply.raw, "text/plain"
        flat = {k: (v if isinstance(v, str) else json.dumps(v) if isinstance(v, list | dict) else str(v))
                for k, v in reply.data.items()}
        return reply.http_status, urlencode(flat).encode(), "text/plain"

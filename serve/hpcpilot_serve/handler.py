"""What every request of the test server goes through: reading it, who sent it, serving one call with the
fault set for it, and writing the answer.

The endpoints of each API build on this (``v1.py``, ``legacy.py``) and ``routing.py`` puts them together.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import socket
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from hpcpilot_serve.faults import Fault, fault_answer
from hpcpilot_serve.reply import Reply

if TYPE_CHECKING:  # annotations only: the server module makes the handler, not the other way
    from hpcpilot_serve.server import PandaTestServer

logger = logging.getLogger(__name__)


def token_fingerprint(token: str) -> str:
    """How the request log names a token (never the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


class HandlerBase(BaseHTTPRequestHandler):
    """One HTTP request to the test server; ``_encode`` (the reply in the request's dialect) is the routing's."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out apart: without it each reply waits ~40 ms
    server_version = "hpcpilot-panda-test/0.1"

    @property
    def app(self) -> PandaTestServer:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _v1_reply(self, out: Mapping[str, Any]) -> None:
        self._send(200, json.dumps(out).encode(), "application/json")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        return body

    def _auth(self) -> str:
        """Who sent the request, as the request log keeps it: a token's fingerprint, a certificate's CN, none."""
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            token = header[len("Bearer "):].strip()
            origin = self.headers.get("Origin", "")
            return f"bearer:{token_fingerprint(token)} origin:{origin}"
        getpeercert = getattr(self.connection, "getpeercert", None)
        cert = getpeercert() if getpeercert else None
        if cert:
            subject = dict(x[0] for x in cert.get("subject", ()))
            return "x509:" + str(subject.get("commonName", "?"))
        return "none"

    def _token_ok(self) -> bool:
        tokens = self.app.tokens
        if tokens is None:
            return True
        header = self.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[len("Bearer "):].strip() in tokens

    def _hang_up(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _serve(self, api: str, method: str, fields: Mapping[str, Any], legacy_fields: dict[str, Any]) -> None:
        """Run one call, counted in ``app.concurrency`` while it is served (including a slow fault's wait)."""
        with self.app.concurrency.serving(method):
            self._serve_call(api, method, fields, legacy_fields)

    def _serve_call(self, api: str, method: str, fields: Mapping[str, Any], legacy_fields: dict[str, Any]) -> None:
        """Run one call (with the fault set for it, before or after committing) and answer it."""
        fault = self.app.faults.take(method)
        if fault is not None and not fault.after_commit:
            if fault.kind == "slow":
                self.app.wait_released(fault.delay)
            else:
                self._send_fault(api, method, fields, fault, None)
                return
        status, body, content_type = self._encode(api, method, fields, self.app.call(method, legacy_fields))
        if fault is not None and fault.after_commit:
            if fault.kind == "slow":
                self.app.wait_released(fault.delay)
            else:
                self._send_fault(api, method, fields, fault, body)
                return
        self.app.record(api, method, fields, status, self._auth())
        self._send(status, body, content_type)

    def _send_fault(self, api: str, method: str, fields: Mapping[str, Any], fault: Fault,
                    real_body: bytes | None) -> None:
        answer = fault_answer(fault, api == "v1", real_body)
        self.app.record(api, method, fields, answer[0] if answer else 0, self._auth())
        if answer is None:
            self._hang_up()
        else:
            self._send(*answer)

    def _encode(self, api: str, method: str, fields: Mapping[str, Any], reply: Reply) -> tuple[int, bytes, str]:
        """(HTTP status, body, content type) of a method's reply in the request's dialect."""
        raise NotImplementedError

"""Which endpoint a request of the test server goes to: v1, legacy, the worker-node map, or ``/admin/``.

``/admin/fault``, ``/admin/command``, ``/admin/dump`` and ``/admin/requests`` let a test in another
process set faults and backchannel commands and read the state.  An exception inside a method is
HTTP 500 with its text (panda-wire A.6.6); a stopped listener hangs up as a dead server would.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from hpcpilot.panda import wire
from hpcpilot_serve.legacy import LegacyEndpoints
from hpcpilot_serve.reply import Reply
from hpcpilot_serve.v1 import V1Endpoints

logger = logging.getLogger(__name__)


class Handler(V1Endpoints, LegacyEndpoints):
    """The test server's request handler: routes each request to its API's endpoint."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        if not self.app.listens_on(self.server):  # this listener was stopped: behave like a dead server
            self._hang_up()
            return
        path = urlsplit(self.path).path
        body = self._read_body()
        if path.startswith("/admin/"):
            self._admin(path[len("/admin/"):], body)
            return
        try:
            self._route(path, body)
        except (BrokenPipeError, ConnectionResetError):  # the client hung up (it timed out): nobody to answer
            self.close_connection = True
        except Exception as exc:  # A.6.6: an exception inside a method is HTTP 500 with its text
            logger.exception("test server: error in %s", path)
            with contextlib.suppress(OSError):
                self._send(500, f"{type(exc).__name__}: {exc}".encode())

    def _route(self, path: str, body: bytes) -> None:
        if path.startswith(wire.LEGACY_PREFIX):
            self._legacy(path[len(wire.LEGACY_PREFIX):], body)
        elif path == wire.UPDATE_WORKER_NODE_PATH and "v1" in self.app.apis:
            self._worker_node(body)
        elif path == wire.UPDATE_WORKER_NODE_GPU_PATH and "v1" in self.app.apis:
            self._worker_node_gpu(body)
        elif path in wire.V1_METHOD_BY_PATH and "v1" in self.app.apis:
            self._v1(wire.V1_METHOD_BY_PATH[path], body)
        else:
            self._send(404, b"Not Found")

    def _encode(self, api: str, method: str, fields: Mapping[str, Any], reply: Reply) -> tuple[int, bytes, str]:
        """(HTTP status, body, content type) of a method's reply in the request's dialect."""
        if api == "v1":
            return self._v1_encode(method, fields, reply)
        return self._legacy_encode(reply)

    def _admin(self, name: str, body: bytes) -> None:
        data = json.loads(body) if body else {}
        if name == "fault":
            self.app.set_fault(data.get("kind"), data.get("count"), float(data.get("delay", 0.0)),
                               method=data.get("method"), after_commit=bool(data.get("after_commit")))
            out: Any = {"ok": True}
        elif name == "command":
            self.app.set_command(int(data["PandaID"]), str(data["command"]))
            out = {"ok": True}
        elif name == "dump":
            out = self.app.dump()
        elif name == "requests":
            out = self.app.requests(data.get("method"))
        else:
            self._send(404, b"Not Found")
            return
        self._send(200, json.dumps(out).encode(), "application/json")

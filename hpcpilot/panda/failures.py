"""What a failed call to the PanDA server means: the errors callers act on, and how a transport failure or an
HTTP status is read.

The distinction that matters is whether a request may be sent again as it is:

* ``ServerUnavailable``: nothing usable came back before the call's deadline, and nothing was delivered
  either (connection refused, connect timeout, 401/408/425/429), or the call is one that may be repeated
  (getJob, getEventRanges, look-ups): try again later.
* ``Ambiguous`` (a ServerUnavailable): an updateJob or updateEventRanges may have been committed -- HTTP
  5xx, a read timeout or a dropped connection after the body was sent, or a reply that proves nothing.
  Never re-sent blindly: the caller asks the server first (``hpcpilot.panda.verdict``).
* ``UnconfirmedRangeUpdate`` (an Ambiguous): v1 ``update_event_ranges`` answered HTTP 500, its normal answer.
* ``ServerUnusable``: will not heal by waiting (a certificate that does not verify, an unsafe token transport).
* ``RequestRejected``: the server refused the request; sending it again will not help.

``NotSent``, ``MaybeSent``, ``EndpointMissing`` and ``NoLegacyApi`` describe one attempt; only the client's
retry loop sees them, and it turns them into the errors above.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import NoReturn

import urllib3.exceptions

from hpcpilot.panda import wire

NOT_DELIVERED_HTTP = frozenset({401, 408, 425, 429})
"""HTTP answers that prove the request was not processed: safe to send again as it is."""


class PandaError(Exception):
    """A call to the PanDA server did not succeed (one-line message)."""


class ServerUnavailable(PandaError):
    """No usable answer before the call's deadline (server down, 5xx, timeouts); try again later."""


class Ambiguous(ServerUnavailable):
    """The server may have committed the update: ask it before sending again."""

    def __init__(self, message: str, http_status: int = 0) -> None:
        super().__init__(message)
        self.http_status = http_status


class UnconfirmedRangeUpdate(Ambiguous):
    """v1 ``update_event_ranges`` answered HTTP 500: its answer on every panda-server release, also after
    committing (panda-wire A.5, A.7).  Not a fault: the ranges' fate is settled by the job's status look-up."""


class ServerUnusable(PandaError):
    """Retrying will not help: bad certificate, unsafe token transport, not an http(s) URL."""


class RequestRejected(PandaError):
    """The server refused the request; sending it again will not help."""


class EndpointMissing(Exception):
    """A v1 endpoint answered 404."""


class NotSent(Exception):
    """One attempt failed before the server could act on it."""


class MaybeSent(Exception):
    """One attempt failed after the server may have acted on it."""

    def __init__(self, message: str, http_status: int = 0) -> None:
        super().__init__(message)
        self.http_status = http_status


class NoLegacyApi(Exception):
    """A legacy path answered HTTP 403 'method X is forbidden': this server has no legacy API (panda-server 1.0)."""


def classify_http(code: int, content: bytes, path: str, api: str) -> NoReturn:
    """Raise what a non-200 HTTP status means for the request: not processed, perhaps processed, refused."""
    if code == 404 and api == "v1":
        raise EndpointMissing()
    if code == 403 and api == "legacy" and b"is forbidden" in content[:200]:
        raise NoLegacyApi()
    if code in NOT_DELIVERED_HTTP:
        raise NotSent(f"HTTP {code} from {path}: {wire.snippet(content)}")
    if code >= 500:
        raise MaybeSent(f"HTTP {code} from {path}: {wire.snippet(content)}", code)
    raise RequestRejected(f"HTTP {code} from {path}: {wire.snippet(content)}")


def _chain(exc: BaseException, depth: int = 8) -> Iterator[BaseException]:
    """An exception and what it wraps (urllib3's ``reason``, args, __cause__/__context__)."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < depth * 4:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        todo += [x for x in (getattr(current, "reason", None), current.__cause__, current.__context__)
                 if isinstance(x, BaseException)]


def cause(exc: BaseException) -> str:
    """The innermost useful text of a transport failure (e.g. '[Errno 111] Connection refused')."""
    texts = [str(e) for e in _chain(exc) if str(e)]
    text = texts[-1] if texts else type(exc).__name__
    for candidate in texts:
        if "[Errno" in candidate:
            text = candidate[candidate.index("[Errno"):]
            break
    return wire.snippet(text, 200)


def never_sent(exc: BaseException) -> bool:
    """A connection that was never made: nothing reached the server."""
    return any(isinstance(e, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
                          | ConnectionRefusedError) for e in _chain(exc))


def certificate_rejected(exc: BaseException) -> bool:
    """The server's certificate did not verify: waiting will not help."""
    return any(isinstance(e, ssl.SSLCertVerificationError) for e in _chain(exc))

"""The test server's listening socket and its count of calls in flight.

A real outage drops the open keep-alive connections, so the listener can cut them; and a test proves
that a client had several requests in flight together by counting at the server, not by timing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any


class Listener(ThreadingHTTPServer):
    """ThreadingHTTPServer that can cut its open keep-alive connections (a real outage drops them)."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.live: set[socket.socket] = set()
        self.live_lock = threading.Lock()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.live_lock:
            self.live.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.live_lock:
                self.live.discard(request)

    def cut_connections(self) -> None:
        with self.live_lock:
            live = list(self.live)
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class RequestConcurrency:
    """Calls being served right now and the most at once, per method: lets a test prove that a client
    had several requests in flight together by counting at the server, not by timing (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now: Counter[str] = Counter()
        self._peak: Counter[str] = Counter()

    @contextlib.contextmanager
    def serving(self, method: str) -> Iterator[None]:
        with self._lock:
            self._now[method] += 1
            self._peak[method] = max(self._peak[method], self._now[method])
        try:
            yield
        finally:
            with self._lock:
                self._now[method] -= 1

    def peak(self, method: str) -> int:
        """The most calls of ``method`` served at the same time since the server was made (or reset)."""
        with self._lock:
            return self._peak[method]

    def reset(self) -> None:
        with self._lock:
            self._peak = Counter(self._now)

"""Event ranges Harvester fed, decoded from the feed files only as rank 0 leases them.

A feed (``JobsEventRanges.json``, ``{PandaID: [range, ...]}``) is taken aside, then checked whole in
one pass that holds one range at a time: a malformed feed is refused with the same one-line error
as when it was parsed whole, and none of its ranges is used.  What the pass keeps is where each
job's list starts in the file and how many ranges it holds; a lease decodes the next ranges from
there.  So rank 0 holds, per job, an open file and one chunk of it, never the feed: a million
ranges waiting cost what a few hundred do.
"""

from __future__ import annotations

import logging
from collections import deque
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

from hpcpilot.harvester.files import unreadable
from hpcpilot.harvester.jsonstream import Cursor, JsonError, NotAnObject, Section, list_items, scan

log = logging.getLogger(__name__)


def scan_feed(path: Path, what: str) -> list[Section]:
    """Where each job's ranges are in a feed; ConfigError (one line naming the file) if it is not usable."""
    try:
        with path.open("rb") as handle:
            return scan(handle)
    except (OSError, JsonError, NotAnObject, UnicodeDecodeError) as exc:
        raise unreadable(path, what, exc) from None


class FeedList:
    """The ranges of one job's list in one feed file that are not leased yet."""

    def __init__(self, path: Path, offset: int, count: int) -> None:
        self.path, self.offset, self.left = path, offset, count
        self.handle: BinaryIO | None = None
        self.cursor: Cursor | None = None
        self.items: Any = None

    def take(self, n: int) -> list[Any]:
        """Up to ``n`` ranges, in file order; the file is opened at the first and closed after the last."""
        if self.items is None:
            self.handle = self.path.open("rb")
            self.cursor = Cursor(self.handle, self.offset)
            self.items = list_items(self.cursor)
        try:
            taken = list(islice(self.items, min(n, self.left)))
        except (OSError, ValueError) as exc:  # the file changed after it was checked: what is left is lost
            log.error("%s: cannot read on (%s); its %d remaining range(s) are not used", self.path, exc, self.left)
            taken, self.left = [], 0
        self.left = 0 if not taken and n > 0 else self.left - len(taken)
        if self.left <= 0:
            self.close()
        return taken

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        self.handle, self.cursor, self.items = None, None, None


class RangeStock:
    """One job's ranges in hand: the lists of the feeds it got, in the order they came (a deque)."""

    def __init__(self) -> None:
        self.lists: deque[FeedList] = deque()
        self.count = 0

    def add(self, feed_list: FeedList) -> None:
        self.lists.append(feed_list)
        self.count += feed_list.left

    def take(self, n: int) -> list[Any]:
        """Up to ``n`` ranges, the oldest feed first; costs what it takes."""
        taken: list[Any] = []
        while self.lists and len(taken) < n:
            head = self.lists[0]
            before = head.left
            taken += head.take(n - len(taken))
            self.count -= before - head.left
            if head.left <= 0:
                self.lists.popleft()
        return taken

    def close(self) -> None:
        while self.lists:
            self.lists.popleft().close()
        self.count = 0

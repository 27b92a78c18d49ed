"""The latest committed change-log entries, in memory, as replication wire text.

The active's replication senders read what was just committed from here instead of from SQLite:
no worker-thread hop and no JSON decode/encode per entry on the path of every synchronous write.
Only a contiguous run of committed entries is held, bounded by count and by bytes (a job-log
append carries up to 1 MiB of data); anything older or larger comes from the database.
"""
from __future__ import annotations

import itertools
from collections import deque

KEEP = 4096  # entries at most
KEEP_BYTES = 32 << 20  # of wire text at most
BIG = 256 << 10  # an entry this large is not held (nor, for contiguity, anything before it)


class RecentLog:
    def __init__(self, keep: int = KEEP, keep_bytes: int = KEEP_BYTES, big: int = BIG):
        self.keep, self.keep_bytes, self.big = keep, keep_bytes, big
        self._items: deque[tuple[int, str]] = deque()
        self._bytes = 0

    def remember(self, seqs_and_texts: list[tuple[int, str]]) -> None:
        """Entries just committed, in seq order, right after the ones held (else start over)."""
        if not seqs_and_texts:
            return
        if self._items and seqs_and_texts[0][0] != self._items[-1][0] + 1:
            self.clear()
        for seq, text in seqs_and_texts:
            if len(text) > self.big:  # senders read it, and what came before, from the database
                self.clear()
                continue
            self._items.append((seq, text))
            self._bytes += len(text)
        while self._items and (len(self._items) > self.keep or self._bytes > self.keep_bytes):
            self._bytes -= len(self._items.popleft()[1])

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def after(self, seq: int, limit: int, oldest_kept: int | None = None) -> list | None:
        """(seq, text) of the entries after `seq`, up to `limit`; None when they are not all
        held here (ask the database). `oldest_kept`: the first seq the database still holds
        (the log's retention applies here too)."""
        items = self._items
        if not items or items[0][0] > seq + 1:
            return None
        if oldest_kept is not None and seq + 1 < oldest_kept:
            return None
        start = seq + 1 - items[0][0]
        after = len(items) - start  # how many are held after seq
        if after <= 0:
            return []
        if after <= start:  # nearer the end (a sender keeping up): walk in from the right
            tail = list(itertools.islice(reversed(items), after))
            tail.reverse()
            return tail[:limit]
        return list(itertools.islice(items, start, start + limit))

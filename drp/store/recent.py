"""The latest committed change-log entries, in memory, as replication wire text.

The active's replication senders read what was just committed from here instead of from SQLite:
no worker-thread hop and no JSON decode/encode per entry on the path of every synchronous write.
Only a contiguous run of committed entries is held; anything older comes from the database.
"""
from __future__ import annotations

import itertools
from collections import deque

KEEP = 4096  # entries


class RecentLog:
    def __init__(self, keep: int = KEEP):
        self._items: deque[tuple[int, str]] = deque(maxlen=keep)

    def remember(self, seqs_and_texts: list[tuple[int, str]]) -> None:
        """Entries just committed, in seq order, right after the ones held (else start over)."""
        if not seqs_and_texts:
            return
        if self._items and seqs_and_texts[0][0] != self._items[-1][0] + 1:
            self._items.clear()
        self._items.extend(seqs_and_texts)

    def clear(self) -> None:
        self._items.clear()

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
        return list(itertools.islice(items, start, start + limit))

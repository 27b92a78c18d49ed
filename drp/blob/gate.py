"""Pairs a blob's bytes with its recorded size/sha256 for readers.

A writer renames the new bytes into place inside the store's writer and the blobs row changes
when that transaction commits, a moment later. A reader that read the row, then opened the file,
could pair the old row with the new bytes (a wrong ETag). Every put/delete of a blob path runs
inside `gate.writing(path)`; a reader takes `stamp(path)` before reading the row and again after
opening the file, and retries when a write overlapped.
"""
from __future__ import annotations

import itertools
import weakref
from contextlib import contextmanager

import trio

_gates: "weakref.WeakKeyDictionary[object, BlobGate]" = weakref.WeakKeyDictionary()


class BlobGate:
    def __init__(self):
        self._busy: dict[str, int] = {}
        self._last: dict[str, int] = {}  # path -> tick of its latest begin or end
        self._ticks = itertools.count(1)

    @contextmanager
    def writing(self, path: str):
        self._busy[path] = self._busy.get(path, 0) + 1
        self._last[path] = next(self._ticks)
        try:
            yield
        finally:
            self._last[path] = next(self._ticks)
            left = self._busy[path] - 1
            if left:
                self._busy[path] = left
            else:
                del self._busy[path]

    def stamp(self, path: str) -> int | None:
        """None while a write of `path` is in progress, else a value that changes with each one."""
        return None if path in self._busy else self._last.get(path, 0)

    async def stable(self, path: str, read):
        """Run `await read()` until no write of `path` overlapped it; returns its result.
        `read` may return an object with a close() method, closed when a retry discards it."""
        while True:
            before = self.stamp(path)
            if before is None:
                await trio.sleep(0.005)
                continue
            result = await read()
            if self.stamp(path) == before:
                return result
            close = getattr(result, "close", None)
            if close is not None:
                close()


def gate_for(store) -> BlobGate:
    """The gate of one store (one per node process)."""
    gate = _gates.get(store)
    if gate is None:
        gate = _gates[store] = BlobGate()
    return gate

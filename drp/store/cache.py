"""Recently read objects as their stored JSON text, so a GET of a hot object needs neither a
worker-thread hop nor a JSON decode/encode (dr-provision itself serves every object from memory).

Kept exact by the store: every committed change drops its (kind, key) before the write returns;
a content bundle or a snapshot install drops everything. A read that overlapped any commit is
not cached (it may have read the row just before the commit). Bounded by the bytes held (LRU).
"""
from __future__ import annotations

from collections import OrderedDict

LIMIT = 32 << 20  # bytes of JSON text


class ObjectCache:
    def __init__(self, limit: int = LIMIT):
        self.limit = limit
        self._items: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._size = 0
        self.generation = 0  # moves with every commit: a read that saw it move is not kept

    def get(self, kind: str, key: str) -> str | None:
        text = self._items.get((kind, key))
        if text is not None:
            self._items.move_to_end((kind, key))
        return text

    def put(self, kind: str, key: str, text: str, generation: int) -> None:
        if generation != self.generation or len(text) > self.limit // 64:
            return
        old = self._items.pop((kind, key), None)
        if old is not None:
            self._size -= len(old)
        self._items[(kind, key)] = text
        self._size += len(text)
        while self._size > self.limit:
            _, dropped = self._items.popitem(last=False)
            self._size -= len(dropped)

    def committed(self, changes: list[dict]) -> None:
        self.generation += 1
        for change in changes:
            if change["kind"] == "contents":
                self.clear()
                return
            old = self._items.pop((change["kind"], change["key"]), None)
            if old is not None:
                self._size -= len(old)

    def clear(self) -> None:
        self.generation += 1
        self._items.clear()
        self._size = 0

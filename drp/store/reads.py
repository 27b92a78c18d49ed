"""The store's reads, each one worker-thread hop on a per-thread reader connection (Store.read):
objects, blobs, counts, the change log and the epoch history."""
from __future__ import annotations

import json
import sqlite3
from typing import Any, Callable

from drp.store import queries
from drp.store.apply import row_entry
from drp.store.wire import entry_text
from drp.store.cache import ObjectCache
from drp.store.filters import ListQuery, from_filters, order_by
from drp.store.filters import where as filters_where
from drp.store.recent import RecentLog


class StoreReads:
    """Mixed into Store, which provides read(), the cache, the recent log and the head."""
    cache: ObjectCache
    recent: RecentLog
    head: int
    retention: int

    async def read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        raise NotImplementedError

    def version(self, kind: str) -> tuple[int, int]:
        raise NotImplementedError

    async def get(self, kind: str, key: str) -> dict | None:
        text = await self.get_json(kind, key)
        return None if text is None else json.loads(text)

    async def get_json(self, kind: str, key: str) -> str | None:
        """The object as stored (JSON text), from the cache of recently read objects when
        it is there."""
        text = self.cache.get(kind, key)
        if text is not None:
            return text
        generation = self.cache.generation
        row = await self.read(lambda conn: conn.execute(
            "SELECT body FROM objects WHERE kind=? AND key=?", (kind, key)).fetchone())
        if row is None:
            return None
        self.cache.put(kind, key, row[0], generation)
        return row[0]

    async def list(self, kind: str, filters: dict[str, str] | ListQuery | None = None,
                   offset: int = 0, limit: int = -1) -> list[dict]:
        """The objects of kind a list query selects, in its order (filters: {Field: value}
        or a ListQuery; filters.FilterError for one dr-provision refuses)."""
        return (await self.list_page(kind, from_filters(kind, filters, offset, limit)))[0]

    async def list_page(self, kind: str, q: ListQuery, *, bodies: bool = True,
                        paged: bool = True) -> tuple[list[dict], int, int]:
        """(the page of objects, how many match the tests, how many of kind there are), from
        one read. bodies=False counts only; paged=False returns every match, unpaged."""
        terms, values = filters_where(kind, q)
        order, order_values = order_by(kind, q)
        match_sql = f"FROM objects WHERE kind=? {terms}"
        # The kind's count is kept until a commit changes the kind (Store.version): counting
        # a big kind costs more than an indexed lookup (0.3 ms per 10k objects).
        totals = self.__dict__.setdefault("_kind_totals", {})
        version = self.version(kind)
        known = totals.get(kind)
        known_total = known[1] if known is not None and known[0] == version else None

        def page(conn):
            conn.execute("BEGIN")  # the counts and the rows from one snapshot
            try:
                return counted(conn)
            finally:
                conn.execute("COMMIT")

        def counted(conn):
            total = known_total if known_total is not None else conn.execute(
                "SELECT COUNT(*) FROM objects WHERE kind=?", (kind,)).fetchone()[0]
            rows = []
            if bodies:
                sql = f"SELECT body {match_sql} {order}" + (" LIMIT ? OFFSET ?" if paged else "")
                extra = [q.limit, max(q.offset, 0)] if paged else []
                rows = conn.execute(sql, [kind, *values, *order_values, *extra]).fetchall()
            if not terms:
                matched = total
            elif bodies and (not paged or q.offset <= 0 and q.limit < 0):
                matched = len(rows)  # every match is here: no second scan to count them
            else:
                matched = conn.execute(f"SELECT COUNT(*) {match_sql}",
                                       [kind, *values]).fetchone()[0]
            return rows, matched, total
        rows, matched, total = await self.read(page)
        if self.version(kind) == version:  # no commit meanwhile: the count is current
            totals[kind] = (version, total)
        return [json.loads(r[0]) for r in rows], matched, total

    async def blob(self, path: str) -> dict | None:
        """The blobs row of path: {path, size, sha256, mode, time}, or None."""
        return await self.read(lambda conn: queries.blob(conn, path))

    async def blobs(self, prefix: str | None = None) -> list[dict]:
        """Every blobs row (under prefix, when given), by path."""
        return await self.read(lambda conn: queries.blobs(conn, prefix))

    async def kind_counts(self) -> dict[str, int]:
        return await self.read(queries.kind_counts)

    async def has_any(self, *kinds: str) -> bool:
        return await self.read(lambda conn: queries.has_any(conn, *kinds))

    async def content_bundle(self, name: str) -> tuple[dict, list[tuple[str, str, str]]] | None:
        """(record, [(kind, key, body as stored)]) of content bundle name, or None."""
        return await self.read(lambda conn: queries.content_bundle(conn, name))

    async def wire_after(self, seq: int, limit: int = 1000) -> list[tuple[int, str]]:
        """(seq, replication wire text) of the entries after seq: from memory when they were
        just committed, else from the database."""
        held = self.recent.after(seq, limit, oldest_kept=self.head - self.retention + 1)
        if held is not None:
            return held

        def q(conn):
            rows = conn.execute("SELECT * FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                                (seq, limit)).fetchall()
            return [(r[0], entry_text(r)) for r in rows]
        return await self.read(q)

    async def entries_after(self, seq: int, limit: int = 1000) -> list[dict]:
        rows = await self.read(lambda c: c.execute(
            "SELECT * FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)).fetchall())
        return [row_entry(r) for r in rows]

    async def oldest_seq(self) -> int:
        return await self.read(
            lambda c: c.execute("SELECT COALESCE(MIN(seq), 0) FROM changes").fetchone()[0])

    async def history(self) -> list[tuple[int, int, str]]:
        rows = await self.read(lambda c: c.execute(
            "SELECT epoch, start_seq, drp_id FROM epochs ORDER BY epoch").fetchall())
        return [tuple(r) for r in rows]

    async def last_entry_epoch(self) -> int:
        return await self.read(lambda c: (c.execute(
            "SELECT epoch FROM changes ORDER BY seq DESC LIMIT 1").fetchone() or (0,))[0])

"""Repair, when a store opens, stored JSON that SQLite's json functions cannot read.

Versions before strict JSON at the door (drp.api.jsonbody) stored NaN/Infinity (SQLite: json_valid
= 0, and json_extract over the kind fails with "malformed JSON" for EVERY row's query). Such a
body is re-encoded as standard JSON: NaN/±Infinity -> null (and a lone surrogate, "\\ud800",
-> U+FFFD). A body that is not JSON at all is moved to the `quarantine` table (kind, key, body,
reason), out of every query.
Bodies in the change log are repaired the same way, so a replica replaying the log (or a client
reading the events) never gets the old text back.

A local fix at open, not a replicated change: the repair is a pure function of the stored text,
so every node (active or passive, whatever its role will be) that holds the same row makes the
same repaired row, and the replicas stay identical without a change-log entry. A replicated
update could not be written here anyway (the role and the epoch are not known yet, a passive may
not write), and until it replicated, a passive would keep failing on the bad row. The seq and
positions are untouched; a snapshot taken later carries the repaired rows.
"""
from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import time

from drp.store.apply import put_object
from drp.store.tx import rollback_open

log = logging.getLogger("drp.store")

MAX_LOGGED = 100  # one WARNING per repaired row up to this many, then one summary line
_SURROGATE = re.compile("[\ud800-\udfff]")
# The rows to repair: those SQLite cannot read (they fail json_extract for the whole kind).
# A lone surrogate alone leaves a body valid to SQLite and harms no query (only a client that
# reads that field sees it), so rows are not searched for one (that doubles the cost of the
# scan: about 0.1 s per 70 MB of bodies); a row repaired anyway loses its lone surrogates too.
_CANDIDATES = "NOT json_valid(body)"


def _clean(value):
    """value with non-finite floats -> None and lone surrogates -> U+FFFD (no recursion)."""
    def fix(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, str):
            return _SURROGATE.sub("\ufffd", v)
        return v
    root = [fix(value)]
    stack = [root]
    while stack:
        container = stack.pop()
        if isinstance(container, dict):
            fixed = {fix(k): fix(v) for k, v in container.items()}
            container.clear()
            container.update(fixed)
            stack.extend(v for v in container.values() if isinstance(v, (dict, list)))
        elif isinstance(container, list):
            container[:] = [fix(v) for v in container]
            stack.extend(v for v in container if isinstance(v, (dict, list)))
    return root[0]


def repaired_text(body: str) -> str | None:
    """The standard-JSON text for a stored body, or None when it is not JSON at all (even to
    Python's lenient parser)."""
    try:
        obj = json.loads(body)  # lenient: NaN, Infinity and lone surrogates parse
    except (ValueError, RecursionError):
        return None
    return json.dumps(_clean(obj), allow_nan=False)


class _Reporter:
    def __init__(self):
        self.count = 0

    def __call__(self, fmt: str, *args) -> None:
        self.count += 1
        if self.count <= MAX_LOGGED:
            log.warning(fmt, *args)

    def summary(self) -> None:
        if self.count > MAX_LOGGED:
            log.warning("repaired or quarantined %d stored rows in all (%d not logged one "
                        "by one)", self.count, self.count - MAX_LOGGED)


def _repair_objects(conn: sqlite3.Connection, report: _Reporter) -> None:
    rows = conn.execute(f"SELECT kind, key, body FROM objects WHERE {_CANDIDATES}").fetchall()
    for kind, key, body in rows:
        text = repaired_text(body)
        if text is None:
            conn.execute("INSERT OR REPLACE INTO quarantine VALUES (?,?,?,?,?)",
                         (kind, key, body, "stored body is not JSON", time.time()))
            conn.execute("DELETE FROM objects WHERE kind=? AND key=?", (kind, key))
            report("%s %s: stored body is not JSON; moved to the quarantine table, out of "
                   "every query", kind, key)
            continue
        put_object(conn, kind, key, json.loads(text), text)
        report("%s %s: stored body was not standard JSON (NaN or "
               "Infinity); repaired (NaN/Infinity -> null)", kind, key)


def _repair_changes(conn: sqlite3.Connection, report: _Reporter) -> None:
    rows = conn.execute(f"SELECT seq, kind, key, body FROM changes "
                        f"WHERE body IS NOT NULL AND {_CANDIDATES}").fetchall()
    for seq, kind, key, body in rows:
        text = repaired_text(body)
        if text is None:  # no drp writes such text; any stand-in would make replicas differ
            report("change-log entry %d (%s %s): body is not JSON and cannot be repaired; a "
                   "passive that replays it will fail (give it a full catch-up)", seq, kind, key)
            continue
        conn.execute("UPDATE changes SET body=? WHERE seq=?", (text, seq))
        report("change-log entry %d (%s %s): body was not standard JSON; repaired", seq, kind,
               key)


def repair(conn: sqlite3.Connection) -> None:
    """Repair the objects and changes tables (see the module doc), in one transaction. Run at
    every open: the scan costs ~0.1 s per 140 MB of bodies."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"objects", "changes", "quarantine"} <= tables:
        return
    report = _Reporter()
    conn.execute("BEGIN IMMEDIATE")
    try:
        _repair_objects(conn, report)
        _repair_changes(conn, report)
        conn.execute("COMMIT")
    except BaseException:
        rollback_open(conn)
        raise
    report.summary()

"""What one synchronous write cannot go below on this stack and machine, measured in the run.

A passive acknowledges an entry once it is durable, so every synchronous write pays at least one
websocket round trip (an active on hypercorn with TLS, a passive on trio-websocket: the
replication transport, here between two processes doing nothing else) and one commit's fsync on
the passive. The replication benchmark reports both beside the latency it measures.
"""
from __future__ import annotations

import sqlite3
import statistics
import time
from pathlib import Path

import trio
import trio_websocket

from drp.ha.bulkget import pinned_context

ACK = '{"type":"ack","seq":123456}'  # the size of a real ack


def websocket_round_trip_ms(port: int, count: int = 2000) -> dict:
    """p50/mean of `count` round trips of an ack-sized message to the bare app's /echo."""
    async def run() -> list[float]:
        lat = []
        async with trio_websocket.open_websocket_url(f"wss://127.0.0.1:{port}/echo",
                                                     pinned_context()) as ws:
            for i in range(count + 100):
                began = time.perf_counter()
                await ws.send_message(ACK)
                await ws.get_message()
                if i >= 100:  # after warming up
                    lat.append((time.perf_counter() - began) * 1000)
        return lat
    lat = trio.run(run)
    return {"p50_ms": round(statistics.median(lat), 3), "mean_ms": round(statistics.mean(lat), 3)}


def commit_fsync_ms(workdir: Path, count: int = 400) -> float:
    """Median extra time of a synchronous=FULL SQLite commit (WAL mode) over one that leaves
    the flush to the OS, both writing one object-sized row: what a durable apply adds."""
    db = workdir / "fsync-probe.db"
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        medians = {}
        for mode in ("NORMAL", "FULL", "NORMAL", "FULL"):  # alternated: noise hits both
            conn.execute(f"PRAGMA synchronous={mode}")
            took = []
            for i in range(count // 4):
                began = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (i % 50, "x" * 300))
                conn.execute("COMMIT")
                took.append(time.perf_counter() - began)
            medians.setdefault(mode, []).append(statistics.median(took))
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    return round((statistics.mean(medians["FULL"]) - statistics.mean(medians["NORMAL"])) * 1000,
                 3)

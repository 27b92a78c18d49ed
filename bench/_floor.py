"""What one synchronous write cannot go below on this stack and machine, measured in the run.

Every synchronous write pays at least one websocket round trip to the passive (an active on
hypercorn with TLS, a passive on trio-websocket: the replication transport, here between two
processes doing nothing else). The passive's durable apply adds a commit's fsync, but the
active's own fsync (which a standalone write pays too) runs meanwhile, so the two roughly cancel:
the floor of the *added* latency is the round trip. The fsync is reported beside it, for scale.
"""
from __future__ import annotations

import sqlite3
import statistics
import time
from pathlib import Path

import trio
import trio_websocket

from drp.ha.bulkget import unverified_context

ACK = '{"type":"ack","seq":123456}'  # the size of a real ack


def websocket_round_trip_ms(port: int, count: int = 2000) -> dict:
    """p50/mean of `count` round trips of an ack-sized message to the bare app's /echo."""
    async def run() -> list[float]:
        lat = []
        async with trio_websocket.open_websocket_url(f"wss://127.0.0.1:{port}/echo",
                                                     unverified_context()) as ws:
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
    the flush to the OS, both writing one object-sized row: what a durable commit costs."""
    db = workdir / "fsync-probe.db"
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        for i in range(2000):  # past a checkpoint: a running node rewrites its WAL in place
            conn.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (i % 50, "x" * 300))
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

"""Replication benchmark: synchronous replication's cost on writes, side by side in one run.

    python -m bench replication [--quick] [--seconds N] [--clients N] [--slice S]

Three real dr-provision processes on loopback: one standalone node, and an HA active with one
In-Sync passive (the same seed data). Clients (threads, keep-alive HTTPS, Bearer token) create
a profile and then patch it, over and over, for N seconds against the standalone node, then
against the active; then the same with one client, for the per-write latency synchronous
replication adds. The setups alternate in slices of ~2 s (standalone, HA, HA, standalone, ...)
so load from elsewhere on a noisy machine hits both alike. Also reported: server CPU time per
write (utime+stime), and the floor under the added latency in this run (bench/_floor.py): a
bare websocket round trip on the replication transport (and a commit's fsync, for scale).
The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench import _floor, _load
from bench.api import start_bare
from tests.drpserver import DrpServer
from tests.hacluster import Cluster, make_token, wait_in_sync


def writer_step(tag: str):
    """Even steps create profile <tag>-<client>-<n>, odd steps patch the one just made."""
    def step(conn: _load.Conn, i: int, n: int) -> None:
        name = f"{tag}-{i}-{n - n % 2}"
        if n % 2 == 0:
            body = json.dumps({"Name": name, "Params": {"n": n}}).encode()
            status, resp = conn.request("POST", "/api/v3/profiles", body)
            want = 201
        else:
            body = json.dumps([{"op": "add", "path": "/Params/patched", "value": n}]).encode()
            status, resp = conn.request("PATCH", f"/api/v3/profiles/{name}", body)
            want = 200
        if status != want:
            raise _load.HttpError(f"{status}: {resp[:200]!r}")
    return step


def measure(server: DrpServer, pids: list[int], token: str, clients: int, seconds: float,
            tag: str) -> dict:
    before = [_load.cpu_seconds(p) for p in pids]
    out = _load.run("127.0.0.1", server.api_port, {"Authorization": f"Bearer {token}"},
                    clients, seconds, writer_step(tag))
    out["cpu"] = [_load.cpu_seconds(p) - b for p, b in zip(pids, before)]
    return out


def summary(runs: list[dict]) -> dict:
    out = _load.merge(runs)
    out["cpu_ms_per_write"] = [round(sum(r["cpu"][k] for r in runs) * 1000 / max(out["ops"], 1), 3)
                               for k in range(len(runs[0]["cpu"]))]
    return out


def show(label: str, r: dict) -> None:
    print(f"{label:24s} {r['per_s']:8.1f} writes/s  p50 {r['p50_ms']:7.2f} ms  p99 "
          f"{r['p99_ms']:7.2f} ms  mean {r['mean_ms']:7.2f} ms  errors {r['errors']}  "
          f"server cpu ms/write {r['cpu_ms_per_write']}", flush=True)


def run(workdir: Path, clients: int, seconds: float, single_seconds: float,
        slice_s: float) -> dict:
    seed_root, token = make_token(workdir)
    standalone_root = workdir / "standalone"
    subprocess.run(["cp", "-a", str(seed_root), str(standalone_root)], check=True)
    standalone = DrpServer(standalone_root, ["--log-level", "warn"]).start()
    (workdir / "ha").mkdir()
    cluster = Cluster(workdir / "ha", token, seed_root)
    counter = iter(range(1_000_000))
    try:
        active = cluster.node("a", passive=False)
        passive = cluster.node("b", passive=True)
        wait_in_sync(active, token, 1)
        setups = {"standalone": (standalone, [standalone.proc.pid]),
                  "ha": (active, [active.proc.pid, passive.proc.pid])}

        def phase(name: str, n: int):
            server, pids = setups[name]
            return lambda secs: measure(server, pids, token, n, secs,
                                        f"{name}{next(counter)}c{n}")
        for name in setups:  # warm up: worker threads, their connections, caches
            phase(name, clients)(1.0)
        results = {}
        for n, secs in ((clients, seconds), (1, single_seconds)):
            got = _load.alternate({name: phase(name, n) for name in setups}, secs, slice_s)
            for name, runs in got.items():
                results[(name, n)] = runs
                show(f"{name} {n} client(s)", summary(runs))
        states = wait_in_sync(active, token, 1)
        bare, bare_port = start_bare(workdir, standalone_root / "server.crt",
                                     standalone_root / "server.key", b"{}")
        try:
            round_trip = _floor.websocket_round_trip_ms(bare_port)
        finally:
            bare.terminate()
            bare.wait(10)
        fsync_ms = _floor.commit_fsync_ms(workdir)
        print(f"floor: websocket round trip p50 {round_trip['p50_ms']:.3f} ms (mean "
              f"{round_trip['mean_ms']:.3f}); a commit's fsync {fsync_ms:.3f} ms", flush=True)
    finally:
        standalone.stop()
        cluster.stop_all()
    s16, h16 = summary(results[("standalone", clients)]), summary(results[("ha", clients)])
    s1, h1 = summary(results[("standalone", 1)]), summary(results[("ha", 1)])
    return {
        "bench": "replication", "clients": clients, "seconds_per_setup": seconds,
        "slice_s": slice_s,
        "standalone_writes_per_s": s16["per_s"], "ha_writes_per_s": h16["per_s"],
        "ratio": round(h16["per_s"] / max(s16["per_s"], 1e-9), 3),
        "ratio_median_of_slices": _load.median_ratio(results[("ha", clients)],
                                                     results[("standalone", clients)]),
        "standalone_p50_ms": s16["p50_ms"], "standalone_p99_ms": s16["p99_ms"],
        "ha_p50_ms": h16["p50_ms"], "ha_p99_ms": h16["p99_ms"],
        "single_standalone_mean_ms": s1["mean_ms"], "single_ha_mean_ms": h1["mean_ms"],
        "single_standalone_p50_ms": s1["p50_ms"], "single_ha_p50_ms": h1["p50_ms"],
        "single_added_ms": round(h1["mean_ms"] - s1["mean_ms"], 3),
        "single_added_p50_ms": round(h1["p50_ms"] - s1["p50_ms"], 3),
        "single_standalone_writes_per_s": s1["per_s"], "single_ha_writes_per_s": h1["per_s"],
        "errors": s16["errors"] + h16["errors"] + s1["errors"] + h1["errors"],
        "standalone_cpu_ms_per_write": s16["cpu_ms_per_write"][0],
        "ha_active_cpu_ms_per_write": h16["cpu_ms_per_write"][0],
        "ha_passive_cpu_ms_per_write": h16["cpu_ms_per_write"][1],
        "floor_ws_round_trip_p50_ms": round_trip["p50_ms"],
        "floor_ws_round_trip_mean_ms": round_trip["mean_ms"],
        "floor_commit_fsync_ms": fsync_ms,
        "floor_single_added_ms": round_trip["mean_ms"],
        "passive_state_at_end": states[0]["state"] if states else None,
        "target_ratio": 0.8, "target_single_added_ms": 0.5,
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench replication")
    ap.add_argument("--quick", action="store_true", help="10 s per setup with 16 clients")
    ap.add_argument("--seconds", type=float, default=None,
                    help="per setup with 16 clients (default 60; --quick 10)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--slice", type=float, default=2.0, help="seconds per alternating slice")
    ap.add_argument("--workdir", type=Path, default=None, help="keep data here (default: tmp)")
    args = ap.parse_args(argv)
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    single = max(4.0, seconds / 2)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="drp-bench-repl-", dir=args.workdir))
    else:
        workdir = Path(tempfile.mkdtemp(prefix="drp-bench-repl-"))
    try:
        result = run(workdir, args.clients, seconds, single, args.slice)
    finally:
        if not os.environ.get("DRP_BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    return 0

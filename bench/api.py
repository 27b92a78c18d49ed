"""API benchmark: object GETs per second through drp against a bare Quart-Trio app.

    python -m bench api [--quick] [--seconds N] [--clients N] [--slice S] [--objects N]

drp (standalone, 1000 profiles) serves GET /api/v3/profiles/<name> with a Bearer token; the bare
app (bench/_bare.py) answers the same requests with a constant body of the same size, on the
same hypercorn settings (drp.server.hypercorn_config, TLS with drp's certificate). The same
keep-alive client threads load each in turn, in alternating slices of ~2 s, so load from
elsewhere on a noisy machine hits both alike. Also
reported: server CPU time per GET. The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import _load
from tests.drpserver import REPO, DrpServer, clean_environ, free_port
from tests.hacluster import make_token


def load_profiles(server: DrpServer, token: str, count: int) -> list[str]:
    names = [f"api-bench-{i:06d}" for i in range(count)]
    conn = _load.Conn("127.0.0.1", server.api_port, {"Authorization": f"Bearer {token}"})
    try:
        for name in names:
            body = json.dumps({"Name": name, "Description": "benchmark profile",
                               "Params": {"bench/index": name}}).encode()
            status, resp = conn.request("POST", "/api/v3/profiles", body)
            assert status == 201, resp
    finally:
        conn.close()
    return names


def get_step(names: list[str]):
    def step(conn: _load.Conn, i: int, n: int) -> None:
        status, body = conn.request("GET", f"/api/v3/profiles/{names[(i * 7919 + n) % len(names)]}")
        if status != 200:
            raise _load.HttpError(f"{status}: {body[:200]!r}")
    return step


def start_bare(workdir: Path, cert: Path, key: Path, body: bytes) -> tuple[subprocess.Popen, int]:
    body_file = workdir / "bare-body.json"
    body_file.write_bytes(body)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench._bare", str(port), str(cert), str(key),
                             str(body_file)], cwd=REPO, env=clean_environ(),
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"the bare app did not start: {line!r}")
    return proc, port


def run(workdir: Path, clients: int, seconds: float, slice_s: float, objects: int) -> dict:
    seed_root, token = make_token(workdir)
    root = workdir / "drp"
    subprocess.run(["cp", "-a", str(seed_root), str(root)], check=True)
    server = DrpServer(root, ["--log-level", "warn"]).start()
    bare = None
    try:
        names = load_profiles(server, token, objects)
        conn = _load.Conn("127.0.0.1", server.api_port, {"Authorization": f"Bearer {token}"})
        status, sample = conn.request("GET", f"/api/v3/profiles/{names[0]}")
        conn.close()
        assert status == 200, sample
        bare, bare_port = start_bare(workdir, root / "server.crt", root / "server.key", sample)
        headers = {"Authorization": f"Bearer {token}"}
        targets = {"drp": (server.api_port, server.proc.pid), "bare": (bare_port, bare.pid)}
        random.shuffle(names)

        def phase(name: str):
            port, pid = targets[name]

            def go(secs: float) -> dict:
                cpu0 = _load.cpu_seconds(pid)
                r = _load.run("127.0.0.1", port, headers, clients, secs, get_step(names))
                r["cpu"] = _load.cpu_seconds(pid) - cpu0
                return r
            return go
        for name in targets:  # warm up: worker threads, their connections, caches
            phase(name)(1.0)
        results = _load.alternate({name: phase(name) for name in targets}, seconds, slice_s)
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(10)
        server.stop()
    out = {}
    for name, runs in results.items():
        m = _load.merge(runs)
        m["cpu_ms"] = round(sum(r["cpu"] for r in runs) * 1000 / max(m["ops"], 1), 3)
        print(f"{name:5s}: {m['per_s']:8.1f} GET/s  p50 {m['p50_ms']:.2f} ms  p99 "
              f"{m['p99_ms']:.2f} ms  errors {m['errors']}  server cpu {m['cpu_ms']} ms/GET",
              flush=True)
        out[name] = m
    drp, bare_m = out["drp"], out["bare"]
    return {"bench": "api", "clients": clients, "seconds_per_side": seconds, "slice_s": slice_s,
            "objects": objects, "drp_get_per_s": drp["per_s"], "bare_get_per_s": bare_m["per_s"],
            "ratio": round(drp["per_s"] / max(bare_m["per_s"], 1e-9), 3),
            "ratio_median_of_slices": _load.median_ratio(results["drp"], results["bare"]),
            "drp_p50_ms": drp["p50_ms"], "bare_p50_ms": bare_m["p50_ms"],
            "drp_p99_ms": drp["p99_ms"], "bare_p99_ms": bare_m["p99_ms"],
            "drp_cpu_ms_per_get": drp["cpu_ms"], "bare_cpu_ms_per_get": bare_m["cpu_ms"],
            "errors": drp["errors"] + bare_m["errors"], "target_ratio": 0.8}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench api")
    ap.add_argument("--quick", action="store_true", help="12 s per side")
    ap.add_argument("--seconds", type=float, default=None, help="per side (default 60)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--slice", type=float, default=2.0, help="seconds per alternating slice")
    ap.add_argument("--objects", type=int, default=1000)
    args = ap.parse_args(argv)
    seconds = args.seconds or (12.0 if args.quick else 60.0)
    workdir = Path(tempfile.mkdtemp(prefix="drp-bench-api-"))
    try:
        result = run(workdir, args.clients, seconds, args.slice, args.objects)
    finally:
        if not os.environ.get("DRP_BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    return 0

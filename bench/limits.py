"""Input bounds benchmark: what an oversized or amplifying request costs a real dr-provision.

    python -m bench limits [--big-mib N] [--append-mib N] [--appends N] [--copies N] [ARGS...]

Each probe runs against a fresh server (so its peak RSS, VmHWM, is its own), started with
ARGS (e.g. --max-object-size 1GiB to see the unbounded behaviour):
- big_post: POST /machines with one N MiB JSON body (Content-Length), then the same chunked;
  seconds until the answer and the server's peak RSS over its RSS at start.
- doubling_patch: a JSON Patch of N `copy` ops, each doubling an array; its seconds, and the
  slowest of the profile creates another client makes meanwhile (the writer blocked or not).
- log_appends: N concurrent job-log appends of M MiB each, to N jobs; seconds, answers and
  the server's peak RSS over its RSS at start.
The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

from bench import _load
from tests.drpserver import DrpServer

MIB = 1 << 20
TIMEOUT = httpx.Timeout(300, connect=10)


def _server(root: Path, args: list[str]) -> DrpServer:
    return DrpServer(root, ["--log-level", "warn", *args]).start()


def _peak_mib(server: DrpServer, start_kib: int) -> float:
    return round((_load.status_kib(server.proc.pid, "VmHWM") - start_kib) / 1024, 1)


def _post(api: httpx.Client, body: bytes, chunked: bool) -> tuple[int, float]:
    content = (body[i:i + MIB] for i in range(0, len(body), MIB)) if chunked else body
    t0 = time.perf_counter()
    try:
        status = api.post("/machines", content=content,
                          headers={"Content-Type": "application/json"}).status_code
    except httpx.HTTPError as e:  # the server answered early and closed: as a client sees it
        status = type(e).__name__
    return status, round(time.perf_counter() - t0, 2)


def big_post(root: Path, args: list[str], mib: int) -> dict:
    body = b'{"Name": "big", "Params": {"x": "' + b"a" * (mib * MIB) + b'"}}'
    out = {"mib": mib}
    for chunked in (False, True):
        server = _server(root / f"big-{chunked}", args)
        try:
            start = _load.status_kib(server.proc.pid, "VmRSS")
            with server.client(timeout=TIMEOUT) as api:
                status, seconds = _post(api, body, chunked)
            name = "chunked" if chunked else "content_length"
            out[name] = {"status": status, "seconds": seconds,
                         "peak_rss_over_start_mib": _peak_mib(server, start)}
        finally:
            server.stop()
    return out


def doubling_patch(root: Path, args: list[str], copies: int) -> dict:
    server = _server(root / "patch", args)
    try:
        with server.client(timeout=TIMEOUT) as api:
            m = api.post("/machines", json={"Name": "double", "Params": {"a": [0]}}).json()
            ops = [{"op": "copy", "from": "/Params/a", "path": "/Params/a/-"}] * copies
            done = threading.Event()
            slowest = [0.0]

            def writer() -> None:
                with server.client(timeout=TIMEOUT) as w:
                    i = 0
                    while not done.is_set():
                        t0 = time.perf_counter()
                        w.post("/profiles", json={"Name": f"p{i}"}).raise_for_status()
                        slowest[0] = max(slowest[0], time.perf_counter() - t0)
                        i += 1
                        time.sleep(0.02)
            t = threading.Thread(target=writer)
            t.start()
            time.sleep(0.3)
            t0 = time.perf_counter()
            status = api.patch(f"/machines/{m['Uuid']}", json=ops).status_code
            seconds = time.perf_counter() - t0
            time.sleep(0.3)
            done.set()
            t.join()
    finally:
        server.stop()
    return {"copies": copies, "status": status, "seconds": round(seconds, 3),
            "slowest_other_write_s": round(slowest[0], 3)}


def log_appends(root: Path, args: list[str], n: int, mib: int) -> dict:
    server = _server(root / "logs", args)
    try:
        with server.client(timeout=TIMEOUT) as api:
            jobs = [api.post("/jobs", json={"Machine": str(uuid.uuid4())}).json()["Uuid"]
                    for _ in range(n)]
        start = _load.status_kib(server.proc.pid, "VmRSS")
        data = b"log line\n" * (mib * MIB // 9)
        answers: list = []

        def append(job: str) -> None:
            with server.client(timeout=TIMEOUT) as c:
                try:
                    r = c.put(f"/jobs/{job}/log", content=data,
                              headers={"Content-Type": "application/octet-stream"})
                    answers.append(r.status_code)
                except httpx.HTTPError as e:
                    answers.append(type(e).__name__)
        threads = [threading.Thread(target=append, args=(j,)) for j in jobs]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        peak = _peak_mib(server, start)
    finally:
        server.stop()
    return {"appends": n, "mib": mib, "answers": sorted(answers, key=str),
            "seconds": round(seconds, 2), "peak_rss_over_start_mib": peak}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench limits")
    ap.add_argument("--big-mib", type=int, default=200)
    ap.add_argument("--append-mib", type=int, default=60)
    ap.add_argument("--appends", type=int, default=8)
    ap.add_argument("--copies", type=int, default=22)
    ap.add_argument("--only", choices=("big_post", "doubling_patch", "log_appends"))
    args, server_args = ap.parse_known_args(argv)
    result: dict = {"bench": "limits", "server_args": server_args}
    with tempfile.TemporaryDirectory(prefix="drp-bench-") as tmp:
        tmp = Path(tmp)
        if args.only in (None, "big_post"):
            result["big_post"] = big_post(tmp, server_args, args.big_mib)
            print("big_post", result["big_post"], flush=True)
        if args.only in (None, "doubling_patch"):
            result["doubling_patch"] = doubling_patch(tmp, server_args, args.copies)
            print("doubling_patch", result["doubling_patch"], flush=True)
        if args.only in (None, "log_appends"):
            result["log_appends"] = log_appends(tmp, server_args, args.appends,
                                                args.append_mib)
            print("log_appends", result["log_appends"], flush=True)
    print(json.dumps(result))
    return 0

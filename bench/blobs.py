"""Blob transfer benchmark: upload and download one big file through a real dr-provision.

    python -m bench blobs [--quick] [--size-mib N]

Uploads a 1 GiB file (--quick: 256 MiB) to /api/v3/isos over HTTPS, downloads it back over
HTTPS and from the static file server (plain HTTP), and reports MB/s (10^6 bytes/s) and the
server's peak RSS (VmHWM). Then 4 keep-alive clients GET one 4 KiB file (a boot script's size)
through the API and from the static server, in 3 alternating slices of a few seconds: the
median GETs/s and server CPU per GET. The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import ssl
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench import _load
from tests.drpserver import AUTH, DrpServer

CHUNK = 1 << 20


def make_source(path: Path, size: int) -> str:
    """A file of `size` bytes (a random 1 MiB block repeated); returns its sha256."""
    block = os.urandom(CHUNK)
    hasher = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            piece = block[:min(left, CHUNK)]
            f.write(piece)
            hasher.update(piece)
            left -= len(piece)
    return hasher.hexdigest()


def _chunks(path: Path):
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def upload(client: httpx.Client, url: str, path: Path) -> tuple[float, dict]:
    size = path.stat().st_size
    t0 = time.perf_counter()
    resp = client.post(url, content=_chunks(path), headers={
        "Content-Type": "application/octet-stream", "Content-Length": str(size)})
    elapsed = time.perf_counter() - t0
    resp.raise_for_status()
    return elapsed, resp.json()


def download(client: httpx.Client, url: str) -> tuple[float, int, str]:
    got = 0
    t0 = time.perf_counter()
    with client.stream("GET", url) as resp:
        resp.raise_for_status()
        for chunk in resp.iter_raw(CHUNK):
            got += len(chunk)
        etag = resp.headers.get("X-DRP-SHA256SUM", "")
    return time.perf_counter() - t0, got, etag


def small_gets(server: DrpServer, tls: bool, url: str, seconds: float,
               clients: int = 4) -> tuple[float, float]:
    """(GETs/s, server CPU ms per GET) of `clients` keep-alive clients GETting url."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    headers = {"Authorization": "Basic " + base64.b64encode(":".join(AUTH).encode()).decode()}
    done: list[int] = []
    deadline = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPSConnection("127.0.0.1", server.api_port, context=ctx) if tls \
            else http.client.HTTPConnection("127.0.0.1", server.static_port)
        n = 0
        try:
            while time.monotonic() < deadline:
                conn.request("GET", url, headers=headers if tls else {})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET {url}: {resp.status}")
                n += 1
        finally:
            conn.close()
            done.append(n)
    cpu0, t0 = _load.cpu_seconds(server.proc.pid), time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took, gets = time.perf_counter() - t0, sum(done)
    return gets / took, 1000 * (_load.cpu_seconds(server.proc.pid) - cpu0) / max(gets, 1)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench blobs")
    ap.add_argument("--quick", action="store_true", help="256 MiB instead of 1 GiB")
    ap.add_argument("--size-mib", type=int, default=None)
    args = ap.parse_args(argv)
    size = (args.size_mib or (256 if args.quick else 1024)) * CHUNK
    with tempfile.TemporaryDirectory(prefix="drp-bench-") as tmp:
        tmp = Path(tmp)
        src = tmp / "src.iso"
        sha = make_source(src, size)
        server = DrpServer(tmp / "root", ["--log-level", "warn"]).start()
        try:
            pid = server.proc.pid
            rss_start = _load.status_kib(pid, "VmRSS")
            timeout = httpx.Timeout(60, read=None, write=None)
            with server.client(timeout=timeout) as api:
                up_s, info = upload(api, "/isos/bench.iso", src)
                assert info["Sha256"] == sha and info["Size"] == size, info
                down_s, got, etag = download(api, "/isos/bench.iso")
                assert got == size and etag == sha, (got, etag)
            static = httpx.Client(base_url=f"http://127.0.0.1:{server.static_port}",
                                  timeout=timeout)
            with static:
                static_s, sgot, setag = download(static, "/isos/bench.iso")
                assert sgot == size and setag == sha, (sgot, setag)
            peak = _load.status_kib(pid, "VmHWM")
            with server.client() as api:
                api.post("/files/boot/small.ipxe", content=os.urandom(4096)).raise_for_status()
            seconds = 1.5 if args.quick else 4
            api_runs, static_runs = [], []
            for _ in range(3):  # alternating slices, medians: a noisy moment hits both alike
                api_runs.append(small_gets(server, True, "/api/v3/files/boot/small.ipxe",
                                           seconds))
                static_runs.append(small_gets(server, False, "/files/boot/small.ipxe", seconds))
            api_rate, api_cpu = (statistics.median(r[i] for r in api_runs) for i in (0, 1))
            static_rate, static_cpu = (statistics.median(r[i] for r in static_runs)
                                       for i in (0, 1))
        finally:
            server.stop()
    mb = size / 1e6
    result = {
        "bench": "blobs", "size_mib": size // CHUNK,
        "upload_mb_s": round(mb / up_s, 1),
        "download_mb_s": round(mb / down_s, 1),
        "static_download_mb_s": round(mb / static_s, 1),
        "server_rss_start_mib": round(rss_start / 1024, 1),
        "server_peak_rss_mib": round(peak / 1024, 1),
        "small_get_per_s": round(api_rate, 1), "small_get_cpu_ms": round(api_cpu, 2),
        "static_small_get_per_s": round(static_rate, 1),
        "static_small_get_cpu_ms": round(static_cpu, 2),
    }
    print(f"upload {result['upload_mb_s']} MB/s, download (HTTPS API) "
          f"{result['download_mb_s']} MB/s, download (static HTTP) "
          f"{result['static_download_mb_s']} MB/s; server RSS {result['server_rss_start_mib']} "
          f"MiB at start, peak {result['server_peak_rss_mib']} MiB")
    print(f"4 KiB file, 4 clients: {result['small_get_per_s']} GETs/s through the API "
          f"({result['small_get_cpu_ms']} ms server CPU each), "
          f"{result['static_small_get_per_s']} GETs/s from the static server "
          f"({result['static_small_get_cpu_ms']} ms each)")
    print(json.dumps(result))
    return 0

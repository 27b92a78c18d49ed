"""Catch-up benchmark: a fresh passive joins an active holding ~1 GiB of files and 100k objects.

    python -m bench catchup [--quick] [--mib N] [--objects N]

The active (HA, --ha-log-retention 10, so the passive must take the full catch-up: snapshot +
blobs over HTTPS) is loaded with ISOs and files (--quick: 256 MiB) and objects (--quick: 10k;
loaded as content bundles plus a few thousand concurrent POSTs, not timed). Then a fresh
passive joins; from its log: the bytes it fetched and how long the catch-up took, and how long
the objects took (snapshot download + install); --joins fresh passives join one after another
(the median join against the median raw copy is reported). In the same run, before and after each join, a
plain socket copy of the
same bytes (the active's blob files and a file the size of the snapshot) over loopback, from a
Python sender reading them to a receiver process writing them to disk (fsync per file, as the
passive does). Before them, file data six times the size is written and deleted, so that
every side writes into page cache the machine has used before (see touch_memory). Also the
passive's peak RSS (VmHWM). The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import hashlib
import threading
import json
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import _load
from tests.hacluster import Cluster, make_token, wait_in_sync

MIB = 1 << 20
TIMINGS = re.compile(r"catch-up timings: snapshot (\d+) bytes in ([\d.]+)s, (\d+) blobs (\d+) "
                     r"bytes in ([\d.]+)s, installed (\d+) objects in ([\d.]+)s, total ([\d.]+)s")
BUNDLE_SIZE = 10_000
POSTED = 2_000  # objects created one by one, so the change log is trimmed past the start

RECEIVER = r"""
import os, socket, struct, sys
dest = sys.argv[1]
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
buf = bytearray(1 << 20)
view = memoryview(buf)
def exact(n):
    out = bytearray()
    while len(out) < n:
        got = conn.recv(n - len(out))
        if not got:
            raise SystemExit("short read")
        out += got
    return bytes(out)
total = 0
while True:
    size, = struct.unpack("!q", exact(8))
    if size < 0:
        break
    with open(os.path.join(dest, "f%d" % total), "wb") as f:
        left = size
        while left:
            n = conn.recv_into(view, min(left, len(buf)))
            if not n:
                raise SystemExit("short read")
            f.write(view[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())
    total += 1
conn.sendall(b"k")
"""


def touch_memory(workdir: Path, nbytes: int) -> None:
    """Write and delete nbytes of file data. A virtual machine may back its memory lazily: the
    first write into never-used page cache runs at ~0.4 GB/s here, later ones at ~5 GB/s. The
    raw copy deletes its output before it runs again and so reuses its pages; without this,
    only the passive would pay for fresh ones."""
    chunk = bytes(8 * MIB)
    path = workdir / "touch-memory"
    with open(path, "wb", buffering=0) as f:
        for _ in range(0, nbytes, len(chunk)):
            f.write(chunk)
    path.unlink()


def raw_copy(files: list[Path], dest: Path) -> tuple[int, float]:
    """Send every file over one loopback TCP connection to a receiver process that writes
    them to disk; returns (bytes, seconds) from connect to the receiver's final answer."""
    import struct
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(dest)], stdout=subprocess.PIPE,
                            text=True)
    try:
        port = int(proc.stdout.readline())
        buf = bytearray(MIB)
        view = memoryview(buf)
        sent = 0
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for path in files:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    sock.sendall(struct.pack("!q", size))
                    while n := f.readinto(buf):
                        sock.sendall(view[:n])
                        sent += n
            sock.sendall(struct.pack("!q", -1))
            assert sock.recv(1) == b"k"
        took = time.perf_counter() - t0
        proc.wait(30)
        return sent, took
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(dest, ignore_errors=True)


def make_blobs(api: httpx.Client, workdir: Path, total: int) -> None:
    """ISOs of 64 MiB..256 MiB for 3/4 of `total`, 1 MiB files for the rest (distinct bytes)."""
    block = os.urandom(MIB)
    iso_bytes = total * 3 // 4
    iso_size = min(256 * MIB, max(64 * MIB, iso_bytes // 3 // MIB * MIB))
    n = 0

    def chunks(size: int, tag: bytes):
        first = True
        left = size
        while left:
            piece = block[:min(left, MIB)]
            if first:
                piece = hashlib.sha256(tag).digest() + piece[32:]
                first = False
            yield piece
            left -= len(piece)
    made = 0
    while made + iso_size <= iso_bytes:
        api.post(f"/isos/bench-{n}.iso", content=chunks(iso_size, b"iso%d" % n),
                 headers={"Content-Length": str(iso_size)}).raise_for_status()
        made += iso_size
        n += 1
    i = 0
    while made < total:
        size = min(MIB, total - made)
        api.post(f"/files/bench/d{i % 16}/f{i}.bin", content=b"".join(chunks(size, b"f%d" % i)),
                 headers={"Content-Length": str(size)}).raise_for_status()
        made += size
        i += 1


def make_objects(server, token: str, count: int) -> None:
    posted = min(POSTED, count)
    bundled = count - posted
    with server.client(token=token, timeout=300) as api:
        b = 0
        while bundled > 0:
            n = min(BUNDLE_SIZE, bundled)
            params = {f"bench-b{b}-{i}": {"Name": f"bench-b{b}-{i}", "Description":
                                          f"catch-up benchmark object {i} of bundle {b}",
                                          "Schema": {"type": "string"}} for i in range(n)}
            bundle = {"meta": {"Name": f"bench-bundle-{b}", "Version": "1.0"},
                      "sections": {"params": params}}
            api.post("/contents", json=bundle).raise_for_status()
            bundled -= n
            b += 1

    def client(i: int) -> None:
        conn = _load.Conn("127.0.0.1", server.api_port, {"Authorization": f"Bearer {token}"})
        try:
            for k in range(i, posted, clients):
                body = json.dumps({"Name": f"bench-p{k}", "Params": {"k": k}}).encode()
                status, resp = conn.request("POST", "/api/v3/profiles", body)
                if status != 201:
                    raise _load.HttpError(f"{status}: {resp[:200]!r}")
        finally:
            conn.close()
    clients = 16
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def blob_files(root: Path) -> list[Path]:
    out = []
    for area in ("tftpboot/files", "tftpboot/isos", "plugins", "job-logs"):
        for dirpath, _, names in os.walk(root / area):
            out += [Path(dirpath, name) for name in names if not name.startswith(".")]
    return sorted(out)


def run(workdir: Path, blob_bytes: int, objects: int, rounds: int) -> dict:
    seed_root, token = make_token(workdir)
    (workdir / "ha").mkdir()
    cluster = Cluster(workdir / "ha", token, seed_root)
    try:
        active = cluster.node("a", passive=False, extra=("--ha-log-retention", "10"))
        t0 = time.monotonic()
        with active.client(token=token, timeout=httpx.Timeout(120, read=None, write=None)) as api:
            make_blobs(api, workdir, blob_bytes)
        make_objects(active, token, objects)
        print(f"loaded {blob_bytes / MIB:.0f} MiB and {objects} objects in "
              f"{time.monotonic() - t0:.1f}s", flush=True)
        files = blob_files(active.base_root)
        snap_stand_in = workdir / "snapshot-stand-in.db"
        db = sqlite3.connect(active.base_root / "drp.db")
        db.execute("VACUUM INTO ?", (str(snap_stand_in),))
        db.close()
        os.sync()  # the load's dirty pages would slow the first raw copy's fsyncs
        touch_memory(workdir, 6 * sum(f.stat().st_size for f in [snap_stand_in, *files]))
        raw_copy([snap_stand_in, *files], workdir / "raw")  # warm-up
        raws = [raw_copy([snap_stand_in, *files], workdir / "raw")]
        joins = []
        for i in range(rounds):  # raw, join, raw, join, ..., raw: noise hits both alike
            started = time.monotonic()
            passive = cluster.node(f"p{i}", passive=True)
            wait_in_sync(active, token, 1, timeout=1800)
            in_sync_s = time.monotonic() - started
            peak = _load.status_kib(passive.proc.pid, "VmHWM")
            rss_now = _load.status_kib(passive.proc.pid, "VmRSS")
            found = TIMINGS.findall(passive.logs())
            if not found:
                raise RuntimeError(f"no catch-up timings in the passive's log:\n{passive.logs()[-3000:]}")
            passive.stop()
            shutil.rmtree(passive.base_root, ignore_errors=True)
            joins.append((found[-1], in_sync_s, peak, rss_now))
            raws.append(raw_copy([snap_stand_in, *files], workdir / "raw"))
    finally:
        cluster.stop_all()
    rates = []
    for i, (timing, *_rest) in enumerate(joins):
        rates.append((int(timing[0]) + int(timing[3])) / float(timing[7]))
        around = raws[i:i + 2]  # the raw copies just before and just after this join
        print(f"join {i + 1}: {rates[-1] / 1e6:.0f} MB/s; raw copies around it "
              f"{', '.join(f'{b / t / 1e6:.0f}' for b, t in around)} MB/s", flush=True)
    # Medians on both sides: one copy or join slowed by something else does not decide it.
    mid = sorted(range(len(joins)), key=lambda k: rates[k])[len(joins) // 2]  # the median join
    (snap_b, snap_s, nblobs, blob_b, files_s, n_obj, install_s, total_s), in_sync_s, _, _ = joins[mid]
    raw_rate = statistics.median(b / t for b, t in raws)
    return {"bench": "catchup", "joins": len(joins), "bytes": int(snap_b) + int(blob_b),
            "seconds": round(float(total_s), 3), "bytes_per_s": round(rates[mid]),
            "raw_tcp_bytes_per_s": round(raw_rate), "ratio": round(rates[mid] / raw_rate, 3),
            "join_bytes_per_s": [round(r) for r in rates],
            "raw_tcp_runs_bytes_per_s": [round(b / t) for b, t in raws],
            "objects": int(n_obj),
            "objects_seconds": round(float(snap_s) + float(install_s), 3),
            "snapshot_bytes": int(snap_b), "snapshot_seconds": float(snap_s),
            "install_seconds": float(install_s), "blobs": int(nblobs),
            "blob_bytes": int(blob_b), "blob_seconds": float(files_s),
            "seconds_to_in_sync": round(in_sync_s, 3),
            "passive_peak_rss_mb": round(max(j[2] for j in joins) / 1024, 1),
            "passive_rss_after_mb": round(max(j[3] for j in joins) / 1024, 1),
            "target_ratio": 0.5, "target_rss_mb": 150}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench catchup")
    ap.add_argument("--quick", action="store_true", help="256 MiB and 10k objects")
    ap.add_argument("--mib", type=int, default=None, help="MiB of files/ISOs (default 1024)")
    ap.add_argument("--objects", type=int, default=None, help="objects (default 100000)")
    ap.add_argument("--joins", type=int, default=3,
                    help="fresh passives joining one after another; the median is reported")
    ap.add_argument("--workdir", type=Path, default=None, help="where the data goes (default tmp)")
    args = ap.parse_args(argv)
    mib = args.mib or (256 if args.quick else 1024)
    objects = args.objects or (10_000 if args.quick else 100_000)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="drp-bench-catchup-", dir=args.workdir))
    try:
        result = run(workdir, mib * MIB, objects, max(1, args.joins))
    finally:
        if not os.environ.get("DRP_BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    return 0

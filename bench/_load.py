"""A cheap HTTPS load generator for the benchmarks: keep-alive HTTP/1.1 over blocking TLS
sockets, one thread per client.

It shares the machine's two cores with the servers it measures, so it does as little as it
can per request: no HTTP library, a hand-written request line and a minimal response parser
(status, Content-Length, body). The GIL is released while a thread waits in the socket.
"""
from __future__ import annotations

import os
import socket
import ssl
import statistics
import threading
import time
from typing import Callable

_CTX = ssl.create_default_context()
_CTX.check_hostname = False
_CTX.verify_mode = ssl.CERT_NONE


class HttpError(Exception):
    pass


class Conn:
    """One keep-alive HTTPS connection."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None):
        self.host, self.port = host, port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock: ssl.SSLSocket | None = None
        self.buf = b""

    def _connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), timeout=60)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = _CTX.wrap_socket(raw)
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, method: str, path: str, body: bytes = b"",
                content_type: str = "application/json") -> tuple[int, bytes]:
        if self.sock is None:
            self._connect()
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.extra}"
                f"Content-Length: {len(body)}\r\n")
        if body:
            head += f"Content-Type: {content_type}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + body)
        return self._response()

    def _read_more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise HttpError("connection closed by the server")
        self.buf += data

    def _response(self) -> tuple[int, bytes]:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._read_more()
        lines = self.buf[:end].split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding":
                raise HttpError("chunked responses are not supported by this client")
        start = end + 4
        while len(self.buf) < start + length:
            self._read_more()
        body = self.buf[start:start + length]
        self.buf = self.buf[start + length:]
        if close:
            self.close()
        return status, body


# A client's step: fn(conn, client_index, step_index) -> None; raise to count an error.
Step = Callable[[Conn, int, int], None]


def run(host: str, port: int, headers: dict, clients: int, seconds: float, step: Step,
        setup: Callable[[Conn, int], None] | None = None) -> dict:
    """`clients` threads each run `step` in a loop for `seconds`; returns counts, rate and
    latency percentiles (ms) of the steps that completed inside the window."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    ready = threading.Barrier(clients + 1)
    window: list[float] = []

    def client(i: int) -> None:
        conn = Conn(host, port, headers)
        try:
            conn._connect()
            if setup:
                setup(conn, i)
            ready.wait()
            n, lat = 0, latencies[i]
            while True:
                t0 = time.perf_counter()
                if t0 >= window[0]:
                    break
                try:
                    step(conn, i, n)
                except Exception:  # noqa: BLE001 — counted; a fresh connection next time
                    errors[i] += 1
                    conn.close()
                    continue
                finally:
                    n += 1
                lat.append(time.perf_counter() - t0)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    window.append(time.perf_counter() + 10 * 86400)  # replaced below, once all are ready
    ready.wait()
    start = time.perf_counter()
    window[0] = start + seconds
    for t in threads:
        t.join()
    elapsed = max(time.perf_counter() - start, 1e-9)
    return summarize([x for lat in latencies for x in lat], sum(errors), elapsed)


def alternate(phases: dict[str, Callable[[float], dict]], seconds: float,
              slice_s: float) -> dict[str, list[dict]]:
    """Run each phase for `seconds` in total, in slices of about `slice_s`, interleaved
    A B B A A B ... so a burst of load from elsewhere on the machine hits every phase alike."""
    slices = max(1, round(seconds / slice_s))
    names = list(phases)
    out: dict[str, list[dict]] = {name: [] for name in names}
    for k in range(slices):
        for name in (names if k % 2 == 0 else names[::-1]):
            out[name].append(phases[name](seconds / slices))
    return out


def merge(runs: list[dict]) -> dict:
    """One summary of several slices of the same phase (their latencies pooled)."""
    lat = [x for r in runs for x in r["lat"]]
    out = summarize(lat, sum(r["errors"] for r in runs), sum(r["seconds"] for r in runs))
    out["slices"] = len(runs)
    return out


def median_ratio(num: list[dict], den: list[dict]) -> float:
    """The median over slice pairs of num/den rates: robust to one slice hit by a burst."""
    return round(statistics.median(a["per_s"] / max(b["per_s"], 1e-9)
                                   for a, b in zip(num, den)), 3)


def summarize(lat: list[float], errors: int, elapsed: float) -> dict:
    lat.sort()

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 3) if lat else 0.0
    return {"ops": len(lat), "errors": errors, "seconds": elapsed,
            "per_s": round(len(lat) / elapsed, 1), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "mean_ms": round(statistics.fmean(lat) * 1000, 3) if lat else 0.0, "lat": lat}


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

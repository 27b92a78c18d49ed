"""How far a passive's catch-up has got, in words for the journal and the systemd Status: line.

One Progress per catch-up: a full one (snapshot, then the files it lists: `line()`, logged by
`log_loop`) or a replay of the change log (entries, and the files of the batch being applied:
`replay_line()`, logged by the follower's report timer). Fetch threads add bytes as they arrive.
"""
from __future__ import annotations

import logging
import threading
import time

import trio

log = logging.getLogger("drp.ha.transfer")
GIB = 1 << 30


def _eta(left: float, rate: float) -> str:
    return f"{left / rate:.0f}s" if rate > 0 and left > 0 else "0s"


class Progress:
    """Counts catch-up work and reports it: a log line every `every` seconds and the STATUS."""

    def __init__(self, report, every: float = 5.0, start_seq: int = 0):
        self.report = report  # fn(text): sd_notify STATUS
        self.every = every
        self.bytes_total = self.bytes_done = 0
        self.objects_total = self.objects_done = 0
        self.files_total = self.files_done = 0  # a replay's files to fetch
        self.started = time.monotonic()
        self.phase = "catching up"
        self._lock = threading.Lock()  # fetch threads add to bytes_done
        self.start_seq = start_seq  # a replay's position when it began

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes_done += n

    def _rate(self) -> float:
        return self.bytes_done / max(time.monotonic() - self.started, 1e-6)

    def line(self) -> tuple[str, str]:
        """A full catch-up: (journal line, Status: line)."""
        rate = self._rate()
        pct = 100.0 * self.bytes_done / self.bytes_total if self.bytes_total else 100.0
        eta = _eta(self.bytes_total - self.bytes_done, rate)
        text = (f"{self.phase}: objects {self.objects_done}/{self.objects_total}, bytes "
                f"{self.bytes_done / GIB:.2f}/{self.bytes_total / GIB:.2f} GiB ({pct:.0f}%), "
                f"{rate / 1e6:.1f} MB/s, ETA {eta}")
        status = (f"passive: syncing {pct:.0f}% ({self.bytes_done / GIB:.1f}/"
                  f"{self.bytes_total / GIB:.1f} GiB), ETA {eta}")
        return text, status

    def replay_line(self, applied: int, head: int) -> tuple[str, str]:
        """A replay of the change log at `applied` of `head`: (journal line, Status: line).
        With files to fetch, their count, bytes, rate and ETA; else the entries' ETA."""
        behind = max(0, head - applied)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        text = f"streaming: applied seq {applied} of {head} ({behind} behind)"
        status = f"passive: syncing, {behind} entries behind"
        if self.files_total:
            rate = self._rate()
            eta = _eta(self.bytes_total - self.bytes_done, rate)
            text += (f", files {self.files_done}/{self.files_total}, "
                     f"{self.bytes_done / GIB:.2f}/{self.bytes_total / GIB:.2f} GiB, "
                     f"{rate / 1e6:.1f} MB/s, ETA {eta}")
            status += (f", files {self.bytes_done / GIB:.1f}/{self.bytes_total / GIB:.1f} GiB, "
                       f"ETA {eta}")
        else:
            entry_rate = (applied - self.start_seq) / elapsed
            text += f", ETA {_eta(behind, entry_rate)}" if entry_rate > 0 else ""
        return text, status

    async def log_loop(self) -> None:
        while True:
            await trio.sleep(self.every)
            text, status = self.line()
            log.info("%s", text)
            self.report(status)

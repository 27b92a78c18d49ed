"""Password guessing, bounded: failed-login counters with backoff, a limiter in front of the
hashes, and failed-login log lines at a bounded rate. Memory is bounded everywhere: names an
attacker makes up evict the least recently used entries instead of growing a table."""
from __future__ import annotations

import functools
import ipaddress
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import trio

from drp import auth

WINDOW = 60.0  # a key's attempts are forgotten after this long without one
CAPACITY = 10_000  # keys remembered per table
HASH_NICE = 10  # how much lower the hash threads' CPU priority is


@functools.lru_cache(maxsize=4096)  # parsing an address costs more than the rest of a GET's auth
def source_key(remote_addr: str | None) -> str:
    """Who is guessing: the client's IP address; for IPv6 its /64, which one host usually owns
    whole (one address per guess would otherwise dodge the count)."""
    text = (remote_addr or "")[:64]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text or "unknown"
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _evict(table: OrderedDict, capacity: int) -> None:
    while len(table) > capacity:
        table.popitem(last=False)


@dataclass
class _Record:
    count: int = 0      # attempts charged since the key was last quiet for a WINDOW
    last: float = 0.0   # when the last one was charged
    until: float = 0.0  # refused until then
    level: int = 0      # backoffs so far: the next one lasts 2**level s, up to the max


class FailureCounter:
    """Login attempts per key (a user name or a source address): `free` of them pass within a
    minute, then each further one starts a wait that doubles (1 s, 2 s, ...) up to `max_backoff`,
    during which the key is refused (429). A key is forgotten after a quiet WINDOW; as
    max_backoff < WINDOW, a patient guesser keeps its backoff."""

    def __init__(self, free: int, max_backoff: float, capacity: int = CAPACITY,
                 clock=time.monotonic):
        self.free, self.max_backoff, self.capacity, self.clock = free, max_backoff, capacity, clock
        self._recs: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._recs)

    def _live(self, key: str, now: float) -> _Record | None:
        rec = self._recs.get(key)
        if rec is not None and now - rec.last > WINDOW and rec.until <= now:
            del self._recs[key]
            return None
        return rec

    def wait(self, key: str) -> float:
        """Seconds until `key` may try again (0: now)."""
        now = self.clock()
        rec = self._live(key, now)
        return max(0.0, rec.until - now) if rec else 0.0

    def clean(self, key: str) -> bool:
        """No attempt charged to `key` lately."""
        rec = self._live(key, self.clock())
        return rec is None or (rec.count == 0 and rec.level == 0)

    def charge(self, key: str) -> None:
        """Count an attempt (charged before the hash, so a burst of concurrent guesses is
        counted before any of them has finished)."""
        now = self.clock()
        rec = self._live(key, now) or _Record()
        if rec.count >= self.free:
            rec.until = now + min(2.0 ** rec.level, self.max_backoff)
            rec.level += 1
        rec.count += 1
        rec.last = now
        self._recs[key] = rec
        self._recs.move_to_end(key)
        _evict(self._recs, self.capacity)

    def refund(self, key: str) -> None:
        """The attempt charged to `key` was a good one: it does not count (a backoff it started
        stands)."""
        rec = self._recs.get(key)
        if rec is not None:
            rec.count = max(0, rec.count - 1)

    def forget(self, key: str) -> None:
        self._recs.pop(key, None)


def _lower_priority() -> None:
    """Run this pool thread at a lower CPU priority (Linux: a thread's own nice value), so the
    event loop serving everyone else wins the CPU from a hash when both want it."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICE)
    except (OSError, AttributeError):
        pass  # not Linux, or not allowed: the limiter still bounds the hashes


class HashGate:
    """Password hashes (scrypt: ~50 ms of CPU and 16 MiB each) on a pool of `threads` threads of
    their own, at a lower priority, so they never hold the threads store reads use nor crowd out
    the event loop; at most `queue` more wait, beyond that busy() says why (answered 429) rather
    than a queue without end. (Not trio's thread cache: its threads go on to serve store reads,
    and would keep the lower priority.)"""

    def __init__(self, threads: int, queue: int):
        self.threads, self.queue = threads, queue
        self._pool = ThreadPoolExecutor(threads, "drp-hash", initializer=_lower_priority)
        self.pending = 0  # running + waiting, counted until the hash is done, cancelled or not

    def busy(self) -> str | None:
        """Why a new check would be refused now, or None."""
        if self.pending < self.threads + self.queue:
            return None
        return (f"{self.pending} password checks are already running or waiting "
                f"(limits --auth-hash-threads {self.threads} and --auth-hash-queue {self.queue})")

    async def check_password(self, password: str, stored: str) -> bool:
        return await self.run(auth.check_password, password, stored)

    async def run(self, fn, *args):
        """fn(*args) on a hash thread (hash_password too: no hash on the event loop or the
        store's threads)."""
        trio_token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def finished(_) -> None:  # in the pool thread
            try:
                trio_token.run_sync_soon(settle)
            except trio.RunFinishedError:
                pass

        def settle() -> None:
            self.pending -= 1
            done.set()

        self.pending += 1
        future = self._pool.submit(fn, *args)
        future.add_done_callback(finished)
        await done.wait()
        return future.result()


class FailedLoginLog:
    """Failed logins as log lines with user and source: at most one per (user, source) per
    `every` seconds and `burst` in all per `every`; the rest are counted and reported in one
    summary line at most once per `every` (written when the next login is checked)."""

    def __init__(self, log: logging.Logger, every: float = 60.0, burst: int = 100,
                 capacity: int = CAPACITY, clock=time.monotonic):
        self.log, self.every, self.burst, self.capacity, self.clock = \
            log, every, burst, capacity, clock
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._period = clock()
        self._lines = 0
        self.suppressed = 0

    def flush(self) -> None:
        now = self.clock()
        if now - self._period < self.every:
            return
        if self.suppressed:
            self.log.warning("%d more failed or refused logins not logged in the last %d s",
                             self.suppressed, math.ceil(now - self._period))
        self._period, self._lines, self.suppressed = now, 0, 0

    def failed(self, user: str, source: str, why: str, quiet: bool = False) -> None:
        """Note one failed login; `quiet` ones (refused by the throttle) only count."""
        self.flush()
        now, key = self.clock(), (user, source)
        last = self._last.get(key)
        if quiet or self._lines >= self.burst or (last is not None and now - last < self.every):
            self.suppressed += 1
            return
        self._last[key] = now
        self._last.move_to_end(key)
        _evict(self._last, self.capacity)
        self._lines += 1
        # %r: the name is the client's, it must not be able to forge log lines
        self.log.warning("failed login for user %r from %s: %s", user[:64], source, why)

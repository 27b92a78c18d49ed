"""An in-memory etcd for in-process tests of automatic failover: the async `Kv` protocol of
drp/ha/consensus.py with etcd v3's semantics as the election relies on them.

- One global revision: every write (a put, a transaction that changed something, a lease's
  expiry or revoke) moves it by one; a key keeps its create revision until it is deleted.
- Leases expire against a clock the test controls (`FakeClock`, or `trio.current_time` under
  trio's MockClock). As etcd does, an expired lease's keys go on the next call that looks,
  `lateness` seconds after the expiry at the earliest (etcd 3.4 measured: 0.0-0.5 s late);
  a keep-alive of an expired lease answers -1 and takes the keys with it.
- `grant` never gives less than `min_ttl` (etcd's minimum, 2 s at its default election time).
- Faults: `cut()` makes every call raise EtcdError (etcd unreachable) until `heal()`;
  `block_txn()` holds the next transaction in flight until the test releases it.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import trio

from drp.ha.etcd import Absent, Created, Delete, EtcdError, Kv, Modified, Put


class FakeClock:
    """A monotonic clock that only moves when the test says."""

    def __init__(self, start: float = 1000.0):
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class _Key:
    value: str
    mod_revision: int
    create_revision: int
    lease: int


@dataclass
class _Lease:
    ttl: int
    expires: float
    keys: set[str] = field(default_factory=set)


class Gate:
    """One call held in flight: `entered` is set once it arrived; `release()` lets it go,
    `lose()` lets it go with EtcdError (the answer lost on the way). With applied=True the
    call took effect on arrival and only its answer is held (a slow reply)."""

    def __init__(self, applied: bool):
        self.applied = applied
        self.entered = trio.Event()
        self.done = trio.Event()  # the held call has taken effect
        self.args: tuple = ()
        self._released = trio.Event()
        self._lost = False

    def release(self) -> None:
        self._released.set()

    def lose(self) -> None:
        self._lost = True
        self._released.set()


class FakeKv:
    def __init__(self, clock: Callable[[], float] | FakeClock | None = None, *,
                 min_ttl: int = 2, lateness: float = 0.0):
        if clock is None:
            clock = trio.current_time
        self.now = clock.now if isinstance(clock, FakeClock) else clock
        self.min_ttl, self.lateness = min_ttl, lateness
        self.revision = 1  # etcd's empty store is at revision 1
        self.keys: dict[str, _Key] = {}
        self.leases: dict[int, _Lease] = {}
        self._ids = itertools.count(0x1000)
        self._cut = False
        self._gates: dict[str, list[Gate]] = {}
        self.calls: list[str] = []  # the name of every call, for tests that count them
        self.txns: list[tuple[list, list, bool]] = []  # (conditions, then, applied)

    # ---- faults ---------------------------------------------------------------------------
    def cut(self) -> None:
        self._cut = True

    def heal(self) -> None:
        self._cut = False

    def block(self, call: str, applied: bool = False) -> Gate:
        """Hold the next call of that name ("txn", "keepalive", ...); gates go in order."""
        gate = Gate(applied)
        self._gates.setdefault(call, []).append(gate)
        return gate

    def block_txn(self, applied: bool = False) -> Gate:
        return self.block("txn", applied)

    # ---- the machinery --------------------------------------------------------------------
    async def _call(self, name: str, fn, *args):
        """fn(*args) as etcd would carry it out, through a gate if one is set for name."""
        await trio.sleep(0)  # a call to etcd is a checkpoint, as a worker thread would be
        self.calls.append(name)
        if self._cut:
            raise EtcdError("no etcd member answered (fake: cut off)")
        self._expire()
        gates = self._gates.get(name)
        if not gates:
            return fn(*args)
        gate = gates.pop(0)
        gate.args = args
        result = None
        if gate.applied:
            result = fn(*args)
            gate.done.set()
        gate.entered.set()
        await gate._released.wait()
        if gate._lost or self._cut:
            raise EtcdError("no etcd member answered (fake: the call was lost in flight)")
        if not gate.applied:
            self._expire()
            result = fn(*args)
            gate.done.set()
        return result

    def _expire(self) -> None:
        now = self.now()
        for lid, lease in list(self.leases.items()):
            if now >= lease.expires + self.lateness:
                self._revoke(lid)

    def _bump(self) -> int:
        self.revision += 1
        return self.revision

    def _revoke(self, lid: int) -> None:
        lease = self.leases.pop(lid, None)
        if lease is None:
            return
        gone = [k for k in lease.keys if k in self.keys]
        if gone:
            self._bump()  # one revision for all the lease's keys, as etcd does
            for k in gone:
                del self.keys[k]

    def _put(self, key: str, value: str, lease: int, rev: int) -> None:
        old = self.keys.get(key)
        if old is not None and old.lease and old.lease in self.leases:
            self.leases[old.lease].keys.discard(key)
        if lease:
            self.leases[lease].keys.add(key)
        created = old.create_revision if old is not None else rev
        self.keys[key] = _Key(value, rev, created, lease)

    def _check_lease(self, lease: int) -> None:
        if lease and lease not in self.leases:
            raise EtcdError("etcd refused the request: etcdserver: requested lease not found")

    def _holds(self, cond) -> bool:
        k = self.keys.get(cond.key)
        if isinstance(cond, Absent):
            return k is None
        if isinstance(cond, Created):
            return (k.create_revision if k else 0) == cond.revision
        if isinstance(cond, Modified):
            return (k.mod_revision if k else 0) == cond.revision
        raise TypeError(f"not a condition: {cond!r}")

    def _apply(self, conditions: list, then: list) -> tuple[bool, int]:
        ok = all(self._holds(c) for c in conditions)
        if ok:
            for op in then:
                if isinstance(op, Put):
                    self._check_lease(op.lease)
            changes = [op for op in then if isinstance(op, Put) or op.key in self.keys]
            if changes:
                rev = self._bump()  # a transaction is one revision, whatever it changes
                for op in changes:
                    if isinstance(op, Put):
                        self._put(op.key, op.value, op.lease, rev)
                    else:
                        self._delete(op.key)
        self.txns.append((list(conditions), list(then), ok))
        return ok, self.revision

    def _delete(self, key: str) -> None:
        k = self.keys.pop(key, None)
        if k is not None and k.lease in self.leases:
            self.leases[k.lease].keys.discard(key)

    def _view(self, key: str) -> Kv:
        k = self.keys[key]
        return Kv(k.value, k.mod_revision, k.create_revision, k.lease)

    # ---- the Kv protocol ------------------------------------------------------------------
    async def grant(self, ttl: int) -> tuple[int, int]:
        return await self._call("grant", self._grant, ttl)

    async def keepalive(self, lease: int) -> int:
        return await self._call("keepalive", self._keepalive, lease)

    async def revoke(self, lease: int) -> None:
        return await self._call("revoke", self._revoke_call, lease)

    async def get(self, key: str) -> Kv | None:
        return await self._call("get", lambda k: self._view(k) if k in self.keys else None, key)

    async def get_prefix(self, prefix: str) -> dict[str, Kv]:
        return await self._call("get_prefix", lambda p: {
            k: self._view(k) for k in sorted(self.keys) if k.startswith(p)}, prefix)

    async def put(self, key: str, value: str, lease: int = 0) -> None:
        return await self._call("put", self._put_call, key, value, lease)

    async def txn(self, conditions: list, then: list) -> tuple[bool, int]:
        return await self._call("txn", self._apply, conditions, then)

    # ---- what each call does in etcd ------------------------------------------------------
    def _grant(self, ttl: int) -> tuple[int, int]:
        granted = max(int(ttl), self.min_ttl)
        lid = next(self._ids)
        self.leases[lid] = _Lease(granted, self.now() + granted)
        return lid, granted

    def _keepalive(self, lease: int) -> int:
        held = self.leases.get(lease)
        if held is None:
            return -1
        if self.now() >= held.expires:  # expired, its revoke pending: etcd waits for it
            self._revoke(lease)
            return -1
        held.expires = self.now() + held.ttl
        return held.ttl

    def _revoke_call(self, lease: int) -> None:
        if lease not in self.leases:
            raise EtcdError("etcd refused the request: etcdserver: requested lease not found")
        self._revoke(lease)

    def _put_call(self, key: str, value: str, lease: int) -> None:
        self._check_lease(lease)
        self._put(key, value, lease, self._bump())

    # ---- for tests ------------------------------------------------------------------------
    def value(self, key: str) -> str | None:
        k = self.keys.get(key)
        return k.value if k else None

    def expire_now(self) -> None:
        """Let etcd act on every lease past its expiry (as its next call would)."""
        self._expire()

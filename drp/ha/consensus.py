"""What automatic failover keeps in etcd, and the async door to it.

Keys, under --ha-etcd-prefix (default /drp/<ha-id>/):
    leader          the active's drp-id, on the active's lease (--ha-lease-ttl)
    sync            {"Leader", "Epoch", "Members"}: the passives holding every acknowledged write
    members/<id>    each node's role, state, lag, address, version, on that node's own lease
    switchover      {"From", "To"}: a planned switch in progress (on a short lease)
    paused          present while automatic failover is paused (`drpcli system ha pause`)

`Kv` is the interface the election code uses (LiteFS's lease.go is the model: the real one
here is etcd, tests/hafakes.py has an in-memory one); `EtcdKv` runs drp.ha.etcd's blocking
calls in worker threads, abandoned on cancel so a stuck etcd never holds up a role change.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import trio

from drp.ha.etcd import Etcd, Kv as KeyValue


class Kv(Protocol):
    async def grant(self, ttl: int) -> tuple[int, int]: ...
    async def keepalive(self, lease: int) -> int: ...
    async def revoke(self, lease: int) -> None: ...
    async def get(self, key: str) -> KeyValue | None: ...
    async def get_prefix(self, prefix: str) -> dict[str, KeyValue]: ...
    async def put(self, key: str, value: str, lease: int = 0) -> None: ...
    async def txn(self, conditions: list, then: list) -> tuple[bool, int]: ...


class EtcdKv:
    def __init__(self, etcd: Etcd):
        self.etcd = etcd

    async def _run(self, fn, *args):
        return await trio.to_thread.run_sync(partial(fn, *args), abandon_on_cancel=True)

    async def grant(self, ttl: int) -> tuple[int, int]:
        return await self._run(self.etcd.grant, ttl)

    async def keepalive(self, lease: int) -> int:
        return await self._run(self.etcd.keepalive, lease)

    async def revoke(self, lease: int) -> None:
        await self._run(self.etcd.revoke, lease)

    async def get(self, key: str) -> KeyValue | None:
        return await self._run(self.etcd.get, key)

    async def get_prefix(self, prefix: str) -> dict[str, KeyValue]:
        return await self._run(self.etcd.get_prefix, prefix)

    async def put(self, key: str, value: str, lease: int = 0) -> None:
        await self._run(self.etcd.put, key, value, lease)

    async def txn(self, conditions: list, then: list) -> tuple[bool, int]:
        return await self._run(self.etcd.txn, conditions, then)


@dataclass(frozen=True)
class Keys:
    prefix: str

    @property
    def leader(self) -> str:
        return self.prefix + "leader"

    @property
    def sync(self) -> str:
        return self.prefix + "sync"

    @property
    def switchover(self) -> str:
        return self.prefix + "switchover"

    @property
    def paused(self) -> str:
        return self.prefix + "paused"

    @property
    def members(self) -> str:
        return self.prefix + "members/"

    def member(self, drp_id: str) -> str:
        return self.members + drp_id


@dataclass(frozen=True)
class SyncSet:
    """The `sync` key: who may become active automatically."""
    leader: str = ""
    epoch: int = 0
    members: tuple[str, ...] = ()

    def text(self) -> str:
        return json.dumps({"Leader": self.leader, "Epoch": self.epoch,
                           "Members": sorted(self.members)})

    @classmethod
    def parse(cls, text: str) -> "SyncSet":
        try:
            raw = json.loads(text)
            return cls(str(raw["Leader"]), int(raw["Epoch"]),
                       tuple(str(m) for m in raw["Members"]))
        except (ValueError, KeyError, TypeError):
            # Unreadable: trust nobody with an automatic promotion (an operator can still
            # switch by hand).
            return cls(leader="?", epoch=-1)


@dataclass(frozen=True)
class Cluster:
    """One read of the whole prefix: what the election decides from."""
    leader: KeyValue | None = None
    sync: SyncSet | None = None  # None: the cluster has never had an active
    sync_revision: int = 0  # the sync key's mod revision (0: absent)
    switchover: dict | None = None
    paused: dict | None = None
    members: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def read(cls, keys: Keys, kvs: dict[str, KeyValue]) -> "Cluster":
        sync = kvs.get(keys.sync)
        members = {}
        for key, kv in kvs.items():
            if key.startswith(keys.members):
                members[key[len(keys.members):]] = _json_or(kv.value, {})
        return cls(leader=kvs.get(keys.leader),
                   sync=SyncSet.parse(sync.value) if sync else None,
                   sync_revision=sync.mod_revision if sync else 0,
                   switchover=_json_or(kvs[keys.switchover].value, {})
                   if keys.switchover in kvs else None,
                   paused=_json_or(kvs[keys.paused].value, {}) if keys.paused in kvs else None,
                   members=members)

    def eligible(self, drp_id: str) -> str | None:
        """Why drp_id may not take `leader` automatically now, or None when it may."""
        if self.sync is None:
            return None  # never had an active: anyone may start it
        if drp_id in self.sync.members or self.sync.leader == drp_id:
            return None  # holds every acknowledged write (the last active did, too)
        return (f"not in the sync set (the passives holding every acknowledged write of "
                f"epoch {self.sync.epoch}: {', '.join(self.sync.members) or 'none'})")


def _json_or(text: str, default):
    try:
        value = json.loads(text)
    except ValueError:
        return default
    return value if isinstance(value, dict) else default

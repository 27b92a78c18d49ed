"""The active's hold on `leader`: the lease, its deadline, the sync set, the release.

Patroni's rules on etcd, adapted:
- The deadline is the send time of the last keep-alive etcd answered, plus the TTL, less a
  margin, on the monotonic clock. etcd expires the lease no earlier than TTL after it *received*
  that keep-alive, so whatever we do before the deadline happens while no other node can hold
  `leader`. No write is acknowledged at or after the deadline (`check`); at the deadline the
  node fences itself (`on_lost`), and a process paused past it fences the moment it runs again.
- `sync` only changes in a transaction conditioned on still holding `leader` (the incarnation
  of the key we created); a passive leaves it *before* writes stop waiting for it (the hub pins
  every member of a proposed or committed set), so whoever can win `leader` holds every
  acknowledged write.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Callable

import trio

from drp.ha.consensus import Cluster, Keys, Kv, SyncSet
from drp.ha.etcd import Absent, Created, Delete, EtcdError, Modified, Put
from drp.store.errors import NotReplicated

log = logging.getLogger("drp.ha.etcd")
RELEASED = "released"
MARGIN = 0.25  # seconds before etcd could expire the lease that we stop acknowledging
RETRY_AFTER_FAILURE = 0.1  # seconds between keep-alive attempts once one has failed


def margin_for(ttl: float) -> float:
    return min(MARGIN, ttl / 4)


class LostLeadership(Exception):
    """`leader` is not ours any more (expired, deleted, or taken)."""


class Leadership:
    """Created by `campaign` once the transaction that made `leader` ours succeeded."""

    def __init__(self, kv: Kv, keys: Keys, drp_id: str, lease: int, ttl: float,
                 revision: int, deadline: float, clock: Callable[[], float] = time.monotonic):
        self.kv, self.keys, self.drp_id = kv, keys, drp_id
        self.lease, self.ttl, self.revision = lease, ttl, revision
        self.deadline = deadline
        self.clock = clock
        self.lost: str | None = None  # why we fenced
        self.members: frozenset[str] = frozenset()  # `sync` as committed
        self.epoch = 0
        self._on_lost: Callable[[str], None] = lambda reason: None

    # ---- the write gate -------------------------------------------------------------------
    def check(self) -> None:
        """Raise NotReplicated (HA_UNCONFIRMED) once the deadline has passed: a write may only
        be acknowledged while no other node can be active."""
        if self.lost is None and self.clock() >= self.deadline:
            self.fence(f"the leader lease was not renewed in time (deadline passed "
                       f"{self.clock() - self.deadline:.2f}s ago)")
        if self.lost is not None and self.lost != RELEASED:
            # (released: after a handover every In-Sync passive holds what we confirmed)
            raise NotReplicated(f"this node stopped being the active before the write could "
                                f"be confirmed ({self.lost}): it may be lost on failover; "
                                "check and retry on the new active")

    def gate(self, wait_synced):
        """The store's replication hook: wait for the passives, then check the deadline."""
        async def replicated(seq: int) -> None:
            await wait_synced(seq)
            self.check()
        return replicated

    def fence(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
            log.error("fencing: %s; refusing writes, dropping the VIP, becoming passive",
                      reason)
            self._on_lost(reason)

    # ---- keeping the lease ----------------------------------------------------------------
    async def keep(self, on_lost: Callable[[str], None], on_cluster=None) -> None:
        """Renew every TTL/3 until the lease is lost; fence at the deadline. on_cluster(c)
        gets each read of the prefix (switchover requests reach the active this way)."""
        self._on_lost = on_lost
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._fence_at_deadline)
            failed = False
            while self.lost is None:
                sent = self.clock()
                try:
                    ttl = await self.kv.keepalive(self.lease)
                except EtcdError as e:
                    if not failed:
                        log.warning("could not renew the leader lease (%s); fencing in %.2fs "
                                    "unless etcd answers", e,
                                    max(0.0, self.deadline - self.clock()))
                    failed = True
                    # etcd electing a new raft leader answers again within ~1 s: try again
                    # soon rather than a third of the TTL later, which may be past the deadline.
                    await trio.sleep(RETRY_AFTER_FAILURE)
                    continue
                else:
                    if failed:
                        log.info("renewed the leader lease again (%.2fs before the deadline)",
                                 self.deadline - self.clock())
                    failed = False
                    if ttl <= 0:
                        self.fence("etcd says the leader lease has expired")
                        break
                    self.deadline = max(self.deadline,
                                        sent + min(ttl, self.ttl) - margin_for(self.ttl))
                    if on_cluster is not None:
                        await self._read(on_cluster)
                await trio.sleep(max(0.0, sent + self.ttl / 3 - self.clock()))
            nursery.cancel_scope.cancel()

    async def _read(self, on_cluster) -> None:
        try:
            cluster = Cluster.read(self.keys, await self.kv.get_prefix(self.keys.prefix))
        except EtcdError:
            return
        leader = cluster.leader
        if leader is None or leader.create_revision != self.revision:
            self.fence("the leader key is gone or was taken by "
                       + (leader.value if leader else "nobody"))
            return
        on_cluster(cluster)

    async def _fence_at_deadline(self) -> None:
        while self.lost is None:
            left = self.deadline - self.clock()
            if left <= 0:
                self.fence(f"the leader lease was not renewed within {self.ttl:.0f}s "
                           f"(less a {margin_for(self.ttl):.2f}s margin)")
                return
            await trio.sleep(left)

    # ---- the sync set ---------------------------------------------------------------------
    async def set_sync(self, members: frozenset[str], epoch: int | None = None) -> None:
        """Write `sync` (conditioned on holding leader); raises LostLeadership or EtcdError."""
        if epoch is not None:
            self.epoch = epoch
        record = SyncSet(self.drp_id, self.epoch, tuple(sorted(members)))
        ok, _ = await self.kv.txn([Created(self.keys.leader, self.revision)],
                                  [Put(self.keys.sync, record.text())])
        if not ok:
            self.fence("the leader key is no longer ours (seen writing the sync set)")
            raise LostLeadership(self.lost)
        added, removed = members - self.members, self.members - members
        self.members = members
        for m in sorted(added):
            log.info("sync set: added %s (it holds every acknowledged write)", m)
        for m in sorted(removed):
            log.warning("sync set: removed %s; writes no longer wait for it, and it is not "
                        "promoted automatically until it is In-Sync again", m)

    # ---- leaving --------------------------------------------------------------------------
    async def release(self, to: str = "") -> None:
        """After a graceful handover: give `leader` up (to `to` first, if named)."""
        then = [Delete(self.keys.leader)]
        if to:
            hint, _ = await self.kv.grant(max(5, int(self.ttl * 3)))
            then.append(Put(self.keys.switchover, _switch_text(self.drp_id, to), hint))
        ok, _ = await self.kv.txn([Created(self.keys.leader, self.revision)], then)
        try:
            await self.kv.revoke(self.lease)
        except EtcdError:
            pass  # the key is gone already (or will go with the lease)
        self.lost = self.lost or RELEASED
        log.info("released the leader key%s", f" to {to}" if to and ok else "")


    async def give_up(self) -> None:
        """The role ended without a handover (a stop, a failure): revoke the lease so a
        passive in the sync set takes over now rather than when it runs out."""
        self.lost = self.lost or "stopped"
        try:
            await self.kv.revoke(self.lease)
            log.info("revoked the leader lease: a passive in the sync set takes over now")
        except EtcdError as e:
            log.warning("could not revoke the leader lease (%s); it expires within %gs", e,
                        self.ttl)


def _switch_text(src: str, to: str) -> str:
    return json.dumps({"From": src, "To": to})


async def campaign(kv: Kv, keys: Keys, drp_id: str, ttl: int, cluster: Cluster,
                   clock: Callable[[], float] = time.monotonic) -> Leadership | None:
    """Try once to create `leader` (only if it is absent and `sync` has not changed since
    `cluster` was read). Returns the Leadership, or None if another node was faster."""
    sent = clock()
    lease, granted = await kv.grant(ttl)
    effective = min(ttl, granted)
    try:
        won, revision = await kv.txn(
            [Absent(keys.leader), Modified(keys.sync, cluster.sync_revision)],
            [Put(keys.leader, drp_id, lease)])
    except EtcdError:
        # It may have landed: look before giving up.
        mine = await kv.get(keys.leader)
        won = mine is not None and mine.lease == lease
        revision = mine.create_revision if won else 0
    if not won:
        try:
            await kv.revoke(lease)
        except EtcdError:
            pass
        return None
    return Leadership(kv, keys, drp_id, lease, effective, revision,
                      sent + effective - margin_for(effective), clock)

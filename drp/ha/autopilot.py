"""Automatic failover (--ha-etcd-endpoints): when to campaign, and what the active keeps.

The supervisor (drp/ha/supervisor.py) asks this module three things:
- passive: `campaign_loop` watches `leader`; when it is gone and this node may take it (in the
  sync set, not paused, no switchover to someone else), it creates it and asks for the active
  role with the Leadership in hand;
- active: `hold` keeps the lease (fencing at its deadline), keeps `sync` equal to the hub's
  In-Sync passives (removing a passive in etcd before writes stop waiting for it), and turns
  a passive's switchover request into a graceful handover to it;
- always: `publish` keeps this node's `members/<id>` record fresh, for `drpcli system ha peers`.
"""
from __future__ import annotations

import json
import logging
import socket
import time
from typing import Awaitable, Callable
from urllib.parse import urlsplit

import trio

from drp import __version__
from drp.ha.consensus import Cluster, EtcdKv, Keys, Kv
from drp.ha.etcd import Created, Delete, Etcd, EtcdError
from drp.ha.leadership import Leadership, LostLeadership, campaign
from drp.modelvalues import now_text

log = logging.getLogger("drp.ha.etcd")
UNREACHABLE_LOG_EVERY = 30.0  # seconds between repeats of "etcd is unreachable"
PUBLISH_EVERY = 1.0


def make_autopilot(node) -> "Autopilot | None":
    """The node's autopilot when --ha-etcd-endpoints is given, else None (manual HA)."""
    cfg = node.cfg
    if not cfg.ha_etcd_endpoints:
        return None
    etcd = Etcd(list(cfg.ha_etcd_endpoints), *(str(p) if p else None for p in (
        cfg.ha_etcd_ca, cfg.ha_etcd_cert, cfg.ha_etcd_key)), timeout=max(0.2, cfg.ha_lease_ttl / 4))
    return Autopilot(node, EtcdKv(etcd), Keys(cfg.etcd_prefix), cfg.ha_lease_ttl,
                     where=", ".join(cfg.ha_etcd_endpoints))


class Autopilot:
    def __init__(self, node, kv: Kv, keys: Keys, ttl: int,
                 clock: Callable[[], float] = time.monotonic, where: str = "etcd"):
        self.node, self.kv, self.keys, self.ttl, self.clock = node, kv, keys, ttl, clock
        self.where = where  # the endpoints, for the log
        self.endpoint = where.split(",")[0].strip() if "://" in where else ""
        self.address = node.cfg.static_ip or ""  # this node's own, for `system ha peers`
        self.drp_id = node.drp_id
        self.poll = min(0.1, ttl / 20)  # how often a passive looks at `leader`
        self.holdoff_until = 0.0  # after handing over: let the others take it first
        self.first_start_delay = 0.0  # a node meant to start passive waits this long
        self.asked_switch = ""  # the candidate an in-progress handover goes to
        self.reachable: bool | None = None
        self.why_waiting = ""
        self._last_unreachable_log = -UNREACHABLE_LOG_EVERY
        self._changed = trio.Event()

    async def read(self) -> Cluster:
        return Cluster.read(self.keys, await self.kv.get_prefix(self.keys.prefix))

    def _unreachable(self, error: EtcdError) -> None:
        now = self.clock()
        if self.reachable is not False or now - self._last_unreachable_log >= \
                UNREACHABLE_LOG_EVERY:
            log.error("etcd is unreachable (%s); this node stays passive and keeps trying "
                      "(a node is never active without the leader key)", error)
            self._last_unreachable_log = now
        self.reachable = False

    def _reached(self) -> None:
        if self.reachable is False:
            log.info("etcd answers again")
        self.reachable = True

    # ---- passive --------------------------------------------------------------------------
    async def campaign_loop(self, take: Callable[[Leadership], Awaitable[None]]) -> None:
        """Until this node holds `leader` (then `take` asks for the active role)."""
        while True:
            try:
                cluster = await self.read()
                self._reached()
                reason = await self._why_not(cluster)
                if reason is None:
                    leadership = await campaign(self.kv, self.keys, self.drp_id, self.ttl,
                                                cluster, self.clock)
                    if leadership is not None:
                        log.info("won the leader key (lease %x, TTL %gs): becoming active",
                                 leadership.lease, leadership.ttl)
                        self.why_waiting = ""
                        await take(leadership)
                        return
                    reason = "another node created the leader key first"
                self._waiting(reason)
            except EtcdError as e:
                self._unreachable(e)
                await trio.sleep(max(self.poll, 0.5))
                continue
            await trio.sleep(self.poll)

    def _waiting(self, reason: str) -> None:
        if reason != self.why_waiting:
            log.info("not taking the leader key: %s", reason)
            self.why_waiting = reason

    async def _why_not(self, cluster: Cluster) -> str | None:
        leader = cluster.leader
        if leader is not None:
            if leader.value == self.drp_id:
                # Ours from before a restart: nobody serves under it. Let it go now rather
                # than after its TTL (the sync set still says who may take it).
                await self.kv.txn([Created(self.keys.leader, leader.create_revision)],
                                  [Delete(self.keys.leader)])
                return "deleting the leader key this node held before it restarted"
            return f"{leader.value} is the active"
        if cluster.paused is not None:
            return (f"automatic failover is paused (by {cluster.paused.get('By', '?')}; "
                    "`drpcli system ha resume` ends it)")
        switch = cluster.switchover or {}
        if switch.get("To") and switch["To"] != self.drp_id:
            return f"a switchover to {switch['To']} is in progress"
        if switch.get("To") != self.drp_id:
            now = self.clock()
            if now < self.holdoff_until:
                return "this node just handed over; the others go first"
            if cluster.sync is None and now < self.first_start_delay:
                return "the cluster has never had an active; the node meant to start it goes first"
        return cluster.eligible(self.drp_id)

    async def ask_switchover(self) -> tuple[bool, str]:
        """USR1 on a passive: ask the active to hand over to this node. Returns (asked or
        about to happen, what happens) for the log and the API; raises EtcdError."""
        cluster = await self.read()
        reason = cluster.eligible(self.drp_id)
        if cluster.leader is None:
            if reason:
                return False, f"there is no active, and this node may not become one: {reason}"
            return True, "there is no active; this node takes the leader key as soon as it can"
        if cluster.leader.value == self.drp_id:
            return True, "this node already holds the leader key"
        if reason:
            return False, (f"the active {cluster.leader.value} would not hand over to this "
                           f"node: {reason}")
        hint, _ = await self.kv.grant(max(5, self.ttl * 3))
        await self.kv.put(self.keys.switchover,
                          json.dumps({"From": "", "To": self.drp_id, "At": now_text()}), hint)
        return True, f"asked the active {cluster.leader.value} to hand over to this node"

    # ---- active ---------------------------------------------------------------------------
    async def hold(self, leadership: Leadership, hub, on_lost: Callable[[str], None],
                   hand_over: Callable[[str], None]) -> None:
        """While the active role lasts: the lease, the sync set, switchover requests."""
        def on_cluster(cluster: Cluster) -> None:
            switch = cluster.switchover or {}
            to = switch.get("To", "")
            if to and not switch.get("From") and to != self.asked_switch \
                    and to != self.drp_id:
                if to in leadership.members:
                    log.info("%s asked for a switchover: handing over to it", to)
                    self.asked_switch = to
                    hand_over(to)
                else:
                    log.warning("%s asked for a switchover, but it is not in the sync set; "
                                "ignoring it until it is In-Sync", to)

        self.asked_switch = ""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sync_loop, leadership, hub)
            await leadership.keep(on_lost, on_cluster)
            nursery.cancel_scope.cancel()

    async def _sync_loop(self, leadership: Leadership, hub) -> None:
        """Keep `sync` equal to the In-Sync passives; pin both old and new members while a
        change is being written, so no write returns without a passive etcd still lists. A
        write whose answer was lost may have landed: its members stay pinned (`unsure`) until
        a later write is known to have landed."""
        unsure: frozenset[str] = frozenset()
        while leadership.lost is None:
            wanted = hub.tracker.in_sync()
            if wanted != leadership.members or unsure:
                hub.pin(leadership.members | wanted | unsure)
                try:
                    await leadership.set_sync(wanted)
                except LostLeadership:
                    return
                except EtcdError as e:
                    unsure |= wanted
                    log.warning("could not update the sync set (%s); writes wait for %s "
                                "until it is", e, ", ".join(sorted(
                                    leadership.members | unsure)) or "-")
                    await trio.sleep(0.1)
                    continue
                unsure = frozenset()
                hub.pin(wanted)
            with trio.move_on_after(0.5):
                await hub.changed()

    async def start_epoch(self, leadership: Leadership, epoch: int) -> None:
        """Before the first write of a new epoch: the sync set is empty (no passive holds this
        epoch's writes yet), so none is promoted on the strength of the old one."""
        while True:
            try:
                await leadership.set_sync(frozenset(), epoch)
                return
            except EtcdError as e:
                leadership.check()  # past the deadline: give up (NotReplicated)
                log.warning("could not write the sync set for epoch %d (%s); retrying",
                            epoch, e)
                await trio.sleep(0.1)

    # ---- both -----------------------------------------------------------------------------
    async def publish(self) -> None:
        """This node's members/<id> record, on its own lease, refreshed every second."""
        lease = 0
        if not self.address and self.endpoint:
            self.address = await trio.to_thread.run_sync(_address_towards, self.endpoint)
        while True:
            try:
                if not lease or await self.kv.keepalive(lease) <= 0:
                    # short: a crashed node's record goes soon after it stops refreshing
                    lease, _ = await self.kv.grant(self.ttl + 1)
                await self.kv.put(self.keys.member(self.drp_id),
                                  json.dumps(self.member_record()), lease)
            except EtcdError:
                pass  # campaign_loop and the active's keeper say so in the log
            with trio.move_on_after(PUBLISH_EVERY):
                await self._changed.wait()
            self._changed = trio.Event()

    def role_changed(self) -> None:
        """Publish this node's record now rather than within the second."""
        self._changed.set()

    def member_record(self) -> dict:
        return node_record(self.node, self.address, self.why_waiting)

    async def pause(self, by: str) -> None:
        await self.kv.put(self.keys.paused, json.dumps({"By": by, "At": now_text()}))
        log.warning("automatic failover paused by %s (recorded in etcd)", by)

    async def resume(self, by: str) -> None:
        await self.kv.txn([], [Delete(self.keys.paused)])
        log.info("automatic failover resumed by %s", by)


def _address_towards(url: str) -> str:
    """The local address this node reaches etcd from (a UDP "connect" sends nothing)."""
    parts = urlsplit(url)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((parts.hostname, parts.port or 2379))
            return probe.getsockname()[0]
    except OSError:
        return ""


def node_record(node, address: str = "", waiting: str = "") -> dict:
    """A node's members/<id> record: what `drpcli system ha peers` shows of it."""
    cfg, status = node.cfg, node.status()
    return {"Id": node.drp_id, "Role": status.role, "State": status.ha_status,
            "ActiveId": status.active_id, "Address": address or cfg.static_ip or "",
            "ApiPort": cfg.api_port, "Version": __version__, "Head": node.store.head,
            "Epoch": node.store.epoch, "Reason": status.reason or waiting,
            "UpdatedAt": now_text()}

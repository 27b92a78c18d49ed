"""The two roles a node can hold, each one owned lifetime.

A role is started with `nursery.start(role.run)` and owns everything that differs between
roles; entering sets its state, leaving resets it in `finally`, shielded and bounded, whether
it leaves on request (`await role.leave()`) or is cancelled (a stop, a crash of a task).

ActiveRole: epoch bump, the VIP and its gratuitous ARP, the store's write gate open with the
  replication hub as its sync hook, the hub serving passives, DHCP and TFTP (drp.plane). Leaving on request is the
  graceful handover: no new writes, the passives ack the last entry and are told it is the
  last, the sessions end, then the VIP goes (in that order: what we send after the VIP is
  removed is black-holed). Failing to take the VIP raises RoleFailed from `nursery.start`.
PassiveRole: the write gate closed, the follower. Leaving on request (a planned switch to
  active) first drains what a handing-over active still sends.

With automatic failover (drp.ha.autopilot) the active also holds the leader lease (`Lead`):
its keeper, the sync set and the deadline check on every acknowledgement live and die with
the role; a lost lease fences it (writes refused at once, then the role ends without a
handover). The passive runs the campaign for the leader key.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Awaitable, Callable

import trio

from drp import __version__
from drp.ha import enrolment
from drp.ha.active_session import Local
from drp.ha.etcd import EtcdError
from drp.ha.follower import RAN_STANDALONE, Connect, Follower
from drp.ha.nodetrust import form_cluster
from drp.ha.sender import Hub
from drp.ha.vip_control import VipControl, VipError
from drp.metrics import EPOCH, ROLE
from drp.node import bootstrap, RoleStatus
from drp.platform_id import goarch, goos
from drp.store.errors import NotReplicated

log = logging.getLogger("drp.ha")
CLEANUP_BUDGET = 3.0  # seconds shielded cleanup may take when a role ends
HOLD_TIMEOUT = 1.0  # how long the VIP waits for the answer to a switch asked through it


@dataclass
class Seams:
    """What the roles reach the world through; tests give in-memory ones."""
    vip: VipControl
    connect: Connect  # the passive's dial to the active
    fetcher: Callable[[], object]  # a new drp.ha.transfer.Fetcher (or a test's) per role
    guard: Callable[[], Awaitable[str | None]]  # why not to become active now, or None
    clock: Callable[[], float] = time.monotonic
    # The provisioning plane the active serves (drp.plane: DHCP, TFTP), each an async
    # fn(task_status); started once writes are taken, cancelled with the role.
    services: Callable[[], list] = lambda: []


@dataclass
class Lead:
    """What an etcd-elected active holds (None in manual HA)."""
    autopilot: object  # drp.ha.autopilot.Autopilot
    leadership: object  # drp.ha.leadership.Leadership
    on_lost: Callable[[str], None]  # the supervisor's: leave the role now, no handover
    hand_over: Callable[[str], None]  # the supervisor's: hand over to that passive


class RoleFailed(Exception):
    """A role could not be taken (the reason is one line, for the log and /api/v3/info)."""


class VipHold:
    """Lets an HTTP request that asked for a switch to passive *through the VIP* get its
    answer out before the VIP goes (the answer would be black-holed after): the handover sets
    `ready` just before removing the VIP, then waits (bounded) for `sent`."""

    def __init__(self, ready: trio.Event):
        self.ready, self.sent, self.used = ready, trio.Event(), False


def passive_reason(node, active_id: str = "") -> str:
    return (f"this node ({node.drp_id}) is passive: send writes to the active at "
            f"{node.cfg.ha_address.ip}" + (f" ({active_id})" if active_id
                                            and active_id != node.drp_id else ""))


def _promote(drp_id: str, cfg, form_trust: bool):
    def promote(tx):
        bootstrap(tx, drp_id)  # a node that never held data starts its own
        if form_trust:  # the first active of a cluster makes its CA
            form_cluster(tx, cfg.ha_id, cfg.ha_token)
        epoch = max(tx.epoch, tx.max_epoch()) + 1
        tx.record("ha", drp_id, "promote", {"epoch": epoch, "drp_id": drp_id}, epoch=epoch)
        tx.epoch = epoch
        return epoch
    return promote


class _Role:
    def __init__(self, node, seams: Seams, began: float, switched: bool = True):
        """began: when the switch (or, switched=False, the node's first role) was asked for."""
        self.node, self.cfg, self.store, self.seams = node, node.cfg, node.store, seams
        self.began, self.switched = began, switched
        self._leave = trio.Event()
        self._hold: VipHold | None = None
        self._to = ""
        self._left = trio.Event()
        # Serving in this role: the active once it accepts writes on the VIP, the passive once
        # it follows or has said why it cannot (systemd's READY=1 waits for the first role's).
        self.ready = trio.Event()

    def _ms(self) -> str:
        """How long the switch (or the node's first role) has taken so far, for the log."""
        since = "switch began" if self.switched else "node started taking the role"
        return f"{(self.seams.clock() - self.began) * 1000:.0f} ms after the {since}"

    async def leave(self, hold: VipHold | None = None, to: str = "") -> None:
        """Leave this role gracefully (an active: handing over, to `to` if named); returns
        once it has ended."""
        self._hold, self._to = hold, to
        self._leave.set()
        await self._left.wait()


class ActiveRole(_Role):
    name = "active"

    def __init__(self, node, seams: Seams, began: float, switched: bool = True,
                 lead: Lead | None = None):
        super().__init__(node, seams, began, switched)
        self.hub: Hub | None = None  # while serving passives
        self._status = RoleStatus("active", "Up", node.drp_id)
        self.vip_held = False
        self.lead = lead
        self.fenced: str | None = None  # why the lease was lost (the role ends, no handover)

    def status(self) -> RoleStatus:
        hub = self.hub
        return replace(self._status, passives=tuple(hub.tracker.snapshot()) if hub else ())

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        node, store, vip = self.node, self.store, self.seams.vip
        clock = self.seams.clock
        try:
            node.status_line("active: taking over")
            if self.switched:  # a node's first role followed nobody
                log.info("active: stopped following at seq %d", store.head)
            trust = getattr(node, "trust", None)  # None in in-process tests
            epoch = await store.write(_promote(node.drp_id, self.cfg, trust is not None),
                                      internal=True)
            if await store.local_get(RAN_STANDALONE):  # its data is the cluster's from now on
                await store.local_set(RAN_STANDALONE, "")
            EPOCH.set(epoch)
            log.info("active: epoch %d begins at seq %d (%s)", epoch, store.head,
                     self._ms())
            lead = self.lead
            if lead is not None:
                await self._start_epoch(epoch)
            if trust is not None:
                await trust.refresh()
                if trust.cert_problem() or trust.wants_renewal():
                    await trust.issue_own()
            await self._take_vip()
            hub = self.hub = Hub(store, self._local(), self.cfg.base_root / "ha" / "snapshots",
                                 self.cfg.ha_sync_timeout, clock)
            async with trio.open_nursery() as nursery:
                if lead is not None:
                    nursery.start_soon(lead.autopilot.hold, lead.leadership, hub, self._lost,
                                       lead.hand_over)
                nursery.start_soon(vip.announce)
                if getattr(vip, "announces", False):
                    log.info("active: announcing %s from %s with gratuitous ARP (a burst of 5 "
                             "now, another in 3 s)", vip.ip, vip.mac())
                nursery.start_soon(hub.expire_loop)
                if trust is not None:  # renewals and root rotation, for as long as it is active
                    nursery.start_soon(enrolment.keep_active, trust)
                store.accept_writes(hub.wait_synced if lead is None
                                    else lead.leadership.gate(hub.wait_synced))
                for start in self.seams.services():
                    await nursery.start(start)
                ROLE.set(1)
                node.status_line(f"active: serving on {vip.cidr} (epoch {epoch})")
                log.info("active: accepting writes (%s)", self._ms())
                self.ready.set()
                task_status.started(self)
                await self._leave.wait()
                if self.fenced is None:
                    await self._handover()
                    if lead is not None:
                        await self._release()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                store.refuse_writes(passive_reason(node))
                if self.vip_held:  # also on SIGTERM: never leave the VIP behind
                    await self._drop_vip()
                if self.hub is not None:
                    self.hub.close()  # ends every session; writes waiting on acks are released
                if self.lead is not None and self.lead.leadership.lost is None:
                    # Stopped (SIGTERM) or failed: let a passive in the sync set take over
                    # now rather than when the lease runs out.
                    with trio.move_on_after(1.0):
                        await self.lead.leadership.give_up()
                self._left.set()

    async def _start_epoch(self, epoch: int) -> None:
        try:
            await self.lead.autopilot.start_epoch(self.lead.leadership, epoch)
        except NotReplicated as e:
            raise RoleFailed(f"could not record epoch {epoch} in etcd before the leader "
                             f"lease ran out: {e}") from None
        log.info("active: sync set of epoch %d recorded in etcd (%s)", epoch, self._ms())

    def _lost(self, reason: str) -> None:
        """The lease is lost or about to be: refuse writes now (before any other node can
        hold `leader`), then let the supervisor end the role."""
        self.fenced = reason
        self.store.refuse_writes(passive_reason(self.node) + f" (fenced: {reason})")
        self._status = RoleStatus("passive", "Fenced")
        self.lead.on_lost(reason)

    async def _release(self) -> None:
        """After the handover: give up the leader key (to the named passive, if any)."""
        autopilot, leadership = self.lead.autopilot, self.lead.leadership
        autopilot.holdoff_until = self.seams.clock() + 2 * leadership.ttl
        with trio.move_on_after(CLEANUP_BUDGET):
            try:
                await leadership.release(self._to)
            except EtcdError as e:
                log.warning("could not release the leader key (%s); it expires with its "
                            "lease in %gs", e, leadership.ttl)

    def _local(self) -> Local:
        return Local(self.cfg.ha_id, self.node.drp_id, goos(), goarch(), __version__,
                     self.cfg.static_port)

    async def _take_vip(self) -> None:
        vip = self.seams.vip
        try:
            await vip.add()
        except VipError as e:
            log.error("active: could not add VIP %s: %s; staying passive. Fix the cause and "
                      "switch again (USR1 or `drpcli system active`)", vip.cidr, e)
            self.vip_held = True  # a script may have done half of it: the cleanup removes it
            raise RoleFailed(f"could not add VIP {vip.cidr}: {e}") from None
        self.vip_held = True
        log.info("active: VIP %s added to %s%s (%s)", vip.cidr, vip.interface,
                 " by the interface script" if getattr(vip, "script", None) else "",
                 self._ms())

    async def _handover(self) -> None:
        cfg, store, hub, clock = self.cfg, self.store, self.hub, self.seams.clock
        began = clock()
        self._status = RoleStatus("passive", "Handover")  # /api/v3/info: no longer active
        self.node.status_line("handover: refusing writes, waiting for passives")
        store.refuse_writes(passive_reason(self.node))
        async with store.quiesced():  # writes already inside the writer finish first
            pass
        hub.begin_handover()
        log.info("handover: refusing new writes; waiting for In-Sync passives to ack seq %d",
                 store.head)
        if await hub.wait_all_acked(cfg.ha_handover_timeout):
            log.info("handover: every In-Sync passive acked seq %d (%.0f ms)", store.head,
                     (clock() - began) * 1000)
        else:
            log.warning("handover: In-Sync passives did not ack seq %d within "
                        "--ha-handover-timeout %.1fs; switching anyway", store.head,
                        cfg.ha_handover_timeout)
        await hub.end_sessions()  # the Handover message and the close must reach them
        hold = self._hold
        if hold is not None:  # the switch was asked for through the VIP: answer first
            hold.used = True
            hold.ready.set()
            with trio.move_on_after(HOLD_TIMEOUT):
                await hold.sent.wait()
        hub.close()
        self.hub = None
        await self._drop_vip()

    async def _drop_vip(self) -> None:
        vip = self.seams.vip
        with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_BUDGET) as budget:
            try:
                await vip.remove()
                log.info("VIP %s removed from %s", vip.cidr, vip.interface)
            except VipError as e:
                log.error("could not remove VIP %s: %s", vip.cidr, e)
        if budget.cancelled_caught:
            log.error("removing VIP %s from %s took longer than %.0fs; check it is gone (`ip "
                      "addr show %s`)", vip.cidr, vip.interface, CLEANUP_BUDGET, vip.interface)
        self.vip_held = False


class PassiveRole(_Role):
    name = "passive"

    def __init__(self, node, seams: Seams, began: float, switched: bool = True,
                 campaign: Callable[[], Awaitable[None]] | None = None):
        """campaign: with automatic failover, the task that takes the leader key when it
        may (it asks the supervisor for the active role)."""
        super().__init__(node, seams, began, switched)
        self.follower = Follower(node, seams.connect, seams.fetcher(), seams.clock)
        self.campaign = campaign

    def status(self) -> RoleStatus:
        f = self.follower
        return RoleStatus("passive", f.ha_status, f.active_id, f.reason)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        node = self.node
        try:
            self.store.refuse_writes(passive_reason(node))
            ROLE.set(0)
            node.status_line(f"passive: connecting to {self.cfg.join_url}")
            log.info("passive: following the active at %s", self.cfg.join_url)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.follower.run)
                nursery.start_soon(self._ready_when_following)
                if getattr(node, "trust", None) is not None:
                    nursery.start_soon(enrolment.keep_passive, node.trust, self.cfg.join_url,
                                       self.cfg.ha_token)
                if self.campaign is not None:
                    nursery.start_soon(self.campaign)
                task_status.started(self)
                await self._leave.wait()
                # A planned switch: take what a handing-over active still sends. (Not when
                # we won the leader key: being in the sync set, we hold every acknowledged
                # write, and a crashed active sends nothing more.)
                if self.campaign is None:
                    await self.follower.drain(self.cfg.ha_handover_timeout)
                nursery.cancel_scope.cancel()
        finally:
            self._left.set()

    async def _ready_when_following(self) -> None:
        await self.follower.first_attempt.wait()
        self.ready.set()

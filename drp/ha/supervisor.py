"""The HA supervisor: one role at a time, switched by USR1/USR2 or the API.

    role = the persisted one (ha-state.json), else --ha-passive
    loop:
        start the role (nursery.start; taking ACTIVE may fail → PASSIVE)
        wait for the next switch request (same role: ignored)
        split-brain guard (to ACTIVE only; a refusal keeps the current role)
        leave the current role (ACTIVE: graceful handover; PASSIVE: drain what is sent)
        next role

Requests go through a queue and are carried out one at a time, in order: a second request
arriving mid-switch waits its turn instead of interleaving.

With automatic failover (--ha-etcd-endpoints; drp.ha.autopilot) the leader key decides: a node
starts passive, becomes active only with the key in hand (a request carrying its Leadership,
made by the passive's campaign), and leaves the active role when the lease is lost (a fence:
no handover) or for a planned switch (handover, then the key is released). USR1 on a passive
asks the active, through etcd, to hand over to it; USR2 on the active is refused while no
passive is in the sync set to take over.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from drp.durable import write_atomic
from drp.ha import guard, vip
from drp.ha.etcd import EtcdError
from drp.ha.follower import websocket_connect
from drp.ha.roles import ActiveRole, Lead, PassiveRole, RoleFailed, Seams, VipHold
from drp.ha.transfer import Fetcher
from drp.ha.trust import CLUSTER_SNI
from drp.ha.vip_control import LinkVip, VipError
from drp.node import RoleStatus

log = logging.getLogger("drp.ha")
STATE_FILE = "ha-state.json"
STARTING = RoleStatus("passive", "Connecting")  # until the first role is in place


def read_state(base_root: Path) -> bool | None:
    """The persisted role: True for passive, None when there is no (readable) state file."""
    path = base_root / STATE_FILE
    try:
        return bool(json.loads(path.read_text())["Passive"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        log.warning("ignoring unreadable %s: %s", path, e)
        return None


def write_state(base_root: Path, passive: bool) -> None:
    write_atomic(base_root / STATE_FILE, json.dumps({"Passive": passive}).encode())


def real_seams(node) -> Seams:
    """The VIP on --ha-interface, the websocket to --ha-join and HTTPS downloads (mutual TLS
    with the node's cluster certificate), the guard."""
    cfg = node.cfg
    script = str(cfg.ha_interface_script) if cfg.ha_interface_script else None
    link = LinkVip(cfg.ha_interface, str(cfg.ha_address), script)
    return Seams(
        vip=link,
        connect=websocket_connect(cfg.join_url, node.trust, cfg.ha_token),
        fetcher=lambda: Fetcher(cfg.join_url, None, cfg.base_root / "ha" / "partial",
                                tls=(node.trust.client_context, CLUSTER_SNI)),
        guard=lambda: guard.other_active(node, link),
        services=lambda: node.plane.starters() if node.plane is not None else [])


@dataclass(frozen=True)
class Request:
    role: str
    began: float
    done: trio.Event | None = None
    hold: VipHold | None = None
    leadership: object = None  # the leader key, won by this node's campaign (autopilot)
    to: str = ""  # a planned switch to passive: hand over to this passive
    fence: str = ""  # the leader lease was lost: leave the active role at once


class Supervisor:
    def __init__(self, node, seams: Seams | None = None, autopilot=None):
        self.node, self.cfg = node, node.cfg
        self.seams = seams or real_seams(node)
        self.autopilot = autopilot  # drp.ha.autopilot.Autopilot, or None: manual HA
        self._send, self._recv = trio.open_memory_channel(32)
        self.role: ActiveRole | PassiveRole | None = None  # the current (or last) role
        self.switching: str | None = None  # the role a switch in progress is heading for
        self.refusal = ""  # why the last switch did not happen (cleared by the next role)
        self._role_taken = trio.Event()  # the first role is in place

    # ---- what the node sees ---------------------------------------------------------------
    def status(self) -> RoleStatus:
        status = self.role.status() if self.role is not None else STARTING
        return replace(status, reason=self.refusal) if self.refusal else status

    def leadership(self):
        """The leader lease the active role holds (automatic failover), else None."""
        lead = getattr(self.role, "lead", None)
        return lead.leadership if lead is not None else None

    def replication_hub(self):
        role = self.role
        return role.hub if isinstance(role, ActiveRole) else None

    async def request_switch(self, role: str, done: trio.Event | None = None,
                             hold: VipHold | None = None, to: str = "") -> None:
        """Queue a switch; `done` is set once it has been carried out, refused or ignored."""
        if role not in ("active", "passive"):
            raise ValueError(f"unknown role {role!r}")
        if self.switching is not None:
            log.info("switch to %s queued: the switch to %s is still in progress", role,
                     self.switching)
        await self._send.send(Request(role, self.seams.clock(), done, hold, to=to))

    # ---- the loop -------------------------------------------------------------------------
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """(The node's `ha` is this supervisor from before the API serves: requests wait in
        the queue until we are up.)"""
        async with trio.open_nursery() as nursery:
            if getattr(self.seams.vip, "announces", False):
                nursery.start_soon(trio.to_thread.run_sync, _warm_up)
            await self._remove_leftover_vip()
            if self.autopilot is not None:
                nursery.start_soon(self.autopilot.publish)
            task_status.started()
            request = Request(self._initial_role(), self.seams.clock())
            if request.role == "active" and self.autopilot is None:
                self.switching = "active"
                if await self._refused(request.began):
                    request = replace(request, role="passive")
            while True:
                request = await self._hold_role(request)

    async def serving(self) -> None:
        """Until the first role serves (the node's READY=1): the active once it accepts writes
        on the VIP, the passive once it follows or has said why it cannot."""
        while self.role is None:
            await self._role_taken.wait()
        await self.role.ready.wait()

    async def _hold_role(self, request: Request) -> Request:
        """Take request.role, hold it until a switch away is asked for and allowed, leave
        it; returns that switch request."""
        async with trio.open_nursery() as slot:
            role = await self._start(slot, request)
            self.role, self.switching = role, None
            self._role_taken.set()
            if self.autopilot is not None:
                self.autopilot.role_changed()
            if request.done is not None:
                request.done.set()
            nxt = await self._next_request(role)
            await role.leave(nxt.hold, nxt.to)
        self.refusal = ""
        return nxt

    async def _start(self, slot: trio.Nursery, request: Request):
        name, began, switched = request.role, request.began, self.role is not None
        self.switching = name
        await trio.to_thread.run_sync(write_state, self.cfg.base_root, name == "passive")
        if name == "active":
            lead = None
            if request.leadership is not None:
                lead = Lead(self.autopilot, request.leadership, self._fenced, self._hand_over)
            try:
                return await slot.start(
                    ActiveRole(self.node, self.seams, began, switched, lead).run)
            except RoleFailed as e:
                self.refusal = str(e)
                await trio.to_thread.run_sync(write_state, self.cfg.base_root, True)
        campaign = self._campaign if self.autopilot is not None else None
        return await slot.start(
            PassiveRole(self.node, self.seams, began, switched, campaign).run)

    # ---- automatic failover: what the autopilot asks of the supervisor ---------------------
    async def _campaign(self) -> None:
        async def take(leadership) -> None:
            await self._send.send(Request("active", self.seams.clock(), leadership=leadership))
        await self.autopilot.campaign_loop(take)

    def _fenced(self, reason: str) -> None:
        self._send.send_nowait(Request("passive", self.seams.clock(), fence=reason))

    def _hand_over(self, to: str) -> None:
        self._send.send_nowait(Request("passive", self.seams.clock(), to=to))

    async def _next_request(self, role) -> Request:
        current = role.name
        while True:
            request: Request = await self._recv.receive()
            if request.role == current:
                log.info("already %s; ignoring the switch to %s", current, request.role)
            elif request.role == "passive":
                why_not = self._why_not_hand_over(role, request)
                if why_not is None:
                    log.info("switching from active to passive%s", f" ({request.fence})"
                             if request.fence else "")
                    self.switching = "passive"
                    return request
                self.refusal = f"refused to become passive: {why_not}"
                log.error("refusing to become passive: %s", why_not)
            elif request.leadership is not None:  # this node's campaign won the leader key
                log.info("switching from passive to active (holding the leader key)")
                self.switching = "active"
                return request
            elif self.autopilot is not None:  # an operator's USR1: ask the active
                try:
                    asked, outcome = await self.autopilot.ask_switchover()
                except EtcdError as e:
                    asked, outcome = False, f"could not ask for a switchover: {e}"
                if asked:
                    log.info("switch to active: %s", outcome)
                else:
                    self.refusal = f"refused to become active: {outcome}"
                    log.error("refusing to become active: %s", outcome)
            else:
                log.info("switching from passive to active")
                self.switching = "active"
                if not await self._refused(request.began):
                    return request
                self.switching = None
            if request.done is not None:
                request.done.set()

    def _why_not_hand_over(self, role, request: Request) -> str | None:
        """With automatic failover, a planned switch to passive needs a passive in the sync
        set to take over (else the cluster would be left with no active)."""
        lead = getattr(role, "lead", None)
        if lead is None or request.fence:
            return None
        members = lead.leadership.members
        if request.to and request.to not in members:
            return f"{request.to} is not in the sync set ({', '.join(sorted(members)) or 'empty'})"
        if not members:
            return ("no passive is in the sync set to take over; wait until one is In-Sync "
                    "(`drpcli system ha state`), or pause automatic failover and stop this node")
        return None

    async def _refused(self, began: float) -> bool:
        """Run the split-brain guard; True (and logged, with what to do) when it says no."""
        reason = await self.seams.guard()
        if reason:
            self.refusal = f"refused to become active: {reason}"
            log.error("refusing to become active: %s. This node stays passive. If that node "
                      "should stop being the active, switch it to passive first (`systemctl "
                      "kill -s USR2 dr-provision` or `drpcli system passive` there) or stop "
                      "it, then switch this node again (USR1 or `drpcli system active`)", reason)
            return True
        log.info("split-brain guard: no other active answers for %s (%.0f ms after the switch "
                 "began)", self.seams.vip.ip, (self.seams.clock() - began) * 1000)
        return False

    def _initial_role(self) -> str:
        kept = read_state(self.cfg.base_root)
        if self.autopilot is not None:
            # The node that would have started active gets the first go at the leader key
            # of a cluster that never had one.
            meant_passive = kept if kept is not None else self.cfg.ha_passive
            if meant_passive:
                self.autopilot.first_start_delay = self.seams.clock() + self.autopilot.ttl
            log.info("starting passive: automatic failover through etcd at %s (a node is "
                     "active only while it holds the leader key)", self.autopilot.where)
            return "passive"
        if kept is not None:
            role = "passive" if kept else "active"
            log.info("starting %s: decided by %s (--ha-passive=%s is only used when that file "
                     "is missing)", role, self.cfg.base_root / STATE_FILE,
                     str(self.cfg.ha_passive).lower())
        else:
            role = "passive" if self.cfg.ha_passive else "active"
            log.info("starting %s: decided by --ha-passive=%s (no %s yet)", role,
                     str(self.cfg.ha_passive).lower(), STATE_FILE)
        return role

    async def _remove_leftover_vip(self) -> None:
        """A VIP left on our interface by a crash would answer ARP for a node that is not
        serving; whichever role we take, it goes first (the active role adds it back)."""
        link = self.seams.vip
        try:
            held = await link.held()
            if held is False:
                return
            if held:
                log.warning("removing VIP %s left behind on %s (by a crash or kill -9?)",
                            link.cidr, link.interface)
            await link.remove()
        except VipError as e:
            log.error("could not remove a leftover VIP: %s", e)


def _warm_up() -> None:
    """Import pyroute2 and scapy now (~0.35 s together) rather than in the first switch."""
    import pyroute2  # noqa: F401
    vip._scapy()

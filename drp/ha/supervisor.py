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
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from drp.durable import write_atomic
from drp.ha import guard, vip
from drp.ha.follower import websocket_connect
from drp.ha.roles import ActiveRole, PassiveRole, RoleFailed, Seams, VipHold
from drp.ha.transfer import Fetcher
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
    """The VIP on --ha-interface, the websocket to --ha-join, HTTPS downloads, the guard."""
    cfg = node.cfg
    script = str(cfg.ha_interface_script) if cfg.ha_interface_script else None
    link = LinkVip(cfg.ha_interface, str(cfg.ha_address), script)
    return Seams(
        vip=link,
        connect=websocket_connect(cfg.join_url, cfg.ha_token),
        fetcher=lambda: Fetcher(cfg.join_url, cfg.ha_token, cfg.base_root / "ha" / "partial"),
        guard=lambda: guard.other_active(node, link))


@dataclass(frozen=True)
class Request:
    role: str
    began: float
    done: trio.Event | None = None
    hold: VipHold | None = None


class Supervisor:
    def __init__(self, node, seams: Seams | None = None):
        self.node, self.cfg = node, node.cfg
        self.seams = seams or real_seams(node)
        self._send, self._recv = trio.open_memory_channel(32)
        self.role: ActiveRole | PassiveRole | None = None  # the current (or last) role
        self.switching: str | None = None  # the role a switch in progress is heading for
        self.refusal = ""  # why the last switch did not happen (cleared by the next role)
        self._role_taken = trio.Event()  # the first role is in place

    # ---- what the node sees ---------------------------------------------------------------
    def status(self) -> RoleStatus:
        status = self.role.status() if self.role is not None else STARTING
        return replace(status, reason=self.refusal) if self.refusal else status

    def replication_hub(self):
        role = self.role
        return role.hub if isinstance(role, ActiveRole) else None

    async def request_switch(self, role: str, done: trio.Event | None = None,
                             hold: VipHold | None = None) -> None:
        """Queue a switch; `done` is set once it has been carried out, refused or ignored."""
        if role not in ("active", "passive"):
            raise ValueError(f"unknown role {role!r}")
        if self.switching is not None:
            log.info("switch to %s queued: the switch to %s is still in progress", role,
                     self.switching)
        await self._send.send(Request(role, self.seams.clock(), done, hold))

    # ---- the loop -------------------------------------------------------------------------
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """(The node's `ha` is this supervisor from before the API serves: requests wait in
        the queue until we are up.)"""
        async with trio.open_nursery() as nursery:
            if getattr(self.seams.vip, "announces", False):
                nursery.start_soon(trio.to_thread.run_sync, _warm_up)
            await self._remove_leftover_vip()
            task_status.started()
            request = Request(self._initial_role(), self.seams.clock())
            if request.role == "active":
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
            role = await self._start(slot, request.role, request.began)
            self.role, self.switching = role, None
            self._role_taken.set()
            if request.done is not None:
                request.done.set()
            nxt = await self._next_request(role.name)
            await role.leave(nxt.hold)
        self.refusal = ""
        return nxt

    async def _start(self, slot: trio.Nursery, name: str, began: float):
        self.switching = name
        await trio.to_thread.run_sync(write_state, self.cfg.base_root, name == "passive")
        if name == "active":
            try:
                return await slot.start(
                    ActiveRole(self.node, self.seams, began, self.role is not None).run)
            except RoleFailed as e:
                self.refusal = str(e)
                await trio.to_thread.run_sync(write_state, self.cfg.base_root, True)
        return await slot.start(
            PassiveRole(self.node, self.seams, began, self.role is not None).run)

    async def _next_request(self, current: str) -> Request:
        while True:
            request: Request = await self._recv.receive()
            if request.role == current:
                log.info("already %s; ignoring the switch to %s", current, request.role)
            elif request.role == "passive":
                log.info("switching from active to passive")
                self.switching = "passive"
                return request
            else:
                log.info("switching from passive to active")
                self.switching = "active"
                if not await self._refused(request.began):
                    return request
                self.switching = None
            if request.done is not None:
                request.done.set()

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

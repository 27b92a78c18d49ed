"""The HA role state machine: one role subtree at a time, switched by USR1/USR2 or the API.

Each role runs in its own nursery; a switch cancels it (after a graceful handover when leaving
ACTIVE) and starts the other. Switch requests go through a queue and are carried out one at a
time, in order: a second request arriving mid-switch waits its turn instead of interleaving.
A request for the role the node already has is logged and ignored.

Becoming active is guarded against split brain (drp.ha.guard) while the passive subtree still
follows, so a refused switch leaves the node following as before.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import trio

from drp.blob.storage import fsync_dir
from drp.ha import guard, roles, vip

log = logging.getLogger("drp.ha")
STATE_FILE = "ha-state.json"


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
    """Atomically persist the role (temp file, fsync, rename, fsync the directory)."""
    path = base_root / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.tmp")
    with open(tmp, "w") as f:
        json.dump({"Passive": passive}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(base_root)


def _warm_up() -> None:
    """Import pyroute2 and scapy now (~0.35 s together) rather than in the first switch."""
    import pyroute2  # noqa: F401
    vip._scapy()


class VipHold:
    """Lets an HTTP request that asked for a switch to passive *through the VIP* get its
    answer out before the VIP goes (the answer would be black-holed after): the handover sets
    `ready` just before removing the VIP, then waits (bounded) for `sent`."""

    def __init__(self, ready: trio.Event):
        self.ready, self.sent, self.used = ready, trio.Event(), False


class Supervisor:
    def __init__(self, node):
        self.node = node
        self.cfg = node.cfg
        self._send, self._recv = trio.open_memory_channel(32)
        self.role: str | None = None
        self.switching: str | None = None  # the role a switch in progress is heading for

    async def request_switch(self, role: str, done: trio.Event | None = None,
                             hold: VipHold | None = None) -> None:
        """Queue a switch; `done` is set once it has been carried out, refused or ignored."""
        if role not in ("active", "passive"):
            raise ValueError(f"unknown role {role!r}")
        if self.switching is not None:
            log.info("switch to %s queued: the switch to %s is still in progress", role,
                     self.switching)
        await self._send.send((role, done, hold, time.monotonic()))

    def initial_role(self) -> str:
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

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        node = self.node
        role = self.initial_role()
        node.switch_role = self.request_switch  # requests wait in the queue until we are up
        async with trio.open_nursery() as nursery:
            if self.cfg.ha_interface != "lo":
                nursery.start_soon(trio.to_thread.run_sync, _warm_up)
            await self._remove_leftover_vip()
            task_status.started()
            began, done = time.monotonic(), None
            if role == "active":
                self.switching = "active"
                if await self._refused(began):
                    role = "passive"
            while True:
                role, began, done = await self._run_role(role, began, done)

    async def _refused(self, began: float) -> bool:
        """Run the split-brain guard; True (and logged, with what to do) when it says no."""
        reason = await guard.other_active(self.node)
        if reason:
            self.node.ha_reason = f"refused to become active: {reason}"
            log.error("refusing to become active: %s. This node stays passive. If that node "
                      "should stop being the active, switch it to passive first (`systemctl "
                      "kill -s USR2 dr-provision` or `drpcli system passive` there) or stop "
                      "it, then switch this node again (USR1 or `drpcli system active`)", reason)
            return True
        log.info("split-brain guard: no other active answers for %s (%.0f ms after the switch "
                 "began)", self.cfg.ha_address.ip, (time.monotonic() - began) * 1000)
        return False

    async def _run_role(self, role: str, began: float, done: trio.Event | None):
        """Run `role` until a switch to the other role is asked for (and allowed).
        Returns the next (role, time that switch began, its done event)."""
        node = self.node
        self.switching = role
        await trio.to_thread.run_sync(write_state, self.cfg.base_root, role == "passive")
        runner = roles.run_active if role == "active" else roles.run_passive
        async with trio.open_nursery() as subtree:
            if not await subtree.start(runner, node, began):  # could not take the VIP
                role = "passive"
                await trio.to_thread.run_sync(write_state, self.cfg.base_root, True)
                await subtree.start(roles.run_passive, node, began)
            self.role, self.switching = role, None
            if done is not None:
                done.set()
            while True:
                want, done, hold, began = await self._recv.receive()
                if want == role:
                    log.info("already %s; ignoring the switch to %s", role, want)
                elif want == "active":
                    log.info("switching from passive to active")
                    self.switching = want
                    if not await self._refused(began):
                        if node.follower is not None:  # a planned switch: take the tail
                            await node.follower.drain(self.cfg.ha_handover_timeout)
                        break
                    self.switching = None
                else:
                    log.info("switching from active to passive")
                    self.switching = want
                    await roles.handover(node, hold)
                    break
                if done is not None:
                    done.set()
            node.ha_reason = ""
            subtree.cancel_scope.cancel()
        return want, began, done

    async def _remove_leftover_vip(self) -> None:
        """A VIP left on our interface by a crash would answer ARP for a node that is not
        serving; whichever role we take, it goes first (the active role adds it back)."""
        cfg = self.cfg
        iface, cidr = cfg.ha_interface, str(cfg.ha_address)
        try:
            if cfg.ha_interface_script is None:
                if not await vip.has_vip(iface, cidr):
                    return
                log.warning("removing VIP %s left behind on %s (by a crash or kill -9?)", cidr,
                            iface)
            await vip.remove_vip(iface, cidr, script=_script(cfg))
        except vip.VipError as e:
            log.error("could not remove a leftover VIP: %s", e)


def _script(cfg) -> str | None:
    return str(cfg.ha_interface_script) if cfg.ha_interface_script else None


async def run_supervisor(node, task_status=trio.TASK_STATUS_IGNORED) -> None:
    await Supervisor(node).run(task_status=task_status)

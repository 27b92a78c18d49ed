"""The HA role state machine: one role subtree at a time, switched by USR1/USR2 or the API.

Each role runs in its own nursery; a switch cancels it (after a graceful handover when leaving
ACTIVE) and starts the other. Switch requests go through a queue so a second request arriving
mid-switch waits its turn instead of interleaving.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import trio

from drp.ha import vip

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
    path = base_root / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.tmp")
    with open(tmp, "w") as f:
        json.dump({"Passive": passive}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Supervisor:
    def __init__(self, node):
        self.node = node
        self.cfg = node.cfg
        self._send, self._recv = trio.open_memory_channel(32)

    async def request_switch(self, role: str, done: trio.Event | None = None) -> None:
        """Queue a switch; `done` is set once it has been carried out (or ignored)."""
        await self._send.send((role, done))

    def initial_role(self) -> str:
        kept = read_state(self.cfg.base_root)
        if kept is not None:
            role = "passive" if kept else "active"
            log.info("starting %s: decided by %s", role, self.cfg.base_root / STATE_FILE)
        else:
            role = "passive" if self.cfg.ha_passive else "active"
            log.info("starting %s: decided by --ha-passive=%s (no %s yet)", role,
                     str(self.cfg.ha_passive).lower(), STATE_FILE)
        return role

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from drp.ha import guard, roles
        node, cfg = self.node, self.cfg
        await self._remove_leftover_vip()
        role = self.initial_role()
        node.switch_role = self.request_switch
        task_status.started()
        done: trio.Event | None = None
        while True:
            if role == "active":
                reason = await guard.other_active(node)
                if reason:
                    log.error("refusing to become active: %s. Stay passive; make that node "
                              "passive first (systemctl kill -s USR2 dr-provision there) or "
                              "stop it, then send USR1 here again", reason)
                    role = "passive"
            await trio.to_thread.run_sync(write_state, cfg.base_root, role == "passive")
            runner = roles.run_active if role == "active" else roles.run_passive
            async with trio.open_nursery() as subtree:
                await subtree.start(runner, node)
                if done is not None:
                    done.set()
                while True:
                    want, done = await self._recv.receive()
                    if want != role:
                        break
                    log.info("already %s; ignoring the switch to %s", role, want)
                    if done is not None:
                        done.set()
                log.info("switching from %s to %s", role, want)
                if role == "active":
                    await roles.handover(node)
                subtree.cancel_scope.cancel()
            role = want

    async def _remove_leftover_vip(self) -> None:
        """A VIP left on our interface by a crash would answer ARP for a node that is not
        serving; whichever role we take, it goes first (the active role adds it back)."""
        cfg = self.cfg
        try:
            if cfg.ha_interface_script is None and await vip.has_vip(cfg.ha_interface,
                                                                     str(cfg.ha_address)):
                log.warning("removing VIP %s left behind on %s", cfg.ha_address,
                            cfg.ha_interface)
            await vip.remove_vip(cfg.ha_interface, str(cfg.ha_address),
                                 script=_script(cfg))
        except vip.VipError as e:
            log.error("could not remove a leftover VIP: %s", e)


def _script(cfg) -> str | None:
    return str(cfg.ha_interface_script) if cfg.ha_interface_script else None


async def run_supervisor(node, task_status=trio.TASK_STATUS_IGNORED) -> None:
    await Supervisor(node).run(task_status=task_status)

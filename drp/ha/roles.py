"""The two role subtrees the supervisor runs: ACTIVE and PASSIVE, plus the handover between.

Becoming active: stop following (the passive subtree was cancelled, its last batch applied),
bump the epoch, take the VIP, announce it with gratuitous ARP, accept writes, serve replication.
Becoming passive: refuse writes, let the passives ack the last entry, drop the VIP, follow.
"""
from __future__ import annotations

import logging
import time

import trio

from drp import node as nodemod
from drp.ha import vip
from drp.ha.follower import Follower
from drp.ha.sender import Hub
from drp.metrics import ROLE

log = logging.getLogger("drp.ha")
CLEANUP_BUDGET = 3.0  # seconds shielded cleanup may take when a role is cancelled


def _vip_args(cfg) -> tuple[str, str, str | None]:
    script = str(cfg.ha_interface_script) if cfg.ha_interface_script else None
    return cfg.ha_interface, str(cfg.ha_address), script


def _promote(drp_id: str):
    def promote(tx):
        nodemod.bootstrap(tx, drp_id)  # a node that never held data starts its own
        epoch = max(tx.epoch, *(r[0] for r in tx.query("SELECT MAX(epoch) FROM epochs")
                                if r[0] is not None)) + 1
        tx.record("ha", drp_id, "promote", {"epoch": epoch, "drp_id": drp_id}, epoch=epoch)
        tx.epoch = epoch
        return epoch
    return promote


async def run_active(node, task_status=trio.TASK_STATUS_IGNORED) -> None:
    cfg, store = node.cfg, node.store
    started = time.monotonic()
    epoch = await store.write(_promote(node.drp_id), internal=True)
    log.info("active: epoch %d begins at seq %d", epoch, store.head)
    iface, cidr, script = _vip_args(cfg)
    await vip.add_vip(iface, cidr, script=script)
    log.info("active: VIP %s added to %s%s", cidr, iface, " (by the interface script)"
             if script else "")
    hub = Hub(node)
    try:
        async with trio.open_nursery() as nursery:
            if iface != "lo":
                nursery.start_soon(vip.garp_schedule, iface, str(cfg.ha_address.ip))
            nursery.start_soon(hub.expire_loop)
            node.hub = hub
            store.commit_hooks.append(hub.wait_synced)
            node.ha_role, node.ha_status, node.ha_active_id = "active", "Up", node.drp_id
            node.passive_states = hub.tracker.snapshot
            store.refuse_writes = None
            ROLE.set(1)
            node.status_line(f"active: serving on {cidr} (epoch {epoch})")
            log.info("active: accepting writes (%.0f ms after the switch began)",
                     (time.monotonic() - started) * 1000)
            task_status.started()
            await trio.sleep_forever()
    finally:
        store.refuse_writes = _passive_reason(node)
        await _drop_vip(node)  # also on SIGTERM: never leave the VIP behind
        node.hub = None
        if hub.wait_synced in store.commit_hooks:
            store.commit_hooks.remove(hub.wait_synced)
        hub._wake()
        node.passive_states = lambda: []


def _passive_reason(node) -> str:
    return (f"this node ({node.drp_id}) is passive: send writes to the active at "
            f"{node.cfg.ha_address.ip}" + (f" ({node.ha_active_id})" if node.ha_active_id
                                            and node.ha_active_id != node.drp_id else ""))


async def handover(node) -> None:
    """Leaving ACTIVE gracefully: no new writes, the passives get the last entry, VIP goes."""
    cfg, store, hub = node.cfg, node.store, node.hub
    store.refuse_writes = _passive_reason(node)
    async with store._writer:  # writes already inside the writer finish first
        pass
    if hub is not None and not await hub.wait_all_acked(cfg.ha_handover_timeout):
        log.warning("handover: In-Sync passives did not ack seq %d within "
                    "--ha-handover-timeout %.1fs; switching anyway", store.head,
                    cfg.ha_handover_timeout)
    await _drop_vip(node)


async def _drop_vip(node) -> None:
    iface, cidr, script = _vip_args(node.cfg)
    with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_BUDGET):
        try:
            await vip.remove_vip(iface, cidr, script=script)
            log.info("VIP %s removed from %s", cidr, iface)
        except vip.VipError as e:
            log.error("could not remove VIP %s: %s", cidr, e)


async def run_passive(node, task_status=trio.TASK_STATUS_IGNORED) -> None:
    node.store.refuse_writes = _passive_reason(node)
    node.ha_role, node.ha_status = "passive", "Connecting"
    ROLE.set(0)
    node.status_line(f"passive: connecting to {node.cfg.join_url}")
    follower = Follower(node)
    task_status.started()
    await follower.run()

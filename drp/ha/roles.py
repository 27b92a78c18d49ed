"""The two role subtrees the supervisor runs: ACTIVE and PASSIVE, plus the handover between.

Becoming active: stop following (the passive subtree was cancelled, its last batch applied),
bump the epoch, take the VIP, announce it with gratuitous ARP, accept writes, serve replication.
Becoming passive: refuse writes, let the passives ack the last entry, drop the VIP, end the
replication sessions, follow whoever takes the VIP next.

Both runners take `began` (time.monotonic() when the switch was asked for) and report
`task_status.started(True)` once the role is in place; run_active reports False when it could
not take the VIP (the supervisor then stays passive).
"""
from __future__ import annotations

import logging
import time

import trio

from drp import node as nodemod
from drp.ha import vip
from drp.ha.follower import Follower
from drp.ha.sender import Hub
from drp.metrics import EPOCH, ROLE

log = logging.getLogger("drp.ha")
CLEANUP_BUDGET = 3.0  # seconds shielded cleanup may take when a role is cancelled
HOLD_TIMEOUT = 1.0  # how long the VIP waits for the answer to a switch asked through it


def _vip_args(cfg) -> tuple[str, str, str | None]:
    script = str(cfg.ha_interface_script) if cfg.ha_interface_script else None
    return cfg.ha_interface, str(cfg.ha_address), script


def _ms(began: float) -> str:
    return f"{(time.monotonic() - began) * 1000:.0f} ms after the switch began"


def _promote(drp_id: str):
    def promote(tx):
        nodemod.bootstrap(tx, drp_id)  # a node that never held data starts its own
        epoch = max(tx.epoch, *(r[0] for r in tx.query("SELECT MAX(epoch) FROM epochs")
                                if r[0] is not None)) + 1
        tx.record("ha", drp_id, "promote", {"epoch": epoch, "drp_id": drp_id}, epoch=epoch)
        tx.epoch = epoch
        return epoch
    return promote


async def run_active(node, began: float | None = None,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    cfg, store = node.cfg, node.store
    began = time.monotonic() if began is None else began
    node.status_line("active: taking over")
    log.info("active: stopped following at seq %d", store.head)
    epoch = await store.write(_promote(node.drp_id), internal=True)
    EPOCH.set(epoch)
    log.info("active: epoch %d begins at seq %d (%s)", epoch, store.head, _ms(began))
    iface, cidr, script = _vip_args(cfg)
    try:
        await vip.add_vip(iface, cidr, script=script)
    except vip.VipError as e:
        log.error("active: could not add VIP %s: %s; staying passive. Fix the cause and switch "
                  "again (USR1 or `drpcli system active`)", cidr, e)
        node.ha_reason = f"could not add VIP {cidr}: {e}"
        await _drop_vip(node)  # a script may have done half of it
        task_status.started(False)
        return
    log.info("active: VIP %s added to %s%s (%s)", cidr, iface,
             " by the interface script" if script else "", _ms(began))
    hub = Hub(node)
    hub.vip_held = True
    try:
        async with trio.open_nursery() as nursery:
            if iface != "lo":
                nursery.start_soon(vip.garp_schedule, iface, str(cfg.ha_address.ip))
                log.info("active: announcing %s from %s with gratuitous ARP (a burst of 5 now, "
                         "another in 3 s)", cfg.ha_address.ip, vip.interface_mac(iface))
            nursery.start_soon(hub.expire_loop)
            node.hub = hub
            store.commit_hooks.append(hub.wait_synced)
            node.ha_role, node.ha_status, node.ha_active_id = "active", "Up", node.drp_id
            node.passive_states = hub.tracker.snapshot
            store.refuse_writes = None
            ROLE.set(1)
            node.status_line(f"active: serving on {cidr} (epoch {epoch})")
            log.info("active: accepting writes (%s)", _ms(began))
            task_status.started(True)
            await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            store.refuse_writes = _passive_reason(node)
            if hub.vip_held:
                await _drop_vip(node)  # also on SIGTERM: never leave the VIP behind
            _close_hub(node, hub)


def _close_hub(node, hub) -> None:
    if node.hub is hub:
        node.hub = None
    if hub.wait_synced in node.store.commit_hooks:
        node.store.commit_hooks.remove(hub.wait_synced)
    hub.close()  # ends every replication session; writes waiting on acks are released
    node.passive_states = lambda: []


def _passive_reason(node) -> str:
    return (f"this node ({node.drp_id}) is passive: send writes to the active at "
            f"{node.cfg.ha_address.ip}" + (f" ({node.ha_active_id})" if node.ha_active_id
                                            and node.ha_active_id != node.drp_id else ""))


async def handover(node, hold=None) -> None:
    """Leaving ACTIVE gracefully: no new writes, the passives ack the last entry and are told
    it is the last (Handover), the replication sessions end, then the VIP goes (in this order:
    whatever we send after the VIP is removed is black-holed). The passives reconnect to
    whoever takes the VIP next."""
    cfg, store, hub = node.cfg, node.store, node.hub
    began = time.monotonic()
    node.ha_role, node.ha_status = "passive", "Handover"  # /api/v3/info: no longer active
    node.ha_active_id = ""
    node.status_line("handover: refusing writes, waiting for passives")
    store.refuse_writes = _passive_reason(node)
    async with store._writer:  # writes already inside the writer finish first
        pass
    if hub is not None:
        hub.begin_handover()
    log.info("handover: refusing new writes; waiting for In-Sync passives to ack seq %d",
             store.head)
    if hub is not None:
        if await hub.wait_all_acked(cfg.ha_handover_timeout):
            log.info("handover: every In-Sync passive acked seq %d (%.0f ms)", store.head,
                     (time.monotonic() - began) * 1000)
        else:
            log.warning("handover: In-Sync passives did not ack seq %d within "
                        "--ha-handover-timeout %.1fs; switching anyway", store.head,
                        cfg.ha_handover_timeout)
    if hub is not None:  # the Handover message and the close must reach the passives
        await hub.end_sessions()
    if hold is not None:  # the switch was asked for through the VIP: answer first
        hold.used = True
        hold.ready.set()
        with trio.move_on_after(HOLD_TIMEOUT):
            await hold.sent.wait()
    if hub is not None:
        _close_hub(node, hub)
    await _drop_vip(node)
    if hub is not None:
        hub.vip_held = False


async def _drop_vip(node) -> None:
    iface, cidr, script = _vip_args(node.cfg)
    with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_BUDGET) as budget:
        try:
            await vip.remove_vip(iface, cidr, script=script)
            log.info("VIP %s removed from %s", cidr, iface)
        except vip.VipError as e:
            log.error("could not remove VIP %s: %s", cidr, e)
    if budget.cancelled_caught:
        log.error("removing VIP %s from %s took longer than %.0fs; check it is gone (`ip addr "
                  "show %s`)", cidr, iface, CLEANUP_BUDGET, iface)


async def run_passive(node, began: float | None = None,
                      task_status=trio.TASK_STATUS_IGNORED) -> None:
    node.store.refuse_writes = _passive_reason(node)
    node.ha_role, node.ha_status = "passive", "Connecting"
    ROLE.set(0)
    node.status_line(f"passive: connecting to {node.cfg.join_url}")
    log.info("passive: following the active at %s", node.cfg.join_url)
    follower = Follower(node)
    node.follower = follower
    task_status.started(True)
    try:
        await follower.run()
    finally:
        node.follower = None

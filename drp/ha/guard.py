"""Split-brain guard: before taking the VIP, make sure no other node is serving as active.

Two looks: an ARP probe for the VIP (answered by another MAC: someone holds it) and, when the
VIP is held or --ha-join points elsewhere, /api/v3/info there (`ha_is_active` and `id`).

- VIP held and an active with another drp-id behind it: refuse.
- VIP held by a node handing over (it answers, no longer active): wait for it to let go,
  bounded, so `USR2 there; USR1 here` typed back to back works.
- VIP held but no dr-provision answers behind it (a crashed or kill -9'd node whose kernel
  still has the address): take over with a warning; that is what crash failover needs.
"""
from __future__ import annotations

import logging
import secrets
import ssl
import time
from urllib.parse import urlparse

import httpx
import trio

from drp.ha.trust import CLUSTER_SNI
from drp.ha.vip_control import VipControl, VipError

log = logging.getLogger("drp.ha")
INFO_TIMEOUT = 1.0
RELEASE_POLL = 0.05  # while a node hands over, how often to look whether it let the VIP go


async def _info_at(url: str, trust, my_id: str) -> dict | None:
    """/api/v3/info of a *different* dr-provision of this cluster answering at url, if any:
    asked over mutual TLS with this node's cluster certificate (no token is sent; a server
    without a certificate of this cluster gets nothing). A node not enrolled yet has no
    certificate: it asks the unauthenticated discovery route, which only an active answers."""
    base = url.rstrip("/") + "/api/v3"
    try:
        if trust is not None and trust.cert is not None:
            async with httpx.AsyncClient(verify=trust.client_context(),
                                         timeout=INFO_TIMEOUT) as http:
                resp = await http.get(base + "/info", extensions={"sni_hostname": CLUSTER_SNI})
            info = resp.json() if resp.status_code == 200 else {}
        else:
            async with httpx.AsyncClient(verify=False, timeout=INFO_TIMEOUT) as http:
                resp = await http.get(base + "/system/ha/discover",
                                      params={"nonce": secrets.token_hex(16)})
            found = resp.json() if resp.status_code == 200 else {}
            info = {"id": found.get("DrpId"), "ha_is_active": True} if found else {}
    except (httpx.HTTPError, ssl.SSLError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("id") in (None, my_id):
        return None
    return info


async def _probe(link: VipControl) -> str | None:
    try:
        return await link.holder()
    except VipError as e:
        log.warning("split-brain guard: ARP probe failed: %s", e)
        return None


async def _wait_release(link: VipControl, holder: str, other_id: str,
                        timeout: float) -> str | None:
    """Wait (bounded) for a node that is handing over to drop the VIP. Returns the MAC still
    answering for it at the end, or None once it is gone."""
    ip = link.ip
    log.info("VIP %s is still held by %s (%s), which is handing over; waiting up to %.0fs for "
             "it to let go", ip, other_id, holder, timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await trio.sleep(RELEASE_POLL)
        holder = await _probe(link)
        if holder is None:
            log.info("VIP %s released by %s", ip, other_id)
            return None
    return holder


async def other_active(node, link: VipControl) -> str | None:
    """Why this node must not become active now, or None when it may."""
    cfg = node.cfg
    vip_ip = str(cfg.ha_address.ip)
    join = cfg.join_url
    join_is_vip = urlparse(join).hostname == vip_ip
    vip_url = f"https://{vip_ip}:{cfg.api_port}/"
    holder = await _probe(link)  # (nobody answers on loopback)
    if holder:
        info = await _info_at(vip_url, node.trust, node.drp_id)
        if info and not info.get("ha_is_active"):
            holder = await _wait_release(link, holder, info["id"],
                                         cfg.ha_handover_timeout + 2)
            if holder:
                info = await _info_at(vip_url, node.trust, node.drp_id)
        if holder and info and info.get("ha_is_active"):
            return (f"VIP {vip_ip} is answered by {holder}, where {info['id']} serves as "
                    "active")
        if holder and info:
            return (f"VIP {vip_ip} is still held by {info['id']} ({holder}), which is not "
                    f"active: remove it there (`ip addr del {cfg.ha_address} dev "
                    f"{cfg.ha_interface}`)")
        if holder:
            log.warning("VIP %s is still answered by %s but no dr-provision answers there (a "
                        "crashed node?); taking it over", vip_ip, holder)
    if not join_is_vip:  # when the join URL is the VIP, the ARP probe already answered this
        info = await _info_at(join, node.trust, node.drp_id)
        deadline = time.monotonic() + cfg.ha_handover_timeout + 2
        while info and info.get("ha_status") == "Handover" and time.monotonic() < deadline:
            await trio.sleep(RELEASE_POLL)  # let it finish handing its last entries over
            info = await _info_at(join, node.trust, node.drp_id)
        if info and info.get("ha_is_active"):
            return f"{join} is served by another active ({info['id']})"
    return None

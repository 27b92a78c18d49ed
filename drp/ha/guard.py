"""Split-brain guard: before taking the VIP, make sure no other node is serving as active."""
from __future__ import annotations

import logging
from urllib.parse import urlparse

import httpx

from drp.ha import vip

log = logging.getLogger("drp.ha")
ARP_PROBE_TIMEOUT = 0.15  # ARP answers on a LAN take well under a millisecond
INFO_TIMEOUT = 1.0


async def _active_at(url: str, token: str, my_id: str) -> str | None:
    """The drp-id of a *different* node answering at url as active, if any."""
    try:
        async with httpx.AsyncClient(verify=False, timeout=INFO_TIMEOUT) as http:
            resp = await http.get(url.rstrip("/") + "/api/v3/info",
                                  headers={"Authorization": f"Bearer {token}"})
        info = resp.json() if resp.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return None
    if info.get("ha_is_active") and info.get("id") not in (None, my_id):
        return info["id"]
    return None


async def other_active(node) -> str | None:
    """Why this node must not become active now, or None when it may."""
    cfg = node.cfg
    vip_ip = str(cfg.ha_address.ip)
    join = cfg.join_url
    join_is_vip = urlparse(join).hostname == vip_ip
    holder = None
    if cfg.ha_interface != "lo":
        try:
            holder = await vip.arp_probe(cfg.ha_interface, vip_ip, timeout=ARP_PROBE_TIMEOUT)
        except vip.VipError as e:
            log.warning("split-brain guard: ARP probe failed: %s", e)
    if holder:
        other = await _active_at(f"https://{vip_ip}:{cfg.api_port}/", cfg.ha_token, node.drp_id)
        if other:
            return f"VIP {vip_ip} is answered by {holder}, where {other} serves as active"
        log.warning("VIP %s is still answered by %s but no active dr-provision answers there "
                    "(a crashed node?); taking it over", vip_ip, holder)
    if not join_is_vip:  # when the join URL is the VIP, the ARP probe already answered this
        other = await _active_at(join, cfg.ha_token, node.drp_id)
        if other:
            return f"{join} is served by another active ({other})"
    return None

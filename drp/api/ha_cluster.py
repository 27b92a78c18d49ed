"""The operator's view of automatic failover, with dr-provision 4.6's names
(`drpcli system ha state|peers|leader|pause|resume`).

/api/v3/system/ha/state    GET: the cluster as etcd holds it, and this node's own record
/api/v3/system/ha/peers    GET: every node's members/<id> record
/api/v3/system/ha/leader   GET: who holds the leader key, and where its API is
/api/v3/system/ha/pause    POST: stop automatic failover (recorded in etcd), answer the state
/api/v3/system/ha/resume   POST: start it again, answer the state

Without --ha-etcd-endpoints (or without --ha-enabled) there is no etcd to ask: the reads answer
from this node's own view (Mode "manual"), and pause/resume are refused with 409.
"""
from __future__ import annotations

from quart import Blueprint, current_app, request

from drp.api.errors import ApiError
from drp.api.respond import json_response
from drp.ha.autopilot import node_record
from drp.ha.etcd import EtcdError

bp = Blueprint("ha_cluster", __name__, url_prefix="/api/v3")
NOT_CONFIGURED = "automatic failover is not configured: start the nodes with --ha-etcd-endpoints"


def _autopilot():
    """The node's drp.ha.autopilot.Autopilot, or None in manual HA (or with HA off)."""
    ha = current_app.node.ha
    return getattr(ha, "autopilot", None) if ha is not None else None


def _unreachable(err: EtcdError, key: str) -> ApiError:
    # EtcdError's message is already the one-line reason ("no etcd member answered (...)")
    return ApiError(503, f"cannot reach the cluster's etcd: {err}", model="ha", key=key,
                    type_="HA_ETCD")


def _manual_state(node) -> dict:
    status = node.status()
    leader = status.active_id or (node.drp_id if status.role != "passive" else "")
    return {"Mode": "manual", "Endpoints": [], "Prefix": "", "Leader": leader,
            "Epoch": node.store.epoch, "Sync": [], "Paused": False, "PausedBy": "",
            "Switchover": None, "Members": [node_record(node)],
            "ThisNode": node_record(node)}


def _members(cluster) -> list[dict]:
    """Each node's record, with its lag: how many entries it is behind the leader's head."""
    leader = cluster.members.get(cluster.leader.value, {}) if cluster.leader else {}
    top = leader.get("Head")
    return [{**record, "Id": record.get("Id") or drp_id,
             "Lag": max(0, top - record.get("Head", 0)) if isinstance(top, int) else None}
            for drp_id, record in sorted(cluster.members.items())]


async def _state(key: str) -> dict:
    node, pilot = current_app.node, _autopilot()
    if pilot is None:
        return _manual_state(node)
    try:
        cluster = await pilot.read()
    except EtcdError as e:
        raise _unreachable(e, key) from None
    paused = cluster.paused
    return {"Mode": "etcd", "Endpoints": list(node.cfg.ha_etcd_endpoints or ()),
            "Prefix": pilot.keys.prefix,
            "Leader": cluster.leader.value if cluster.leader is not None else "",
            "Epoch": cluster.sync.epoch if cluster.sync is not None else 0,
            "Sync": sorted(cluster.sync.members) if cluster.sync is not None else [],
            "Paused": paused is not None, "PausedBy": (paused or {}).get("By", ""),
            "Switchover": cluster.switchover, "Members": _members(cluster),
            "ThisNode": pilot.member_record()}


@bp.get("/system/ha/state")
async def state():
    return json_response(await _state("state"))


@bp.get("/system/ha/peers")
async def peers():
    return json_response((await _state("peers"))["Members"])


@bp.get("/system/ha/leader")
async def leader():
    found = await _state("leader")
    drp_id = found["Leader"]
    if not drp_id:
        why = ("no node holds the leader key" if found["Mode"] == "etcd"
               else "this node knows of no active")
        raise ApiError(404, f"there is no leader: {why}", model="ha", key="leader",
                       type_="NotFound")
    record = next((m for m in found["Members"] if m.get("Id") == drp_id), {})
    # (a leader whose record has expired or is not published yet: its address is unknown)
    return json_response({"Leader": drp_id, "Address": record.get("Address", ""),
                          "ApiPort": record.get("ApiPort", 0)})


async def _pause_or_resume(what: str):
    pilot = _autopilot()
    if pilot is None:
        raise ApiError(409, NOT_CONFIGURED, model="ha", key=what, type_="HA_MANUAL")
    by = str(getattr(request, "user", {}).get("Name", "")) or "?"
    try:
        await (pilot.pause(by) if what == "pause" else pilot.resume(by))
    except EtcdError as e:
        raise _unreachable(e, what) from None
    return json_response(await _state(what))


@bp.post("/system/ha/pause")
async def pause():
    return await _pause_or_resume("pause")


@bp.post("/system/ha/resume")
async def resume():
    return await _pause_or_resume("resume")

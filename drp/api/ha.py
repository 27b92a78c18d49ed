"""HA endpoints: the replication websocket, catch-up downloads, and role switching.

/api/v3/ha/replicate      websocket a passive dials (its cluster certificate: drp/ha/nodetrust.py)
/api/v3/ha/snapshot/<id>  the snapshot file announced to a passive (Range for resume)
/api/v3/ha/blobs/<path>   a blob's current bytes (Range, X-DRP-SHA256SUM)
/api/v3/system/active     switch this node to active (as SIGUSR1 does)
/api/v3/system/passive    switch this node to passive (as SIGUSR2 does); ?to=<drp-id> hands
                          the leader key to that passive (automatic failover only)
"""
from __future__ import annotations

import json
import logging

import trio
from quart import Blueprint, Response, current_app, request, websocket

from drp.api.errors import ApiError
from drp.api.respond import websocket_scope
from drp.api.system import node_info
from drp.blob import storage
from drp.blob.send import Opened, blob_response, open_blob
from drp.ha import protocol as p
from drp.ha.certs import Untrusted
from drp.ha.roles import VipHold
from drp.ha.trust import peer_certificate

bp = Blueprint("ha", __name__, url_prefix="/api/v3")
log = logging.getLogger("drp.ha.active")
REPLICATE_PATH = "/api/v3/ha/replicate"
SWITCH_TIMEOUT = 60.0
HELLO_WAIT = 2.0  # a refused passive's hello is waited for this long at most


@bp.websocket("/ha/replicate")
async def replicate():
    node = current_app.node
    address = websocket.remote_addr or "?"
    # Authenticated here (not in before_websocket) so a refusal reaches the passive as a
    # reason it can log, and is logged here too. Only a cluster certificate is accepted: a
    # token alone (the HA token, any superuser's) gets no entry.
    try:
        if node.trust is None:
            raise Untrusted("this node has no cluster trust (--ha-enabled)")
        await node.trust.refresh()
        peer_id = node.trust.verify(peer_certificate(websocket.scope))
    except Untrusted as e:
        reason = (f"{e}: a passive replicates with its cluster certificate, which it gets by "
                  "enrolling with the HA token (RS_HA_TOKEN)")
        log.warning("refusing replication from %s: %s", address, reason)
        await _refuse(reason, "untrusted")
        return
    hub = node.ha.replication_hub() if node.ha is not None else None
    if hub is None:
        active_id = node.status().active_id
        reason = (f"this node ({node.drp_id}) is not the active"
                  + (f"; the active is {active_id}" if active_id else "")
                  + ": point --ha-join (RS_HA_JOIN) at the active or the VIP")
        await _refuse(reason, "not_active")
        return
    try:
        with websocket_scope(node):
            await hub.serve(websocket, address, peer_id)
    except p.ProtocolError as e:
        log.warning("replication session with %s ended: %s", address, e)


async def _refuse(reason: str, code: str) -> None:
    """Refuse once the passive's hello is in (bounded): a refusal sent before it would close
    the connection under the passive's feet, and it would see a close, not the reason."""
    with trio.move_on_after(HELLO_WAIT):
        await websocket.receive()
    await websocket.send(p.encode(p.Refuse(reason, code)))


@bp.route("/ha/snapshot/<snap_id>", methods=["GET", "HEAD"])
async def snapshot(snap_id: str):
    ha = current_app.node.ha  # superuser only: checked before (drp.api.rbac)
    hub = ha.replication_hub() if ha is not None else None
    path = hub.snapshots.get(snap_id) if hub else None
    if path is None:
        raise ApiError(404, f"no snapshot {snap_id} (it is deleted once installed)",
                       model="ha", key=snap_id, type_="NotFound")
    try:
        fd, size = await trio.to_thread.run_sync(storage.open_regular, path)
    except FileNotFoundError:
        raise ApiError(404, f"no snapshot {snap_id}", model="ha", key=snap_id) from None
    return blob_response(request, Opened(fd, size, None), model="ha", key=snap_id)


@bp.route("/ha/blobs/<path:path>", methods=["GET", "HEAD"])
async def blob(path: str):
    store, base = current_app.node.store, current_app.node.cfg.base_root
    try:
        opened = await open_blob(store, lambda: storage.safe_path(base, path), path)
    except storage.PathError as e:
        raise ApiError(e.code, str(e), model="ha", key=path) from None
    except FileNotFoundError:
        raise ApiError(404, f"{path} not found", model="ha", key=path,
                       type_="NotFound") from None
    # A job log is served up to its recorded size: an append may be past it on disk already.
    size = opened.recorded_size if path.startswith("job-logs/") else None
    return blob_response(request, opened, model="ha", key=path, size=size)


async def _switch(role: str, to: str = ""):
    node = current_app.node
    if node.ha is None:
        raise ApiError(409, "HA is not enabled on this node (--ha-enabled)", model="system",
                       key=role)
    if to and getattr(node.ha, "autopilot", None) is None:
        raise ApiError(409, "naming the next active needs automatic failover "
                       "(--ha-etcd-endpoints); in manual HA send USR1 (`drpcli system active`) "
                       "to the passive that should take over", model="system", key=role)
    done = trio.Event()
    local = (request.scope.get("server") or ("", 0))[0]
    hold = VipHold(done) if role == "passive" and local == str(node.cfg.ha_address.ip) \
        else None
    await node.ha.request_switch(role, done, hold, to=to)
    with trio.move_on_after(SWITCH_TIMEOUT):
        await done.wait()
        # With automatic failover a passive only asks the active to hand over: the answer
        # waits until the leader key has reached this node.
        while getattr(node.ha, "autopilot", None) is not None and role == "active" and \
                node.status().role != role and not node.status().reason:
            await trio.sleep(0.05)
    status = node.status()
    if done.is_set() and status.role != role and status.reason:
        raise ApiError(409, status.reason, model="system", key=role)
    body = json.dumps(await node_info()).encode()
    if hold is None or not hold.used:
        return Response(body, content_type="application/json")

    async def answer_then_release():  # the VIP goes once this answer is on the wire
        yield body
        hold.sent.set()
    return Response(answer_then_release(), content_type="application/json",
                    headers={"Content-Length": str(len(body))})


@bp.post("/system/active")
async def system_active():
    return await _switch("active")


@bp.post("/system/passive")
async def system_passive():
    return await _switch("passive", request.args.get("to", ""))

"""Cluster trust over the API: discovery and enrolment of joining nodes, renewal, removal,
rotation of the HA token and of the CA root (drp/ha/nodetrust.py holds the material).

/api/v3/system/ha/discover?nonce=N   GET, no credentials: the bundle, proven with the HA token
/api/v3/system/ha/enroll             POST {DrpId, Csr}, Bearer <HA token>: a node certificate
/api/v3/system/ha/renew              POST {Csr}, the node's certificate: a fresh one
/api/v3/system/ha/trust              GET: this node's certificate, roots and removed list
/api/v3/system/ha/remove/<drp-id>    POST: refuse that node from now on (its stream is cut)
/api/v3/system/ha/admit/<drp-id>     POST: take it off the removed list (it enrols again)
/api/v3/system/ha/rotate-token       POST: a new HA token for enrolment (the old one stops)
/api/v3/system/ha/rotate-ca          POST: a new root now (older roots trusted until expiry)
"""
from __future__ import annotations

import hmac
import json
import logging
import re
import secrets

import trio
from quart import Blueprint, Response, current_app, request

from drp.api.errors import ApiError
from drp.api.objects import json_body
from drp.ha import trust
from drp.ha.certs import Untrusted
from drp.ha.nodetrust import REMOVED_ROW, SECRETS, TOKEN_ROW, enrolment_proof, utcnow

bp = Blueprint("ha_trust", __name__, url_prefix="/api/v3/system/ha")
log = logging.getLogger("drp.ha.trust")
PUBLIC_PATHS = frozenset({"/api/v3/system/ha/discover", "/api/v3/system/ha/enroll"})
FAILED_ENROLMENT_WAIT = 1.0  # a wrong token is answered slowly: no fast guessing
_NONCE = re.compile(r"[0-9a-fA-F]{16,128}")


def _json(body) -> Response:
    return Response(json.dumps(body), content_type="application/json")


def _trust():
    nt = current_app.node.trust
    if nt is None:
        raise ApiError(409, "HA is not enabled on this node (--ha-enabled): it has no cluster "
                       "trust", model="ha", key="trust")
    return nt


async def _active_trust(what: str):
    """The active's trust, refreshed: only the active issues (its store is the cluster's)."""
    node, nt = current_app.node, _trust()
    hub = node.ha.replication_hub() if node.ha is not None else None
    if hub is None:
        active = node.status().active_id
        raise ApiError(409, f"{what}: this node ({node.drp_id}) is not the active"
                       + (f"; the active is {active}" if active else ""), model="ha",
                       key=node.drp_id)
    await nt.refresh()
    if nt.ca is None:
        raise ApiError(409, f"{what}: the cluster has no CA yet", model="ha", key=node.drp_id)
    return nt


@bp.get("/discover")
async def discover():
    nonce = request.args.get("nonce", "")
    if not _NONCE.fullmatch(nonce):
        raise ApiError(422, "nonce must be 16 to 128 hex digits", model="ha", key="discover")
    nt = await _active_trust("discovery")
    ha_id, who = request.args.get("ha_id", ""), request.args.get("drp_id", "")[:100] or "?"
    if ha_id and ha_id != nt.ha_id:  # said here too: the operator may be looking at either
        reason = (f"{who} is in HA cluster {ha_id!r}, this active in {nt.ha_id!r}: set "
                  f"RS_HA_ID={nt.ha_id}")
        log.warning("refusing the enrolment of %s from %s: %s", who, request.remote_addr,
                    reason)
        raise ApiError(403, reason, model="ha", key=who, type_="AUTH_ERROR")
    if not nt.token:
        raise ApiError(409, "this cluster has no HA token to enrol with", model="ha",
                       key="discover")
    bundle = nt.ca.bundle_pem(utcnow())
    return _json({"HaId": nt.ha_id, "DrpId": nt.drp_id, "Bundle": bundle,
                  "Proof": enrolment_proof(nt.token, nonce, nt.ha_id, nt.drp_id, bundle)})


def _csr(body: dict) -> str:
    csr = body.get("Csr")
    if not isinstance(csr, str) or not csr:
        raise ApiError(422, "Csr must be a PEM certificate request", model="ha", key="enroll")
    return csr


async def _issue(nt, drp_id: str, csr: str) -> Response:
    try:
        answer = trust.enrol(nt.ca, drp_id, csr, utcnow(), nt.removed, life=nt.life)
    except Untrusted as e:
        log.warning("refused the enrolment of %s from %s: %s", drp_id, request.remote_addr, e)
        raise ApiError(403, str(e), model="ha", key=drp_id, type_="AUTH_ERROR") from None
    return _json({"Cert": answer["cert"], "Bundle": answer["bundle"]})


@bp.post("/enroll")
async def enroll():
    """A joining node: the HA token (checked against the cluster's current one) and a CSR."""
    nt = await _active_trust("enrolment")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    body = await json_body()
    drp_id = body.get("DrpId") if isinstance(body, dict) else None
    if not isinstance(drp_id, str) or not drp_id or "/" in drp_id:
        raise ApiError(422, "DrpId must be the joining node's drp-id", model="ha", key="enroll")
    if scheme.lower() != "bearer" or not nt.token or \
            not hmac.compare_digest(token.strip().encode(), nt.token.encode()):
        log.warning("refused the enrolment of %s from %s: not the cluster's current HA token",
                    drp_id, request.remote_addr)
        await trio.sleep(FAILED_ENROLMENT_WAIT)
        raise ApiError(401, "not the cluster's current HA token (rotated? `drpcli system ha "
                       "rotate-token` on the active prints the new one)", model="ha",
                       key=drp_id, type_="AUTH_ERROR")
    answer = await _issue(nt, drp_id, _csr(body))
    log.info("enrolled %s (from %s) with a certificate from the cluster CA", drp_id,
             request.remote_addr)
    return answer


@bp.post("/renew")
async def renew():
    """A node renewing: authenticated by its certificate (drp.api.app), for its own drp-id."""
    nt = await _active_trust("renewal")
    drp_id = getattr(request, "node_id", None)
    if not drp_id:
        raise ApiError(403, "renewal needs the node's cluster certificate on the connection",
                       model="ha", key="renew", type_="AUTH_ERROR")
    body = await json_body()
    return await _issue(nt, drp_id, _csr(body if isinstance(body, dict) else {}))


@bp.get("/trust")
async def describe():
    nt = _trust()
    await nt.refresh()
    return _json(nt.describe())


async def _set_removed(drp_id: str, removed: bool) -> Response:
    node = current_app.node
    nt = await _active_trust("remove" if removed else "admit")
    if removed and drp_id == node.drp_id:
        raise ApiError(409, "the active cannot remove itself: switch to another node first",
                       model="ha", key=drp_id)
    wanted = (nt.removed | {drp_id}) if removed else (nt.removed - {drp_id})
    body = {"Name": REMOVED_ROW, "Nodes": sorted(wanted)}
    await node.store.write(lambda tx: tx.record(SECRETS, REMOVED_ROW, "update", body))
    await nt.refresh()
    if removed:
        cut = node.ha.replication_hub().disconnect(drp_id)
        log.warning("removed %s from the cluster: its certificate is refused from now on%s",
                    drp_id, " (its replication stream was cut)" if cut else "")
    else:
        log.info("admitted %s again: it may enrol with the HA token", drp_id)
    return _json({"Removed": sorted(wanted)})


@bp.post("/remove/<drp_id>")
async def remove(drp_id: str):
    return await _set_removed(drp_id, True)


@bp.post("/admit/<drp_id>")
async def admit(drp_id: str):
    return await _set_removed(drp_id, False)


@bp.post("/rotate-token")
async def rotate_token():
    node = current_app.node
    await _active_trust("rotate-token")
    token = secrets.token_urlsafe(32)
    body = {"Name": TOKEN_ROW, "Secret": token}
    await node.store.write(lambda tx: tx.record(SECRETS, TOKEN_ROW, "update", body))
    await node.trust.refresh()
    log.warning("the HA token was rotated: the old one no longer enrols; enrolled nodes keep "
                "replicating with their certificates")
    return _json({"Token": token,
                  "Note": "only new nodes need it: set RS_HA_TOKEN to it on them (and on the "
                          "others, for when their certificate lapses)"})


@bp.post("/rotate-ca")
async def rotate_ca():
    nt = await _active_trust("rotate-ca")
    nt.ca.rotate_if_due(utcnow(), force=True)
    await nt.store_ca()
    await nt.issue_own()
    log.warning("rotated the cluster CA on request: nodes renew from the new root at their "
                "next check; older roots stay trusted until they expire")
    return _json(nt.describe())

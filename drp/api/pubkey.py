"""GET /api/v3/<kind>/<key>/pubkey: the public key values of the object's secure params must be
sealed to (dr-provision's NaCl box, drp.secureparams), as dr-provision answers it: 200 with the
JSON string of the base64 32-byte curve25519 key. RackN's client asks for it before it posts a
secure param (its MachinesApi.post_machine_param, RawModelApi.set_param), seals the value to it
and posts the SecureData.

Served for the kinds whose RackN API page lists the route and that drp serves: those with params
(models.PARAM_KINDS). Needs the kind's updateSecure claim on the object (drp.api.rbac): the key
is only good for setting a secure value. An unknown object answers 404 with DRP's error body.
"""
from __future__ import annotations

from quart import Blueprint, current_app

from drp import models
from drp.api import objects, paramvalues
from drp.api.errors import ApiError
from drp.api.respond import json_response

bp = Blueprint("pubkey", __name__, url_prefix="/api/v3")


@bp.get("/<kind>/<key>/pubkey")
async def get_pubkey(kind: str, key: str):
    k = models.kind_or_404(kind)
    if kind not in models.PARAM_KINDS:
        raise ApiError(404, f"{kind} have no secure params: only "
                       f"{', '.join(models.PARAM_KINDS)} do", model=kind, type_="NotFound")
    store = current_app.node.store
    obj = await store.get(kind, key)
    if obj is None:
        raise objects.not_found(k, key)
    # the stored key, as check_write seals with it (a route's spelling could differ)
    found = await paramvalues.object_key(store, kind, str(obj.get(k.key, key)))
    return json_response(found.public_b64)

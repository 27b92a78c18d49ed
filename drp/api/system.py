"""/api/v3/info, user tokens and passwords, and the /api/v3/ws event stream."""
from __future__ import annotations

import logging

from quart import Blueprint, current_app, request, websocket

from drp import auth, node as nodemod
from drp.api import events as eventstream
from drp.api.errors import ApiError
from drp.api.objects import json_body
from drp.api.respond import json_response, websocket_scope
from drp.config import parse_duration

bp = Blueprint("system", __name__, url_prefix="/api/v3")
log = logging.getLogger("drp.api")


async def stats() -> dict:
    counts = await current_app.node.store.kind_counts()
    return {"machines.count": 0, "subnets.count": 0,
            **{f"{k}.count": n for k, n in counts.items() if k not in ("secrets",)}}


@bp.get("/info")
async def info():
    return json_response(nodemod.info(current_app.node, await stats()))


@bp.get("/users/<name>/token")
async def user_token(name: str):
    store = current_app.node.store
    user = await store.get("users", name)
    if user is None:
        raise ApiError(404, f"user {name} not found", model="users", key=name, type_="NotFound")
    # Who may: checked before this runs (drp.api.rbac: itself, or a superuser for others).
    try:
        ttl = parse_duration(request.args.get("ttl", "3600"))
    except ValueError as e:
        raise ApiError(400, f"ttl: {e}", model="users", key=name) from None
    max_ttl = current_app.node.cfg.max_token_ttl
    if not ttl <= max_ttl:  # (`not <=`: a NaN is past the bound too)
        raise ApiError(400, f"ttl: {request.args.get('ttl')!r} is past the limit of {max_ttl:.0f} s "
                       "(--max-token-ttl, RS_MAX_TOKEN_TTL)", model="users", key=name)
    secret = await current_app.authenticator.secret()
    token, claims = auth.make_token(secret, name, ttl, user.get("Secret", ""))
    return json_response({"Token": token, "Info": nodemod.info(current_app.node, await stats()),
                          "Expires": claims["exp"]})


@bp.put("/users/<name>/password")
async def user_password(name: str):
    body = await json_body("users", name)
    password = body.get("password", body.get("Password")) if isinstance(body, dict) else None
    if not isinstance(password, str) or not password:
        raise ApiError(422, 'want {"password": "..."}', model="users", key=name)
    # Who may: checked before this runs (drp.api.rbac: itself, or a superuser for others).
    hashed = await current_app.authenticator.hashes.run(auth.hash_password, password)

    def change(tx):
        user = tx.get("users", name)
        if user is None:
            raise ApiError(404, f"user {name} not found", model="users", key=name,
                           type_="NotFound")
        # A new per-user secret revokes the tokens made with the old password.
        user = {**user, "PasswordHash": hashed, "Secret": auth.new_secret()}
        tx.record("users", name, "update", user)
        return user
    user = await current_app.node.store.write(change)
    return json_response({k: v for k, v in user.items() if k not in ("PasswordHash", "Secret")})


# ---- event stream ----------------------------------------------------------------------------
@bp.websocket("/ws")
async def events():
    """Matching events, fanned out by the store's one hub (drp/api/events.py)."""
    claims = websocket.claims  # a subscriber sees only what it may get
    peer = f"{websocket.user.get('Name', '?')}@{websocket.remote_addr}"
    with websocket_scope(current_app.node):
        await eventstream.serve(eventstream.hub_for(current_app.node.store), websocket, claims,
                                peer)

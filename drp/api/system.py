"""/api/v3/info, user tokens and passwords, and the /api/v3/ws event stream."""
from __future__ import annotations

import json
import logging

import trio
from quart import Blueprint, current_app, request, websocket

from drp import auth, node as nodemod
from drp.api.app import json_response, websocket_scope
from drp.api.authn import is_superuser
from drp.api.objects import json_body
from drp.config import parse_duration
from drp.errors import ApiError

bp = Blueprint("system", __name__, url_prefix="/api/v3")
log = logging.getLogger("drp.api")


async def stats() -> dict:
    def count(conn):
        rows = conn.execute("SELECT kind, COUNT(*) FROM objects GROUP BY kind").fetchall()
        return {f"{k}.count": n for k, n in rows if k not in ("secrets",)}
    counts = await current_app.node.store.read(count)
    return {"machines.count": 0, "subnets.count": 0, **counts}


@bp.get("/info")
async def info():
    return json_response(nodemod.info(current_app.node, await stats()))


@bp.get("/users/<name>/token")
async def user_token(name: str):
    store = current_app.node.store
    user = await store.get("users", name)
    if user is None:
        raise ApiError(404, f"user {name} not found", model="users", key=name, type_="NotFound")
    if request.user["Name"] != name and not is_superuser(request.user):
        raise ApiError(403, "only a superuser may make tokens for other users", model="users",
                       key=name, type_="AUTH_ERROR")
    try:
        ttl = parse_duration(request.args.get("ttl", "3600"))
    except ValueError as e:
        raise ApiError(400, f"ttl: {e}", model="users", key=name) from None
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
    if request.user["Name"] != name and not is_superuser(request.user):
        raise ApiError(403, "only a superuser may change other users' passwords",
                       model="users", key=name, type_="AUTH_ERROR")
    hashed = await trio.to_thread.run_sync(auth.hash_password, password)

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
def _matches(pattern: str, event: dict) -> bool:
    parts = (pattern.split(".", 2) + ["*", "*"])[:3]
    values = (event["Type"], event["Action"], event["Key"])
    return all(p == "*" or p == v for p, v in zip(parts, values))


def _event(change: dict) -> dict:
    obj = change["body"]
    if change["kind"] == "users" and isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k not in ("PasswordHash", "Secret")}
    return {"Time": change["time"], "Type": change["kind"], "Action": change["action"],
            "Key": change["key"], "Object": obj}


@bp.websocket("/ws")
async def events():
    store = current_app.node.store
    send, recv = trio.open_memory_channel(1000)
    patterns: set[str] = set()

    def listener(changes):
        for change in changes:
            if change["kind"] in ("secrets", "ha"):
                continue
            event = _event(change)
            if any(_matches(p, event) for p in patterns):
                try:
                    send.send_nowait(event)
                except trio.WouldBlock:
                    log.warning("event subscriber too slow; dropping an event")

    store.listeners.append(listener)
    try:
        with websocket_scope(current_app.node):
            await _serve_events(recv, patterns)
    finally:
        store.listeners.remove(listener)


async def _serve_events(recv, patterns: set[str]) -> None:
    """Send matching events while reading register/deregister commands."""
    async def pump():
        async for event in recv:
            await websocket.send(json.dumps(event))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        while True:
            msg = (await websocket.receive()).strip()
            verb, _, pattern = msg.partition(" ")
            if verb == "register" and pattern:
                patterns.add(pattern)
            elif verb == "deregister":
                patterns.discard(pattern)
            else:
                await websocket.send(json.dumps({"Error": f"unknown command {msg!r}"}))

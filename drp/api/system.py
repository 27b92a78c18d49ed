"""/api/v3/info, user tokens and passwords, system actions, and the /api/v3/ws event stream."""
from __future__ import annotations

import logging
import uuid

import trio
from quart import Blueprint, current_app, request, websocket

from drp import auth, node as nodemod
from drp.api import events as eventstream
from drp.api.errors import ApiError
from drp.api.objects import json_body
from drp.api.respond import json_response, websocket_scope
from drp.config import parse_duration

bp = Blueprint("system", __name__, url_prefix="/api/v3")
log = logging.getLogger("drp.api")
INTERNAL_KINDS = ("secrets", "prefs")  # stored as objects, but no kind a client lists
_uuid_lock = trio.Lock()  # two first /info calls must not each pick a uuid


async def stats() -> list[dict]:
    """dr-provision's Info.stats: [{name, count}], machines and subnets always present."""
    counts = {"machines": 0, "subnets": 0, **await current_app.node.store.kind_counts()}
    return [{"name": f"{k}.count", "count": n} for k, n in counts.items()
            if k not in INTERNAL_KINDS]


async def node_uuid() -> str:
    """This node's uuid: chosen on first use, kept in the store's `local` table (per node, not
    replicated, like drp_id) so it is the same after a restart."""
    held = current_app.extensions.get("drp.uuid")
    if held:
        return held
    store = current_app.node.store
    async with _uuid_lock:
        kept = await store.local_get("uuid")
        if not kept:
            kept = str(uuid.uuid4())
            await store.local_set("uuid", kept)
    current_app.extensions["drp.uuid"] = kept
    return kept


async def node_info() -> dict:
    """dr-provision's Info for this node (also embedded in a token reply and an HA switch)."""
    return nodemod.info(current_app.node, await stats(), await node_uuid())


@bp.get("/info")
async def info():
    return json_response(await node_info())


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
    return json_response({"Token": token, "Info": await node_info(), "Expires": claims["exp"]})


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


# ---- system actions (SystemApi.md) ----------------------------------------------------------
# In dr-provision every system action (AvailableAction, Model "system") is provided by a running
# plugin. drp runs no plugins (a plugin provider here is a stored binary, never started), so it
# offers none: the list is empty, and a named action is dr-provision's "Not Found" for it.
SYSTEM_ACTIONS: tuple[dict, ...] = ()


def _actions(plugin: str | None) -> list[dict]:
    return [a for a in SYSTEM_ACTIONS if plugin in (None, "", a["provider"])]


def _no_action(cmd: str, plugin: str | None) -> ApiError:
    where = f" from plugin {plugin}" if plugin else ""
    return ApiError(404, f"Action {cmd} on system{where}: Not Found (drp runs no plugins, so "
                    "no plugin provides system actions)", model="system", key=cmd)


@bp.get("/system/actions")
async def system_actions():
    return json_response(_actions(request.args.get("plugin")))


@bp.get("/system/actions/<cmd>")
async def system_action(cmd: str):
    plugin = request.args.get("plugin")
    found = next((a for a in _actions(plugin) if a["command"] == cmd), None)
    if found is None:
        raise _no_action(cmd, plugin)
    return json_response(found)


@bp.post("/system/actions/<cmd>")
async def run_system_action(cmd: str):
    plugin = request.args.get("plugin")
    body = await json_body("system", cmd)
    if not isinstance(body, dict):
        raise ApiError(400, "want a JSON object of the action's parameters (name -> value)",
                       model="system", key=cmd)
    # no action exists to run (SYSTEM_ACTIONS is empty); one that did would run here
    raise _no_action(cmd, plugin)


# dr-provision's /system/upgrade* routes swap its own binaries; drp is a Python package
# installed from its archive (README: "Running under systemd"), so each says so, with 501.
@bp.route("/system/upgrade", methods=["POST"])
@bp.route("/system/upgrade/status", methods=["GET"])
@bp.route("/system/upgrade/exec", methods=["POST"])
@bp.route("/system/upgrade/run", methods=["POST"])
@bp.route("/system/upgrade/stage", methods=["POST", "DELETE"])
async def system_upgrade():
    raise ApiError(501, f"{request.method} {request.path}: drp does not upgrade itself through "
                   "the API; install the newer drp archive with its install.sh on each node",
                   model="system", key="upgrade")


# ---- event stream ----------------------------------------------------------------------------
@bp.websocket("/ws")
async def events():
    """Matching events, fanned out by the store's one hub (drp/api/events.py)."""
    claims = websocket.claims  # a subscriber sees only what it may get
    peer = f"{websocket.user.get('Name', '?')}@{websocket.remote_addr}"
    with websocket_scope(current_app.node):
        await eventstream.serve(eventstream.hub_for(current_app.node.store), websocket, claims,
                                peer)

"""Authorization: the (scope, action, specific) each API route needs, checked against the
caller's claims (drp.claims) in one place, before the handler runs (drp.api.app)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from drp.api.errors import ApiError
from drp.claims import BUILTIN_ROLES, Claim, allowed, contains, is_superuser


def forbidden(scope: str, action: str, specific: str = "", why: str = "") -> ApiError:
    what = f"{scope}/{action}/{specific or '*'}"
    return ApiError(403, why or f"forbidden: your roles do not grant {what}",
                    model=scope, key=specific, type_="AUTH_ERROR")


# ---- what each route needs --------------------------------------------------------------------
@dataclass(frozen=True)
class Need:
    scope: str
    action: str
    specific: str = ""
    superuser: bool = False  # only */*/* grants it, whatever other claims say
    anyone: bool = False  # any authenticated user
    self_checked: bool = False  # the handler authenticates and authorizes itself


# Needs are immutable: the object routes' (the hot path) are made once per (kind, action, key)
_object_need = functools.lru_cache(maxsize=4096)(
    lambda kind, action, key: Need(kind, action, key,
                                   superuser=(kind, action) == ("users", "create")))


def _objects(action: str) -> Callable:
    return lambda a, m, u: _object_need(a["kind"], action, a.get("key", ""))


def _for_user(action: str) -> Callable:
    # Every user may do these to itself; to another user only a superuser may.
    return lambda a, m, u: Need("users", action, a["name"], superuser=a["name"] != u)


def _blob(scope: str, arg: str | None) -> Callable:
    def need(a, m, u):
        action = {"GET": "get", "HEAD": "get", "POST": "post"}.get(m, m.lower())
        if arg is None:
            return Need(scope, "list")
        return Need(scope, action, a[arg])
    return need


# endpoint -> fn(view_args, method, user name) -> Need. An endpoint missing here is refused.
ROUTES: dict[str, Callable[[dict, str, str], Need]] = {
    "objects.list_objects": _objects("list"),
    "objects.get_object": _objects("get"),
    "objects.create_object": _objects("create"),
    "objects.put_object": _objects("update"),
    "objects.patch_object": _objects("update"),  # dr-provision: PATCH is an update
    "objects.delete_object": _objects("delete"),
    # dr-provision: reading params needs the kind's get claim, changing them its update claim
    "params.get_params": _objects("get"),
    "params.get_param": _objects("get"),
    "params.replace_params": _objects("update"),
    "params.patch_params": _objects("update"),
    "params.set_param": _objects("update"),
    "params.delete_param": _objects("update"),
    # the key secure values are sealed to: dr-provision asks the kind's updateSecure claim
    "pubkey.get_pubkey": _objects("updateSecure"),
    # dr-provision hands /info to any user in its token answer, so any user may read it.
    "system.info": lambda a, m, u: Need("info", "get", anyone=True),
    "system.user_token": _for_user("token"),
    "system.user_password": _for_user("password"),
    "system.events": lambda a, m, u: Need("events", "get"),  # each event needs get on it too
    "system.system_actions": lambda a, m, u: Need("system", "actions"),
    "system.system_action": lambda a, m, u: Need("system", "action", a["cmd"]),
    "system.run_system_action": lambda a, m, u: Need("system", "runaction", a["cmd"]),
    "system.system_upgrade": lambda a, m, u: Need("system", "upgrade", superuser=True),
    "prefs.list_prefs": lambda a, m, u: Need("prefs", "list"),
    "prefs.set_prefs": lambda a, m, u: Need("prefs", "post"),
    "ha.replicate": lambda a, m, u: Need("ha", "replicate", superuser=True, self_checked=True),
    "ha.snapshot": lambda a, m, u: Need("ha", "get", a["snap_id"], superuser=True),
    "ha.blob": lambda a, m, u: Need("ha", "get", a["path"], superuser=True),
    "ha.system_active": lambda a, m, u: Need("system", "update", "active"),
    "ha.system_passive": lambda a, m, u: Need("system", "update", "passive"),
    "ha_trust.discover": lambda a, m, u: Need("ha", "discover", self_checked=True),
    "ha_trust.enroll": lambda a, m, u: Need("ha", "enroll", self_checked=True),
    "ha_trust.renew": lambda a, m, u: Need("ha", "renew", superuser=True),
    "ha_trust.describe": lambda a, m, u: Need("ha", "get", "trust", superuser=True),
    "ha_trust.remove": lambda a, m, u: Need("ha", "remove", a["drp_id"], superuser=True),
    "ha_trust.admit": lambda a, m, u: Need("ha", "admit", a["drp_id"], superuser=True),
    "ha_trust.rotate_token": lambda a, m, u: Need("ha", "rotate", "token", superuser=True),
    "ha_trust.rotate_ca": lambda a, m, u: Need("ha", "rotate", "ca", superuser=True),
    # automatic failover's view and its pause (drp.api.ha_cluster): superuser, as the pins
    "ha_cluster.state": lambda a, m, u: Need("ha", "get", "state", superuser=True),
    "ha_cluster.peers": lambda a, m, u: Need("ha", "get", "peers", superuser=True),
    "ha_cluster.leader": lambda a, m, u: Need("ha", "get", "leader", superuser=True),
    "ha_cluster.pause": lambda a, m, u: Need("ha", "update", "pause", superuser=True),
    "ha_cluster.resume": lambda a, m, u: Need("ha", "update", "resume", superuser=True),
    "blobs.list_files": _blob("files", None),
    "blobs.upload_file": _blob("files", "rel"),
    "blobs.get_file": _blob("files", "rel"),
    "blobs.delete_file": _blob("files", "rel"),
    "blobs.list_isos": _blob("isos", None),
    "blobs.upload_iso": _blob("isos", "name"),
    "blobs.get_iso": _blob("isos", "name"),
    "blobs.delete_iso": _blob("isos", "name"),
    "blobs.list_providers": _blob("plugin_providers", None),
    "blobs.show_provider": _blob("plugin_providers", "name"),
    "blobs.provider_binary": _blob("plugin_providers", "name"),
    "blobs.upload_provider": _blob("plugin_providers", "name"),
    "blobs.delete_provider": _blob("plugin_providers", "name"),
    "blobs.append_log": lambda a, m, u: Need("jobs", "log", a["uuid"]),
    "blobs.get_log": lambda a, m, u: Need("jobs", "log", a["uuid"]),
    "contents.list_contents": lambda a, m, u: Need("contents", "list"),
    "contents.create_contents": lambda a, m, u: Need("contents", "create"),
    "contents.show_contents": lambda a, m, u: Need("contents", "get", a["name"]),
    "contents.replace_contents": lambda a, m, u: Need("contents", "update", a["name"]),
    "contents.delete_contents": lambda a, m, u: Need("contents", "delete", a["name"]),
}


def need_for(endpoint: str | None, view_args: dict | None, method: str, user: str) -> Need:
    fn = ROUTES.get(endpoint or "")
    if fn is None:  # a route nobody mapped is refused, to everyone, not let through
        raise ApiError(403, f"route {endpoint} has no authorization rule (drp.api.rbac.ROUTES)"
                       ": refused", type_="AUTH_ERROR")
    return fn(view_args or {}, method, user)


def check(claims: tuple[Claim, ...], need: Need) -> None:
    """Raise 403 unless `claims` satisfy `need`."""
    if need.anyone or need.self_checked:
        return
    if need.superuser:
        if is_superuser(claims):
            return
        raise forbidden(need.scope, need.action, need.specific,
                        f"forbidden: {need.scope}/{need.action}/{need.specific or '*'} needs a "
                        "superuser (the */*/* claim)")
    if not allowed(claims, need.scope, need.action, need.specific):
        raise forbidden(need.scope, need.action, need.specific)


# ---- rules that depend on the body: run inside the writer, beside the current object ---------
def check_write(tx, claims: tuple[Claim, ...], kind: str, key: str, current: dict | None,
                new: dict) -> None:
    """Refuse a create (current None) or update of a role or user that would raise anyone's
    rights beyond the writer's, or change the built-in superuser role."""
    if kind == "roles":
        if key in BUILTIN_ROLES and current is not None:
            raise _builtin(key)
        if not is_superuser(claims) and not contains(claims, new.get("Claims") or []):
            action = "create" if current is None else "update"
            raise forbidden("roles", action, key, f"forbidden: roles/{action}/{key}: the role "
                            "would grant claims your roles do not hold")
    elif kind == "users":
        roles, before = new.get("Roles") or [], (current or {}).get("Roles") or []
        if current is not None and roles != before and not is_superuser(claims):
            raise forbidden("users", "update", key, f"forbidden: users/update/{key}: only a "
                            "superuser (the */*/* claim) may change a user's Roles")
        missing = [r for r in roles if r not in BUILTIN_ROLES and r not in before
                   and tx.get("roles", r) is None]
        if missing:
            raise ApiError(422, *(f"Role {r} does not exist" for r in missing), model="users",
                           key=key, type_="ValidationError")


def check_delete(kind: str, key: str) -> None:
    if kind == "roles" and key in BUILTIN_ROLES:
        raise _builtin(key)


def _builtin(key: str) -> ApiError:
    return ApiError(403, f"role {key} is built in: it cannot be changed or removed",
                    model="roles", key=key)

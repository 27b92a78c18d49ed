"""dr-provision's param routes: /<kind>/<key>/params (an object's whole Params map) and
/<kind>/<key>/params/<name> (one value), for the kinds whose API pages list them
(models.PARAM_KINDS).

As dr-provision answers them: reads need the kind's `get` claim on the object, changes its
`update` claim (drp.api.rbac.ROUTES); a change is one write of the whole object through
drp.api.objects.replace_object (validated, replicated, read-only objects refused). A param that is
not set reads as null (200); only removing one answers 404. Param names may hold '/'
(`ipmi/username`), so the name is the rest of the path. What a param's definition says of its
values (Schema, Secure) is applied by drp.api.paramvalues in that write; reads serve secure
values as SecureData unless asked `decode=true` by a holder of the kind's getSecure claim, each
then opened with the key of the object that holds it (drp.secureparams: one key pair per object).
"""
from __future__ import annotations

import json

import jsonpatch
import jsonpointer
from quart import Blueprint, current_app, request

from drp import models, secureparams
from drp.api import jsonbody, limits, objects, paramvalues
from drp.api.errors import ApiError
from drp.api.respond import json_response

bp = Blueprint("params", __name__, url_prefix="/api/v3")

GLOBAL_PROFILE = "global"  # dr-provision's profile whose params every object inherits last


def _kind(kind: str) -> models.Kind:
    k = models.kind_or_404(kind)
    if kind not in models.PARAM_KINDS:
        raise ApiError(404, f"{kind} have no params: only {', '.join(models.PARAM_KINDS)} do",
                       model=kind, type_="NotFound")
    return k


def _query_flags(kind: str, key: str) -> tuple[bool, bool]:
    """(aggregate, decode): decode (secure params opened) needs the kind's getSecure claim."""
    decode = paramvalues.wants_decode(kind, key)
    return paramvalues.flag("aggregate", kind, key), decode


async def _keyring(decode: bool) -> secureparams.Keyring | None:
    """The store's Keyring when the caller asked (and may ask) decode, else None."""
    return await paramvalues.opener(current_app.node.store) if decode else None


async def _stored(k: models.Kind, key: str) -> dict:
    obj = await current_app.node.store.get(k.name, key)
    if obj is None:
        raise objects.not_found(k, key)
    return obj


def _params_of(obj: dict | None) -> dict:
    params = (obj or {}).get("Params")
    return params if isinstance(params, dict) else {}


def _own(kind: str, obj: dict | None, ring: secureparams.Keyring | None) -> dict:
    """An object's own Params, its secure values opened with its own key when ring is given
    (each object seals to its own key pair: a profile's values open with the profile's)."""
    params = _params_of(obj)
    if ring is None or not params:
        return params
    return secureparams.decoded(params, ring, kind, str(obj.get(models.KINDS[kind].key)))


async def _aggregated(k: models.Kind, obj: dict, ring: secureparams.Keyring | None) -> dict:
    """dr-provision's aggregate: the object's own params, then those of its profiles (each
    followed by the profiles it names), a machine's stage's profiles, and the global
    profile; the first one found of each name wins. With ring, each one's secure values are
    opened with the key of the object that holds them."""
    store = current_app.node.store
    result = dict(_own(k.name, obj, ring))
    names = list(obj.get("Profiles") or []) if isinstance(obj.get("Profiles"), list) else []
    if k.name == "machines" and obj.get("Stage"):
        stage = await store.get("stages", str(obj["Stage"]))
        if isinstance((stage or {}).get("Profiles"), list):
            names += stage["Profiles"]
    names.append(GLOBAL_PROFILE)
    seen = {obj.get(k.key)} if k.name == "profiles" else set()
    while names:
        name = names.pop(0)
        if not isinstance(name, str) or name in seen:
            continue
        seen.add(name)
        profile = await store.get("profiles", name)
        for pname, value in _own("profiles", profile, ring).items():
            result.setdefault(pname, value)
        if profile and isinstance(profile.get("Profiles"), list):
            names[:0] = profile["Profiles"]  # its own profiles come before the next one
    return result


async def _default(name: str):
    """The default a param's definition gives in its Schema, or None (aggregate only)."""
    definition = await current_app.node.store.get("params", name)
    schema = (definition or {}).get("Schema")
    return schema.get("default") if isinstance(schema, dict) else None


async def _change_params(k: models.Kind, key: str, change) -> dict:
    """One write of the object with change(its Params) -> new Params; returns the object."""
    limit = current_app.node.cfg.max_object_size

    def make_new(current: dict) -> dict:
        new = {**current, "Params": change(dict(_params_of(current)))}
        try:  # a value as deep as a body may be sits two levels down in the object
            jsonbody.check_tree(new, check_strings=False)
        except jsonbody.JsonError as e:
            raise ApiError(422, f"{k.model} {key} with these params would not be valid: {e}",
                           model=k.name, key=key, type_="ValidationError") from None
        if len(json.dumps(new)) > limit:
            raise limits.too_large(f"{k.model} {key} with these params", limit,
                                   "--max-object-size", k.name, key)
        return new
    return await objects.replace_object(k, key, make_new)


@bp.get("/<kind>/<key>/params")
async def get_params(kind: str, key: str):
    k = _kind(kind)
    aggregate, decode = _query_flags(kind, key)
    obj = await _stored(k, key)
    ring = await _keyring(decode)
    params = await _aggregated(k, obj, ring) if aggregate else _own(kind, obj, ring)
    wanted = request.args.get("params", "")
    if wanted:  # a comma-separated list of the names to return
        names = {n.strip() for n in wanted.split(",") if n.strip()}
        params = {n: v for n, v in params.items() if n in names}
    return json_response(params)


@bp.post("/<kind>/<key>/params")
async def replace_params(kind: str, key: str):
    k = _kind(kind)
    params = await objects.json_body(kind, key)
    if not isinstance(params, dict):
        raise ApiError(400, f"params must be a JSON object of name: value, not "
                       f"{type(params).__name__}", model=kind, key=key)
    new = await _change_params(k, key, lambda current: params)
    return json_response(_params_of(new))


@bp.patch("/<kind>/<key>/params")
async def patch_params(kind: str, key: str):
    k = _kind(kind)
    ops = await objects.patch_body(kind, key)
    cfg = current_app.node.cfg

    def patched(params: dict) -> dict:
        try:
            after = limits.apply_patch(ops, params, len(json.dumps(params)),
                                       cfg.max_object_size, kind, key)
            jsonbody.check_tree(after)
        except (jsonbody.JsonError, RecursionError):
            raise ApiError(422, f"the patched params nest deeper than {jsonbody.MAX_DEPTH} "
                           "levels of arrays and objects", model=kind, key=key) from None
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
            # dr-provision answers any patch that does not apply (a failed test too) with 409
            raise ApiError(409, f"patch failed to apply to the params: {e}", model=kind,
                           key=key, type_="PATCH") from None
        if not isinstance(after, dict):
            raise ApiError(409, "patch failed to apply: the params would not be a JSON object",
                           model=kind, key=key, type_="PATCH")
        return after
    new = await _change_params(k, key, patched)
    return json_response(_params_of(new))


def _name(name: str) -> str:
    return name.lstrip("/")  # as dr-provision trims its *key wildcard


@bp.get("/<kind>/<key>/params/<path:name>")
async def get_param(kind: str, key: str, name: str):
    k = _kind(kind)
    aggregate, decode = _query_flags(kind, key)
    obj = await _stored(k, key)
    name = _name(name)
    ring = await _keyring(decode)
    params = await _aggregated(k, obj, ring) if aggregate else _own(kind, obj, ring)
    if name in params:
        return json_response(params[name])
    return json_response(await _default(name) if aggregate else None)


@bp.post("/<kind>/<key>/params/<path:name>")
async def set_param(kind: str, key: str, name: str):
    k = _kind(kind)
    value = await objects.json_body(kind, key)
    name = _name(name)
    new = await _change_params(k, key, lambda current: {**current, name: value})
    return json_response(_params_of(new).get(name))  # as stored: a secure one sealed


@bp.delete("/<kind>/<key>/params/<path:name>")
async def delete_param(kind: str, key: str, name: str):
    k = _kind(kind)
    name = _name(name)
    removed = []

    def without(current: dict) -> dict:
        if name not in current:
            raise ApiError(404, f"param {name} is not set on {k.model} {key}",
                           model="params", key=name, type_="DELETE")
        removed.append(current.pop(name))
        return current
    await _change_params(k, key, without)
    return json_response(removed[0])

"""Content bundles: /api/v3/contents. A bundle (JSON or YAML) is
    {"meta": {"Name", "Version", "Description", ...}, "sections": {kind: {key: object}}}
and is stored as ONE change-log entry that replaces all of its objects at once. Its objects are
ReadOnly and carry Bundle=<name>; a bundle may not take over objects owned by anyone else.
As in dr-provision, POST makes a bundle that does not exist yet (409 for one that does) and
PUT /contents/<name> replaces one that does (404 otherwise)."""
from __future__ import annotations

import datetime
import functools
import json

import trio
from quart import Blueprint, current_app, request

from drp import models, modelvalues, paramschema
from drp.api import bundleyaml, jsonbody, limits, paramvalues
from drp.api.errors import ApiError
from drp.api.respond import json_response
from drp.claims import contains

bp = Blueprint("contents", __name__, url_prefix="/api/v3")

NOT_CONTENT = {"users"}  # a bundle may not create logins
# Defaults for callers without a Config; the server passes --max-yaml-alias-nodes and
# --max-content-size (a YAML bundle expands to at most what a JSON bundle may be).
MAX_YAML_ALIAS_NODES = 100_000
MAX_EXPANDED_BYTES = 32 << 20


def _store():
    return current_app.node.store


def parse_bundle(raw: bytes, content_type: str = "", *,
                 max_alias_nodes: int = MAX_YAML_ALIAS_NODES,
                 max_bytes: int = MAX_EXPANDED_BYTES) -> dict:
    """JSON or YAML (by Content-Type, else JSON first, then YAML) into a dict. JSON is strict
    (drp.api.jsonbody); YAML is measured before it is expanded (drp.api.bundleyaml) and what
    it makes must be strict JSON too."""
    if "yaml" not in content_type:
        try:
            doc = jsonbody.loads(raw)
        except jsonbody.JsonError as e:
            if "json" in content_type:
                raise ApiError(400, f"bundle is not valid JSON: {e}", model="contents") from None
            doc = None
        else:
            if not isinstance(doc, dict):
                raise ApiError(422, "a bundle must be an object with meta and sections",
                               model="contents")
            return doc
    try:
        doc = bundleyaml.load(raw.decode("utf-8", "replace"), max_alias_nodes=max_alias_nodes,
                              max_bytes=max_bytes)
        # YAML has NaN (.nan), dates, binary, integers of any size: keep to what JSON holds.
        doc = jsonbody.loads(json.dumps(doc, allow_nan=False, default=_yaml_value))
    except bundleyaml.BundleYamlError as e:
        raise ApiError(e.code, str(e), model="contents") from None
    except (ValueError, TypeError, RecursionError) as e:  # JsonError included
        raise ApiError(400, f"bundle YAML holds what JSON cannot: {e}",
                       model="contents") from None
    if not isinstance(doc, dict):
        raise ApiError(422, "a bundle must be an object with meta and sections", model="contents")
    return doc


def _yaml_value(value):
    """YAML timestamps become strings, as dr-provision's YAML-to-JSON conversion makes them."""
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    raise TypeError(f"a YAML {type(value).__name__} has no JSON form")


def build(doc: dict, url_name: str | None = None, user: str = "") -> tuple[str, dict, list]:
    """Validate a bundle: (name, its record, [[kind, key, stored object], ...]); user: who
    imports it (the objects' CreatedBy)."""
    meta = doc.get("meta")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise ApiError(422, "meta must be an object", model="contents")
    meta = dict(meta)
    if url_name is not None:
        meta.setdefault("Name", url_name)
    name = meta.get("Name")
    if not isinstance(name, str) or not name or "/" in name or "\x00" in name:
        raise ApiError(422, "meta.Name is required: a name without '/'", model="contents")
    if url_name is not None and name != url_name:
        raise ApiError(422, f"meta.Name {name!r} does not match the name in the URL "
                       f"{url_name!r}", model="contents", key=url_name)
    meta, problems = modelvalues.check_nested("ContentMetaData", meta, "meta.")  # every field
    if problems:
        raise ApiError(422, *problems, model="contents", key=name, type_="ValidationError")
    sections = doc.get("sections") or {}
    if not isinstance(sections, dict):
        raise ApiError(422, "sections must be an object keyed by kind", model="contents",
                       key=name)
    objects, seen, counts, problems = [], set(), {}, []
    for kind_name, section in sections.items():
        if kind_name in NOT_CONTENT or kind_name not in models.KINDS:
            problems.append(f"sections.{kind_name}: not a kind a content bundle may hold")
            continue
        kind = models.KINDS[kind_name]
        items = _section_items(kind, section, problems)
        for key, obj in items:
            if (kind_name, key) in seen:
                problems.append(f"{kind_name}/{key} appears twice")
                continue
            seen.add((kind_name, key))
            try:
                stored = models.normalize(kind, {**obj, kind.key: obj.get(kind.key, key)},
                                          key=key, user=user, readonly=True, bundle=name)
            except models.ObjectError as e:
                problems += [f"{kind_name}/{key}: {m}" for m in e.messages]
                continue
            if kind_name == "params":  # a definition's Schema must be one (as an API write)
                try:
                    paramschema.check_schema(stored.get("Schema"))
                except paramschema.BadSchema as e:
                    problems.append(f"params/{key}: {e}")
                    continue
            objects.append([kind_name, key, stored])
            counts[kind_name] = counts.get(kind_name, 0) + 1
    if problems:
        raise ApiError(422, *problems, model="contents", key=name, type_="ValidationError")
    return name, {"meta": meta, "Counts": counts, "Warnings": []}, objects


def _section_items(kind: models.Kind, section, problems: list) -> list[tuple[str, dict]]:
    if isinstance(section, dict):
        items = list(section.items())
    elif isinstance(section, list):  # a list of objects keyed by their own key field
        items = [((o or {}).get(kind.key) if isinstance(o, dict) else None, o) for o in section]
    else:
        problems.append(f"sections.{kind.name} must be an object keyed by {kind.key}")
        return []
    good = []
    for key, obj in items:
        if not isinstance(obj, dict) or not isinstance(key, str) or not key:
            problems.append(f"sections.{kind.name}: every entry must be an object with a "
                            f"{kind.key}")
        else:
            good.append((key, obj))
    return good


def _check_params(tx, name: str, objects: list) -> None:
    """The bundle's param values as an API write checks them (drp.api.paramvalues): against
    their definitions' Schema, secure ones sealed (never stored plain). The bundle's own
    param definitions count, before the store's."""
    own = {key: obj for kind, key, obj in objects if kind == "params"}
    problems = []
    for item in objects:
        kind, key, obj = item
        try:
            item[2] = paramvalues.check_write(tx, kind, key, obj, tx.get(kind, key),
                                              lambda n: own.get(n) or tx.get("params", n))
        except ApiError as e:
            problems += [f"{kind}/{key}: {m}" for m in e.messages]
    if problems:
        raise ApiError(422, *problems[:100], model="contents", key=name,
                       type_="ValidationError")


def _owner(obj: dict) -> str:
    return f"content bundle {obj['Bundle']}" if obj.get("Bundle") else "a user (not a bundle)"


def _put(name: str, record: dict, objects: list, *, must_exist: bool):
    def put(tx):
        current = tx.get("contents", name)
        if must_exist and current is None:
            raise ApiError(404, f"content bundle {name} not found", model="contents", key=name,
                           type_="NotFound")
        if not must_exist and current is not None:  # dr-provision's answer; PUT replaces
            raise ApiError(409, f"content bundle {name} already exists: PUT /contents/{name} "
                           "replaces it", model="contents", key=name, type_="POST")
        conflicts = []
        for kind, key, _ in objects:
            have = tx.get(kind, key)
            if have is not None and have.get("Bundle") != name:
                conflicts.append(f"{kind}/{key} belongs to {_owner(have)}")
        if conflicts:
            raise ApiError(409, f"content bundle {name} would overwrite objects it does not "
                           "own; nothing was changed", *conflicts[:100], model="contents",
                           key=name, type_="Conflict")
        _check_params(tx, name, objects)
        tx.record("contents", name, "put", {"record": record, "objects": objects})
    return put


async def _body_bundle(url_name: str | None = None):
    cfg = current_app.node.cfg
    raw = await limits.read_capped_body(cfg.max_content_size, "--max-content-size",
                                        "the content bundle", model="contents",
                                        key=url_name or "")
    doc = await trio.to_thread.run_sync(functools.partial(
        parse_bundle, raw, request.content_type or "",
        max_alias_nodes=cfg.max_yaml_alias_nodes, max_bytes=cfg.max_content_size))
    name, record, objects = build(doc, url_name, user=str(request.user.get("Name") or ""))
    for kind, key, obj in objects:  # a bundle may not grant more than its importer holds
        if kind == "roles" and not contains(request.claims, obj.get("Claims") or []):
            raise ApiError(403, f"forbidden: contents/{request.method.lower()}/{name}: its role "
                           f"{key} would grant claims your roles do not hold", model="contents",
                           key=name, type_="AUTH_ERROR")
    return name, record, objects


@bp.get("/contents")
async def list_contents():
    return json_response(await _store().list("contents"))


@bp.post("/contents")
async def create_contents():
    name, record, objects = await _body_bundle()
    await _store().write(_put(name, record, objects, must_exist=False))
    return json_response(record, 201)


@bp.route("/contents/<name>", methods=["GET", "HEAD"])
async def show_contents(name: str):
    found = await _store().content_bundle(name)
    if found is None:
        raise ApiError(404, f"content bundle {name} not found", model="contents", key=name,
                       type_="NotFound")
    record, rows = found
    if request.method == "HEAD":
        return "", 200
    sections: dict[str, dict] = {}
    for kind, key, body in rows:
        sections.setdefault(kind, {})[key] = models.public(kind, json.loads(body))
    return json_response({"meta": record["meta"], "sections": sections})


@bp.put("/contents/<name>")
async def replace_contents(name: str):
    name, record, objects = await _body_bundle(name)
    await _store().write(_put(name, record, objects, must_exist=True))
    return json_response(record)


@bp.delete("/contents/<name>")
async def delete_contents(name: str):
    def delete(tx):
        current = tx.get("contents", name)
        if current is None:
            raise ApiError(404, f"content bundle {name} not found", model="contents", key=name,
                           type_="NotFound")
        tx.record("contents", name, "delete")
        return current
    return json_response(await _store().write(delete))

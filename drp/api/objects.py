"""Generic CRUD for every object kind: /api/v3/<kind> and /api/v3/<kind>/<key>."""
from __future__ import annotations

import json
import re

import jsonpatch
import jsonpointer
from quart import Blueprint, Response, current_app, request

from drp import auth, models
from drp.api.app import json_response
from drp.blob import storage
from drp.blob.gate import gate_for
from drp.errors import ApiError

bp = Blueprint("objects", __name__, url_prefix="/api/v3")

_FILTER_FIELD = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
_LIST_PARAMS = {"offset", "limit", "sort", "slim", "decode", "params", "aggregate",
                "reverse", "filter", "commented", "reduced", "exclude-self"}


def _store():
    return current_app.node.store


async def json_body(model: str = "", key: str = ""):
    raw = await request.get_data()
    try:
        return json.loads(raw or b"null")
    except ValueError as e:
        raise ApiError(400, f"body is not valid JSON: {e}", model=model, key=key) from None


def _not_found(kind: models.Kind, key: str) -> ApiError:
    return ApiError(404, f"{kind.model} {key} not found", model=kind.name, key=key,
                    type_="NotFound")


def _refuse_readonly(kind: models.Kind, key: str, current: dict) -> None:
    if current.get("ReadOnly"):
        owner = current.get("Bundle") or "a content bundle"
        raise ApiError(403, f"{kind.model} {key} is read-only: it belongs to content bundle "
                       f"{owner}; change the bundle instead", model=kind.name, key=key)


def _prepare_user(obj: dict, current: dict | None) -> dict:
    """Clients never set password hashes directly; Password on create is hashed here."""
    password = obj.pop("Password", None)
    if password is not None and not isinstance(password, str):
        raise ApiError(422, f"Password must be a string, not {type(password).__name__}",
                       model="users", key=str(obj.get("Name") or ""), type_="ValidationError")
    obj.pop("PasswordHash", None)
    obj.pop("Secret", None)
    if current is not None:
        obj["PasswordHash"] = current.get("PasswordHash", "")
        obj["Secret"] = current.get("Secret", "")
    else:
        obj["Secret"] = auth.new_secret()
        obj["PasswordHash"] = auth.hash_password(password) if password else ""
    return obj


def _check_unique_name(tx, kind: models.Kind, key: str, obj: dict) -> None:
    if kind.name != "machines":
        return
    clash = tx.query("SELECT key FROM objects WHERE kind='machines' AND key != ? AND "
                     "json_extract(body, '$.Name') = ?", (key, obj["Name"]))
    if clash:
        raise ApiError(409, f"machine name {obj['Name']} is already used by {clash[0][0]}",
                       model=kind.name, key=key)


@bp.route("/<kind>", methods=["GET", "HEAD"])
async def list_objects(kind: str):
    k = models.kind_or_404(kind)
    filters = {f: v for f, v in request.args.items() if f not in _LIST_PARAMS}
    for name in filters:  # a field name becomes a JSON path: a bad one must not be a 500
        if not _FILTER_FIELD.fullmatch(name):
            raise ApiError(400, f"cannot filter on {name!r}: want a field name like Name or "
                           "Meta.color", model=kind)
    try:
        offset = int(request.args.get("offset", 0))
        limit = int(request.args.get("limit", -1))
    except ValueError:
        raise ApiError(400, "offset and limit must be integers", model=kind) from None
    objs = await _store().list(kind, filters, offset=offset, limit=limit)
    headers = {"X-DRP-List-Count": str(len(objs))}
    if request.method == "HEAD":
        return "", 200, headers
    return json_response([models.public(k.name, o) for o in objs], headers=headers)


@bp.route("/<kind>/<key>", methods=["GET", "HEAD"])
async def get_object(kind: str, key: str):
    k = models.kind_or_404(kind)
    text = await _store().get_json(kind, key)
    if text is None:
        raise _not_found(k, key)
    if request.method == "HEAD":
        return "", 200
    if kind not in models.HIDDEN_FIELDS:  # as stored is as served: no decode and re-encode
        return Response(text, 200, content_type="application/json")
    return json_response(models.public(kind, json.loads(text)))


@bp.post("/<kind>")
async def create_object(kind: str):
    k = models.kind_or_404(kind)
    obj = await json_body(kind)
    if isinstance(obj, dict) and kind == "users":
        obj = _prepare_user(dict(obj), None)
    obj = models.normalize(k, obj)
    key = obj[k.key]

    def create(tx):
        if tx.get(kind, key) is not None:
            raise ApiError(409, f"{k.model} {key} already exists", model=kind, key=key,
                           type_="Conflict")
        _check_unique_name(tx, k, key, obj)
        tx.record(kind, key, "create", obj)
        return obj
    created = await _store().write(create)
    return json_response(models.public(kind, created), 201)


async def _replace(k: models.Kind, key: str, make_new) -> dict:
    """Read-modify-write inside the writer: make_new(current) -> the new object."""
    def replace(tx):
        current = tx.get(k.name, key)
        if current is None:
            raise _not_found(k, key)
        _refuse_readonly(k, key, current)
        new = make_new(current)
        if k.name == "users" and isinstance(new, dict):  # normalize refuses non-objects
            new = _prepare_user(dict(new), current)
        new = models.normalize(k, new, key=key)
        _check_unique_name(tx, k, key, new)
        tx.record(k.name, key, "update", new)
        return new
    return await _store().write(replace)


@bp.put("/<kind>/<key>")
async def put_object(kind: str, key: str):
    k = models.kind_or_404(kind)
    obj = await json_body(kind, key)
    new = await _replace(k, key, lambda current: obj)
    return json_response(models.public(kind, new))


@bp.patch("/<kind>/<key>")
async def patch_object(kind: str, key: str):
    k = models.kind_or_404(kind)
    ops = await json_body(kind, key)
    try:
        patch = jsonpatch.JsonPatch(ops)
    except (jsonpatch.InvalidJsonPatch, TypeError, AttributeError) as e:
        raise ApiError(400, f"not an RFC 6902 JSON Patch: {e}", model=kind, key=key) from None

    def make_new(current):
        try:
            return patch.apply(models.public(kind, current))
        except jsonpatch.JsonPatchTestFailed as e:
            raise ApiError(409, f"patch test failed: {e}", model=kind, key=key,
                           type_="Conflict") from None
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
            raise ApiError(422, f"patch cannot be applied: {e}", model=kind, key=key) from None
    new = await _replace(k, key, make_new)
    return json_response(models.public(kind, new))


def _delete_job_log(tx, base_root, uuid: str) -> None:
    """A job's log goes with the job (file first, then its row, like any blob delete)."""
    path = storage.blob_path("job-logs", uuid)
    if tx.query("SELECT 1 FROM blobs WHERE path=?", (path,)):
        storage.remove(storage.disk_path(base_root, path))
        tx.record("blob", path, "delete")


@bp.delete("/<kind>/<key>")
async def delete_object(kind: str, key: str):
    k = models.kind_or_404(kind)

    def delete(tx):
        current = tx.get(kind, key)
        if current is None:
            raise _not_found(k, key)
        _refuse_readonly(k, key, current)
        if kind == "users" and key == request_user_name:
            raise ApiError(409, "you cannot delete the user you are logged in as",
                           model=kind, key=key)
        tx.record(kind, key, "delete", current)  # events carry what was deleted
        if kind == "jobs":
            _delete_job_log(tx, base_root, key)
        return current
    request_user_name = request.user.get("Name")
    base_root = current_app.node.cfg.base_root
    log_path = storage.blob_path("job-logs", key) if kind == "jobs" else None
    gone = await _store().write(
        delete, during=gate_for(_store()).writing(log_path) if log_path else None)
    return json_response(models.public(kind, gone))

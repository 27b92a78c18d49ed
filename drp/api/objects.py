"""Generic CRUD for every object kind: /api/v3/<kind> and /api/v3/<kind>/<key>."""
from __future__ import annotations

import json

import jsonpatch
import jsonpointer
import trio
from quart import Blueprint, Response, current_app, request

from drp import auth, models, secureparams
from drp.api import jsonbody, limits, paramvalues
from drp.api import rbac
from drp.api.errors import ApiError
from drp.api.respond import json_response
from drp.blob import storage
from drp.blob.files import BlobFiles
from drp.blob.gate import gate_for
from drp.claims import allowed
from drp.store import filters

bp = Blueprint("objects", __name__, url_prefix="/api/v3")

_PARSE_INLINE = 64 << 10  # bodies this small are parsed on the event loop
_PATCH_INLINE_OPS = 16  # see patch_object: small patches are applied in the writer
PATCH_TRIES = 5  # a patch is applied again this often when the object changes meanwhile


def _store():
    return current_app.node.store


async def json_body(model: str = "", key: str = ""):
    """The request body as strict JSON (drp.api.jsonbody), or a 400 saying why not."""
    raw = await limits.read_capped_body(current_app.node.cfg.max_object_size,
                                        "--max-object-size", model=model, key=key)
    try:
        if len(raw) < _PARSE_INLINE:
            return jsonbody.loads(raw or b"null")
        return await trio.to_thread.run_sync(jsonbody.loads, raw)  # keep the loop free
    except jsonbody.JsonError as e:
        raise ApiError(400, f"body is not valid JSON: {e}", model=model, key=key) from None


def not_found(kind: models.Kind, key: str) -> ApiError:
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
    # Secret: what the user's tokens are signed with (dr-provision's User.Secret). Never
    # served; a new one sent revokes every token issued before (left out: kept).
    secret = obj.pop("Secret", None)
    if secret is not None and not isinstance(secret, str):
        raise ApiError(422, f"Secret must be a string, not {type(secret).__name__}",
                       model="users", key=str(obj.get("Name") or ""), type_="ValidationError")
    if current is not None:
        obj.setdefault("Roles", current.get("Roles", []))  # not "superuser" by default
        obj["PasswordHash"] = current.get("PasswordHash", "")
        obj["Secret"] = secret or current.get("Secret", "")
    else:
        obj["Secret"] = secret or auth.new_secret()
        obj["PasswordHash"] = auth.hash_password(password) if password else ""
    return obj


def _user_name() -> str:
    """Who is writing: CreatedBy / LastModifiedBy (a machine's token has no user name)."""
    return str((getattr(request, "user", None) or {}).get("Name") or "")


def _check_unique_name(tx, kind: models.Kind, key: str, obj: dict) -> None:
    field = models.UNIQUE_FIELDS.get(kind.name)
    if field is None:
        return
    clash = tx.name_taken(kind.name, obj[field], key)
    if clash is not None:
        raise ApiError(409, f"{kind.model} {field.lower()} {obj[field]} is already used by "
                       f"{clash}", model=kind.name, key=key)


@bp.route("/<kind>", methods=["GET", "HEAD"])
async def list_objects(kind: str):
    """dr-provision's list (drp/store/filters.py): X-DRP-List-Count is how many objects this
    reply holds, X-DRP-List-Filter-Count how many match the filters before offset and limit,
    X-DRP-List-Total-Count how many of the kind there are."""
    k = models.kind_or_404(kind)
    try:
        q = filters.query(request.args.items(multi=True), kind)
    except filters.FilterError as e:  # dr-provision answers a bad list query 406
        raise ApiError(406, str(e), model=kind, type_=request.method) from None
    everything = allowed(request.claims, kind, "get", "*")
    objs, matched, total = await _store().list_page(
        kind, q, bodies=request.method != "HEAD" or not everything, paged=everything)
    if not everything:  # claims on some objects only: those count, and are paged here
        objs = [o for o in objs if allowed(request.claims, kind, "get", str(o.get(k.key)))]
        matched = len(objs)
        objs = objs[max(q.offset, 0):]
        objs = objs[:q.limit] if q.limit >= 0 else objs
    headers = {"X-DRP-List-Count": str(q.page_size(matched)),
               "X-DRP-List-Filter-Count": str(matched), "X-DRP-List-Total-Count": str(total)}
    if request.method == "HEAD":
        return "", 200, headers
    if "decode" in request.args and kind in paramvalues.PARAMS_KINDS \
            and paramvalues.wants_decode(kind):  # secure params opened (getSecure)
        objs = await _decoded(kind, objs)
    return json_response([models.public(k.name, o) for o in objs], headers=headers)


@bp.route("/<kind>/<key>", methods=["GET", "HEAD"])
async def get_object(kind: str, key: str):
    k = models.kind_or_404(kind)
    text = await _store().get_json(kind, key)
    if text is None:
        raise not_found(k, key)
    req = request._get_current_object()  # one context lookup (this is the hottest route)
    if req.method == "HEAD":
        return "", 200
    # (the query string is looked at before request.args: parsing an empty one costs more)
    if req.query_string and "decode" in req.args and kind in paramvalues.PARAMS_KINDS \
            and paramvalues.wants_decode(kind, key):  # secure params opened (getSecure)
        return json_response((await _decoded(kind, [json.loads(text)]))[0])
    if kind not in models.HIDDEN_FIELDS:  # as stored is as served: no decode and re-encode
        return Response(text, 200, content_type="application/json")
    return json_response(models.public(kind, json.loads(text)))


async def _decoded(kind: str, objs: list[dict]) -> list[dict]:
    """The objects with the secure params the caller may read (getSecure on each) opened."""
    opener = await paramvalues.opener(_store())
    claims, key_field = request.claims, models.KINDS[kind].key
    return [{**o, "Params": secureparams.decoded(o["Params"], opener, kind,
                                                 str(o.get(key_field)))}
            if isinstance(o.get("Params"), dict)
            and allowed(claims, kind, "getSecure", str(o.get(key_field))) else o
            for o in objs]


@bp.post("/<kind>")
async def create_object(kind: str):
    k = models.kind_or_404(kind)
    obj = await json_body(kind)
    if isinstance(obj, dict) and kind == "users":  # hashes the password: on a hash thread
        obj = await current_app.authenticator.hashes.run(_prepare_user, dict(obj), None)
    obj = models.normalize(k, obj, user=_user_name())
    key = obj[k.key]
    claims = request.claims

    def create(tx):
        if tx.get(kind, key) is not None:
            raise ApiError(409, f"{k.model} {key} already exists", model=kind, key=key,
                           type_="Conflict")
        _check_unique_name(tx, k, key, obj)
        rbac.check_write(tx, claims, kind, key, None, obj)
        stored = paramvalues.check_write(tx, kind, key, obj, None)  # Schema, Secure
        tx.record(kind, key, "create", stored)
        return stored
    created = await _store().write(create)
    return json_response(models.public(kind, created), 201)


async def replace_object(k: models.Kind, key: str, make_new) -> dict:
    """Read-modify-write inside the writer: make_new(current) -> the new object."""
    def replace(tx):
        current = tx.get(k.name, key)
        if current is None:
            raise not_found(k, key)
        _refuse_readonly(k, key, current)
        new = make_new(current)
        if k.name == "users" and isinstance(new, dict):  # normalize refuses non-objects
            new = _prepare_user(dict(new), current)
        new = models.normalize(k, new, key=key, current=current, user=user)
        _check_unique_name(tx, k, key, new)
        rbac.check_write(tx, claims, k.name, key, current, new)
        new = paramvalues.check_write(tx, k.name, key, new, current)  # Schema, Secure
        tx.record(k.name, key, "update", new)
        return new
    claims, user = request.claims, _user_name()
    return await _store().write(replace)


@bp.put("/<kind>/<key>")
async def put_object(kind: str, key: str):
    k = models.kind_or_404(kind)
    obj = await json_body(kind, key)
    new = await replace_object(k, key, lambda current: obj)
    return json_response(models.public(kind, new))


async def patch_body(kind: str, key: str) -> list:
    """The request's RFC 6902 JSON Patch, checked whole before any of it is applied."""
    ops = await json_body(kind, key)
    limits.check_patch_ops(ops, current_app.node.cfg.max_patch_ops, kind, key)
    try:
        jsonpatch.JsonPatch(ops)
    except (jsonpatch.InvalidJsonPatch, TypeError, AttributeError) as e:
        raise ApiError(400, f"not an RFC 6902 JSON Patch: {e}", model=kind, key=key) from None
    return ops


@bp.patch("/<kind>/<key>")
async def patch_object(kind: str, key: str):
    k = models.kind_or_404(kind)
    ops = await patch_body(kind, key)
    cfg = current_app.node.cfg

    def patched(text: str) -> tuple[dict, dict]:
        current = json.loads(text)
        _refuse_readonly(k, key, current)
        try:
            after = limits.apply_patch(ops, models.public(kind, json.loads(text)), len(text),
                                       cfg.max_object_size, kind, key)
            jsonbody.check_tree(after)  # ops that each nest a level can build any depth
            return current, after
        except (jsonbody.JsonError, RecursionError) as e:
            reason = e if isinstance(e, jsonbody.JsonError) else \
                f"nested deeper than {jsonbody.MAX_DEPTH} levels of arrays and objects"
            raise ApiError(422, f"the patched object is not valid: {reason}", model=kind,
                           key=key) from None
        except jsonpatch.JsonPatchTestFailed as e:
            raise ApiError(409, f"patch test failed: {e}", model=kind, key=key,
                           type_="Conflict") from None
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
            raise ApiError(422, f"patch cannot be applied: {e}", model=kind, key=key) from None
    # A few ops from a small body that copy nothing (a copy is what can multiply an object)
    # cost about what a PUT of the object costs: applied in the writer to the object as it is
    # there, with no read or thread hop of their own.
    if len(ops) <= _PATCH_INLINE_OPS and len(await request.get_data()) < _PARSE_INLINE \
            and not any(op.get("op") == "copy" for op in ops):
        new = await replace_object(k, key, lambda current: patched(json.dumps(current))[1])
        return json_response(models.public(kind, new))
    # Any other patch is applied outside the writer, in a worker thread: a heavy one never
    # holds up other writes. The writer only checks that the object is still the one the
    # patch was applied to; if another write changed it meanwhile, it is applied again.
    for _ in range(PATCH_TRIES):
        text = await _store().get_json(kind, key)
        if text is None:
            raise not_found(k, key)
        before, after = await trio.to_thread.run_sync(patched, text)

        def make_new(current, before=before, after=after):
            if current != before:
                raise _Changed()
            return after
        try:
            new = await replace_object(k, key, make_new)
        except _Changed:
            continue
        return json_response(models.public(kind, new))
    raise ApiError(409, f"{k.model} {key} was changed by other writes while the patch was "
                   f"applied, {PATCH_TRIES} times; try again", model=kind, key=key,
                   type_="Conflict")


class _Changed(Exception):
    """The object changed between reading it and writing its patched version."""


def _delete_job_log(tx, base_root, uuid: str) -> None:
    """A job's log goes with the job (file first, then its row, like any blob delete)."""
    path = storage.blob_path("job-logs", uuid)
    if tx.blob(path) is not None:
        BlobFiles(base_root).remove(path)
        tx.record("blob", path, "delete")


@bp.delete("/<kind>/<key>")
async def delete_object(kind: str, key: str):
    k = models.kind_or_404(kind)

    def delete(tx):
        current = tx.get(kind, key)
        if current is None:
            raise not_found(k, key)
        _refuse_readonly(k, key, current)
        rbac.check_delete(kind, key)
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

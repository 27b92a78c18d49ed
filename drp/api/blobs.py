"""Files, ISOs, plugin providers and job logs under /api/v3: streamed up and down, each
mutation one change-log entry (bytes durable first, renamed into place inside the writer)."""
from __future__ import annotations

import os

import trio
from quart import Blueprint, current_app, request
from quart_trio.wrappers.response import TrioResponse as Response
from werkzeug.routing import BaseConverter

from drp.api import limits
from drp.api.errors import ApiError
from drp.api.respond import json_response
from drp.api.streaming import chunks_of
from drp.blob import storage
from drp.blob.files import BlobFiles
from drp.blob.gate import gate_for
from drp.blob.send import Opened, blob_response, open_blob
from drp.blob.storage import PathError

bp = Blueprint("blobs", __name__, url_prefix="/api/v3")

# One PUT of a job log is held in memory (--max-log-append bytes at most) and stored in the
# change log; --max-log-appends-in-flight of them are received at once. One more waits this
# long for its turn, then gets 429: the runner retries a log append it could not make.
LOG_APPEND_WAIT = 10.0
LOG_PIECE = 1 << 20  # a large append is recorded as several change-log entries of this size


class RawPath(BaseConverter):
    """Everything after the prefix, leading slashes and '..' included: drp.blob.storage judges
    it and answers with a DRP error, instead of the router redirecting or 404ing."""
    regex = ".+"
    part_isolating = False
    weight = 200


@bp.record_once
def _register_converter(state) -> None:
    state.app.url_map.converters.setdefault("rawpath", RawPath)


@bp.record_once
def _make_log_append_limiter(state) -> None:
    state.app.log_appends = trio.CapacityLimiter(state.app.node.cfg.max_log_appends_in_flight)


def _store():
    return current_app.node.store


def _base():
    return current_app.node.cfg.base_root


def _files() -> BlobFiles:
    return BlobFiles(_base())


def _api_error(e: PathError, model: str, key: str) -> ApiError:
    return ApiError(e.code, str(e), model=model, key=key)


async def _checked(area: str, rel: str, model: str):
    """(blob path, disk path) for a client path, checked for traversal and symlink escapes."""
    try:
        path = storage.blob_path(area, rel)
        return path, await trio.to_thread.run_sync(storage.safe_path, _base(), path)
    except PathError as e:
        raise _api_error(e, model, rel) from None


def _not_found(model: str, key: str) -> ApiError:
    return ApiError(404, f"{model} {key} not found", model=model, key=key, type_="NotFound")


# ---- shared upload / download / delete -------------------------------------------------------
async def upload(area: str, rel: str, model: str) -> dict:
    """Stream the request body into blob area/rel; returns the stored blob's info."""
    store = _store()
    refused = store.writes_refused
    if refused:  # refuse before receiving gigabytes a passive would discard
        raise ApiError(503, refused, model=model, key=rel, type_="HA_PASSIVE")
    try:
        path = storage.blob_path(area, rel)
        target = await trio.to_thread.run_sync(storage.prepare_target, _base(), path)
    except PathError as e:
        raise _api_error(e, model, rel) from None
    mode = storage.MODES.get(area, 0o644)
    staged = await storage.stage(target, chunks_of(request.body, storage.CHUNK))
    try:
        want = request.headers.get("X-DRP-SHA256SUM", "").strip().lower()
        if want and want != staged.sha256:
            raise ApiError(422, f"upload has sha256 {staged.sha256}, the client said {want}",
                           model=model, key=rel)

        files = _files()

        def put(tx):
            try:
                files.install(staged, path, mode)
            except PathError as e:
                raise _api_error(e, model, rel) from None
            tx.record("blob", path, "put",
                      {"size": staged.size, "sha256": staged.sha256, "mode": mode})
        await store.write(put, during=gate_for(store).writing(path))
    finally:
        storage.discard(staged)
    return {"Path": "/" + rel if area == "files" else rel, "Size": staged.size,
            "Sha256": staged.sha256}


async def download(area: str, rel: str, model: str) -> Response:
    try:
        path, base = storage.blob_path(area, rel), _base()
        opened = await open_blob(_store(), lambda: storage.safe_path(base, path), path)
    except PathError as e:
        raise _api_error(e, model, rel) from None
    except FileNotFoundError:
        raise _not_found(model, rel) from None
    return blob_response(request, opened, model=model, key=rel)


async def delete(area: str, rel: str, model: str) -> dict | None:
    """Remove blob area/rel; returns its last blobs row (None if the store had none)."""
    store = _store()
    path, _ = await _checked(area, rel, model)
    files = _files()

    def remove(tx):
        row = tx.blob(path)
        try:
            existed = files.remove(path)
        except PathError as e:
            raise _api_error(e, model, rel) from None
        if not existed and not row:
            raise _not_found(model, rel)
        tx.record("blob", path, "delete")
        return {k: row[k] for k in ("size", "sha256", "mode")} if row else None
    return await store.write(remove, during=gate_for(store).writing(path))


def _listdir(directory, files_only: bool) -> list[str] | None:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return None
    out = []
    for entry in entries:
        if storage.is_temp(entry.name):
            continue
        if entry.is_dir():
            if not files_only:
                out.append(entry.name + "/")
        else:
            out.append(entry.name)
    return out


# ---- files ---------------------------------------------------------------------------------
@bp.get("/files")
async def list_files():
    rel = request.args.get("path", "").lstrip("/")  # ?path=/ is dr-provision's root
    try:
        rel = storage.clean_relpath(rel.rstrip("/"), allow_empty=True)
        root = storage.area_root(_base(), "files")
        directory = root.joinpath(*rel.split("/")) if rel else root
        await trio.to_thread.run_sync(storage.check_inside, root, directory)
    except PathError as e:
        raise _api_error(e, "files", rel) from None
    names = await trio.to_thread.run_sync(_listdir, directory, False)
    if names is None:
        if not rel:
            return json_response([])
        raise _not_found("files", rel)
    return json_response(names)


@bp.post("/files/<rawpath:rel>", merge_slashes=False)
async def upload_file(rel: str):
    return json_response(await upload("files", rel, "files"), 201)


@bp.route("/files/<rawpath:rel>", methods=["GET", "HEAD"], merge_slashes=False)
async def get_file(rel: str):
    return await download("files", rel, "files")


@bp.delete("/files/<rawpath:rel>", merge_slashes=False)
async def delete_file(rel: str):
    await delete("files", rel, "files")
    return Response(None, 204)


# ---- isos ------------------------------------------------------------------------------------
@bp.get("/isos")
async def list_isos():
    names = await trio.to_thread.run_sync(_listdir, storage.area_root(_base(), "isos"), True)
    return json_response(names or [])


@bp.post("/isos/<rawpath:name>", merge_slashes=False)
async def upload_iso(name: str):
    return json_response(await upload("isos", name, "isos"), 201)


@bp.route("/isos/<rawpath:name>", methods=["GET", "HEAD"], merge_slashes=False)
async def get_iso(name: str):
    return await download("isos", name, "isos")


@bp.delete("/isos/<rawpath:name>", merge_slashes=False)
async def delete_iso(name: str):
    await delete("isos", name, "isos")
    return Response(None, 204)


# ---- plugin providers ------------------------------------------------------------------------
def _provider(name: str, row: dict) -> dict:
    return {"Name": name, "Version": "", "PluginVersion": 4, "HasPublish": False,
            "AvailableActions": [], "RequiredParams": [], "OptionalParams": [],
            "Documentation": "", "Size": row["size"], "Sha256": row["sha256"],
            "Mode": f"{row.get('mode', 0o755):04o}", "Meta": {}, "Validated": True,
            "Available": True, "Errors": [], "ReadOnly": False}


async def _provider_row(name: str) -> dict:
    path, _ = await _checked("plugins", name, "plugin_providers")
    row = await _store().blob(path)
    if row is None:
        raise _not_found("plugin_providers", name)
    return row


@bp.get("/plugin_providers")
async def list_providers():
    rows = await _store().blobs("plugins/")
    return json_response([_provider(r["path"].split("/", 1)[1], r) for r in rows])


@bp.route("/plugin_providers/<name>", methods=["GET", "HEAD"])
async def show_provider(name: str):
    row = await _provider_row(name)
    return Response(None, 200) if request.method == "HEAD" else json_response(
        _provider(name, row))


@bp.route("/plugin_providers/<name>/binary", methods=["GET", "HEAD"])
async def provider_binary(name: str):
    return await download("plugins", name, "plugin_providers")


@bp.post("/plugin_providers/<name>")
async def upload_provider(name: str):
    info = await upload("plugins", name, "plugin_providers")
    return json_response(_provider(name, {"size": info["Size"], "sha256": info["Sha256"],
                                          "mode": 0o755}), 201)


@bp.delete("/plugin_providers/<name>")
async def delete_provider(name: str):
    row = await delete("plugins", name, "plugin_providers")
    return json_response(_provider(name, row or {"size": 0, "sha256": "", "mode": 0o755}))


# ---- job logs --------------------------------------------------------------------------------
def _log_path(uuid: str) -> str:
    try:
        return storage.blob_path("job-logs", uuid)
    except PathError as e:
        raise _api_error(e, "jobs", uuid) from None


@bp.put("/jobs/<uuid>/log")
async def append_log(uuid: str):
    path = _log_path(uuid)
    limit = current_app.node.cfg.max_log_append
    length = request.headers.get("Content-Length", "").strip()
    if length.isdigit() and int(length) > limit:  # refused before it waits for a turn
        raise limits.too_large("the job-log append", limit, "--max-log-append", "jobs", uuid)
    appends = current_app.log_appends
    with trio.move_on_after(LOG_APPEND_WAIT) as waited:
        await appends.acquire()
    if waited.cancelled_caught:
        raise ApiError(429, f"{appends.total_tokens} job-log appends are being received "
                       "already, the limit (the server's --max-log-appends-in-flight "
                       "raises it); try again", model="jobs",
                       key=uuid, headers={"Retry-After": "1"})
    try:
        return await _append_log(uuid, path, limit)
    finally:
        appends.release()


async def _append_log(uuid: str, path: str, limit: int):
    data = await limits.read_capped_body(limit, "--max-log-append", "the job-log append",
                                         model="jobs", key=uuid)

    files = _files()

    def append(tx):
        if tx.get("jobs", uuid) is None:
            raise _not_found("jobs", uuid)
        row = tx.blob(path)
        offset = row["size"] if row else 0
        if data:
            files.append(path, offset, data)
            for i in range(0, len(data), LOG_PIECE):
                piece = data[i:i + LOG_PIECE]
                tx.record("joblog", path, "append", {"offset": offset + i,
                                                     "length": len(piece)}, data=piece)
        return offset + len(data)
    size = await _store().write(append)
    return Response(None, 204, {"X-DRP-Log-Size": str(size)})


@bp.route("/jobs/<uuid>/log", methods=["GET", "HEAD"])
async def get_log(uuid: str):
    path = _log_path(uuid)
    store = _store()
    if await store.get("jobs", uuid) is None:
        raise _not_found("jobs", uuid)
    row = await store.blob(path)
    size = row["size"] if row else 0
    try:
        target = await trio.to_thread.run_sync(storage.safe_path, _base(), path)
        fd, have = await trio.to_thread.run_sync(storage.open_regular, target)
        opened = Opened(fd, have, None)
    except FileNotFoundError:
        opened = Opened(None, 0, None)
    except PathError as e:
        raise _api_error(e, "jobs", uuid) from None
    # Only the recorded bytes: an append in progress may already be past them on disk.
    return blob_response(request, opened, model="jobs", key=uuid, size=size)

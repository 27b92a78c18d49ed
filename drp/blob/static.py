"""The static file server: plain HTTP on --static-port, read-only, unauthenticated, serving
<base-root>/tftpboot/ (so /files/... and /isos/...) to machines being provisioned.

It honours Range, If-None-Match and HEAD, never lists directories, and never serves anything
whose real path (symlinks resolved) is outside tftpboot/.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import trio
from quart import request
from quart_trio.wrappers.response import TrioResponse as Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from drp.api import streaming
from drp.blob import storage
from drp.blob.send import blob_response, open_blob
from drp.errors import ApiError

log = logging.getLogger("drp.static")


class _RawPath(BaseConverter):
    regex = ".+"
    part_isolating = False
    weight = 200


def _error(code: int, message: str, key: str = "") -> Response:
    return Response(json.dumps(ApiError(code, message, model="files", key=key).body()), code,
                    {"Content-Type": "application/json"})


def _blob_key(rel: str) -> str | None:
    """The blobs-table path of a tftpboot-relative path, when it is one (files/..., isos/x)."""
    if rel.split("/", 1)[0] not in ("files", "isos"):
        return None
    try:
        return storage.blob_path(*rel.split("/", 1)) if "/" in rel else None
    except storage.PathError:
        return None


def create_static_app(node) -> QuartTrio:
    root = Path(node.cfg.base_root, "tftpboot")
    app = QuartTrio("drp-static")
    streaming.install(app)
    app.url_map.converters["rawpath"] = _RawPath

    @app.route("/", methods=["GET", "HEAD"])
    async def index():
        return _error(404, "directory listings are not served")

    @app.route("/<rawpath:rel>", methods=["GET", "HEAD"], merge_slashes=False)
    async def serve(rel: str):
        # exactly what was asked: werkzeug's request.path strips extra leading slashes
        rel = request.scope.get("path", request.path)[1:]
        if rel.endswith("/") and "\x00" not in rel and ".." not in rel.split("/"):
            return _error(404, "directory listings are not served", rel)
        try:
            clean = storage.clean_relpath(rel)
            target = root.joinpath(*clean.split("/"))
            opened = await open_blob(node.store, lambda: storage.check_inside(root, target),
                                     _blob_key(clean))
        except storage.PathError as e:
            return _error(e.code, str(e), rel)
        except FileNotFoundError:
            return _error(404, f"{clean} not found", clean)
        return blob_response(request, opened, model="files", key=clean)

    @app.errorhandler(HTTPException)
    async def _http_error(err: HTTPException):
        return _error(err.code or 500, err.description or err.name)

    return app


def static_service(node, stop: trio.Event):
    """An async fn(task_status=...) serving tftpboot/ on --static-port until `stop` is set."""
    from drp.server import hypercorn_config, serve_app
    app = create_static_app(node)

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        # Temp files from before this start belong to transfers a crash or kill cut off.
        swept = await trio.to_thread.run_sync(storage.sweep_temps, node.cfg.base_root,
                                              node.started)
        if swept:
            log.info("removed %d temp file(s) left by interrupted uploads", swept)
        os.makedirs(Path(node.cfg.base_root, "tftpboot"), exist_ok=True)
        await serve_app(app, hypercorn_config(node.cfg.static_port), stop,
                        task_status=task_status)
    return run

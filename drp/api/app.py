"""The Quart-Trio app: authentication, dr-provision's error bodies, and the blueprints."""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager

import trio

from quart import Response, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from drp.api import authn, streaming
from drp.errors import ApiError
from drp.node import Node

log = logging.getLogger("drp.api")


def json_response(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(data), status=status, headers=headers,
                    content_type="application/json")


@contextmanager
def websocket_scope(node: Node):
    """Run a websocket handler in a scope the server cancels when it stops."""
    with trio.CancelScope() as scope:
        node.websockets.add(scope)
        try:
            yield scope
        finally:
            node.websockets.discard(scope)


def create_app(node: Node) -> QuartTrio:
    app = QuartTrio("drp")
    streaming.install(app)  # request bodies stream with backpressure (uploads of any size)
    app.config["MAX_CONTENT_LENGTH"] = None  # uploads stream; sizes are not capped here
    app.config["BODY_TIMEOUT"] = None
    app.config["RESPONSE_TIMEOUT"] = None
    app.node = node
    app.authenticator = authn.Authenticator(node.store, node.cfg.ha_token)

    @app.before_request
    async def _auth_http():
        request.user = await app.authenticator.authenticate(request.headers)

    @app.before_websocket
    async def _auth_ws():
        if websocket.path == "/api/v3/ha/replicate":
            return  # authenticates itself, to tell a refused passive why
        websocket.user = await app.authenticator.authenticate(websocket.headers)

    @app.errorhandler(ApiError)
    async def _api_error(err: ApiError):
        headers = {"WWW-Authenticate": 'Basic realm="dr-provision"'} if err.code == 401 else None
        return json_response(err.body(), err.code, headers)

    @app.errorhandler(HTTPException)
    async def _http_error(err: HTTPException):
        return json_response(ApiError(err.code or 500, err.description or err.name).body(),
                             err.code or 500)

    @app.errorhandler(Exception)
    async def _unexpected(err: Exception):
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return json_response(ApiError(500, f"internal error: {err}").body(), 500)

    from drp.api import blueprints
    for bp in blueprints.all_blueprints():
        app.register_blueprint(bp)
    return app

"""The Quart-Trio app: authentication, dr-provision's error bodies, and the blueprints."""
from __future__ import annotations

import logging

from quart import request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from drp.api import authn, blueprints, oserrors, rbac, sendtimeout, streaming
from drp.api.errors import MAPPED, ApiError, api_error
from drp.api.ha_trust import PUBLIC_PATHS
from drp.api.respond import json_response
from drp.ha.certs import Untrusted
from drp.ha.trust import peer_certificate
from drp.node import Node
from drp.store.errors import NotReplicated

log = logging.getLogger("drp.api")
READS = frozenset({"GET", "HEAD", "OPTIONS"})


def create_app(node: Node) -> QuartTrio:
    app = QuartTrio("drp", static_folder=None)  # files are the static port's job
    # request bodies stream with backpressure (uploads of any size); stalled ones get 408
    streaming.install(app, body_timeout=node.cfg.body_timeout)
    sendtimeout.install(node.cfg.send_timeout)  # a peer that stops reading is let go
    app.config["MAX_CONTENT_LENGTH"] = None  # uploads stream; sizes are not capped here
    app.config["BODY_TIMEOUT"] = None
    app.config["RESPONSE_TIMEOUT"] = None
    app.node = node
    app.authenticator = authn.Authenticator(node.store, node.cfg.ha_token, node.cfg)

    async def _authorize(ctx) -> None:
        """Every route is checked here against the caller's claims (drp.api.rbac.ROUTES)."""
        ctx.claims = await app.authenticator.claims(ctx.user)
        if ctx.url_rule is None:  # no such route: the 404/405 follows
            return
        rbac.check(ctx.claims, rbac.need_for(ctx.url_rule.endpoint, ctx.view_args,
                                             ctx.method, str(ctx.user.get("Name", ""))))

    node_users: dict[str, dict] = {}  # one dict per node: its claims are cached by identity

    def _node_user(scope) -> dict | None:
        """A connection with a client certificate came in on the cluster side of the port
        (drp.ha.trust.api_context): another node, authenticated by it (a superuser: it holds
        the cluster's data anyway), or refused with the reason."""
        der = peer_certificate(scope)
        if der is None:
            return None
        try:
            drp_id = node.trust.verify(der)
        except Untrusted as e:
            log.warning("refusing a node certificate from %s: %s",
                        (scope.get("client") or ("?",))[0], e)
            raise ApiError(401, f"the node certificate was refused: {e}",
                           type_="AUTH_ERROR") from None
        user = node_users.get(drp_id)
        if user is None:
            user = node_users[drp_id] = {"Name": f"node:{drp_id}", "Roles": ["superuser"],
                                         "NodeId": drp_id}
        return user

    @app.before_request
    async def _auth_http():
        req = request._get_current_object()  # one context lookup, not one per attribute
        # The leader lease a write is answered under (automatic failover), checked again
        # just before the answer leaves: see _say_who.
        req.leadership = node.ha.leadership() if node.ha is not None else None
        if node.trust is not None:  # an HA node: other nodes come with a certificate
            if req.path in PUBLIC_PATHS:  # discovery and enrolment check what they need
                req.user, req.claims = {}, ()
                return
            user = _node_user(req.scope)
            if user is not None:
                req.user, req.node_id = user, user["NodeId"]
                await _authorize(req)
                return
        req.user = await app.authenticator.authenticate(req.headers, req.remote_addr)
        await _authorize(req)

    @app.before_websocket
    async def _auth_ws():
        if websocket.path == "/api/v3/ha/replicate":
            return  # authenticates itself, to tell a refused passive why
        websocket.user = await app.authenticator.authenticate(websocket.headers,
                                                              websocket.remote_addr)
        await _authorize(websocket)

    @app.after_request
    async def _say_who(response):
        req = request._get_current_object()
        leadership = getattr(req, "leadership", None)
        if leadership is not None and req.method not in READS and response.status_code < 300:
            # The store's gate checked the lease when the write was confirmed; a pause (GC,
            # SIGSTOP) between there and here would otherwise let the answer out after
            # another node took over. Committed and replicated, but not confirmed: retry.
            try:
                leadership.check()
            except NotReplicated as err:  # HA_UNCONFIRMED
                failed = api_error(err)
                response = json_response(failed.body(), failed.code, failed.headers)
        # Behind the VIP, which node answered (tests and operators record who acknowledged
        # a write across a failover).
        response.headers["X-DRP-Node"] = node.drp_id
        return response

    @app.errorhandler(ApiError)
    async def _api_error(err: ApiError):
        headers = {"WWW-Authenticate": 'Basic realm="dr-provision"'} if err.code == 401 else {}
        return json_response(err.body(), err.code, {**headers, **err.headers})

    async def _lower_error(err: Exception):  # the store's and the models' own exceptions
        return await _api_error(api_error(err))
    for lower in MAPPED:
        app.register_error_handler(lower, _lower_error)

    @app.errorhandler(HTTPException)
    async def _http_error(err: HTTPException):
        return json_response(ApiError(err.code or 500, err.description or err.name).body(),
                             err.code or 500)

    @app.errorhandler(Exception)
    async def _unexpected(err: Exception):
        known = oserrors.api_error_for(err, request.method, request.path)
        if known is not None:  # a full disk or a path too long: no bug, no traceback
            return json_response(known.body(), known.code)
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return json_response(ApiError(500, f"internal error: {err}").body(), 500)

    for bp in blueprints.all_blueprints():
        app.register_blueprint(bp)
    return app

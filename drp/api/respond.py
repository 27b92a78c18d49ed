"""What every blueprint answers with: JSON replies, and websocket handlers the server can stop."""
from __future__ import annotations

import json
from contextlib import contextmanager

import trio
from quart import Response

from drp.node import Node


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

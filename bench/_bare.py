"""A bare Quart-Trio app answering every GET with a constant body, on drp's hypercorn settings.

    python -m bench._bare PORT CERT KEY BODY_FILE

The API benchmark's baseline: the same server stack (hypercorn, TLS, drp.serving.hypercorn_config)
doing no work of its own. Its websocket /echo sends every message back: the replication
benchmark's transport floor. Prints "ready" once listening; stops on SIGTERM.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import trio
from quart import Response, websocket
from quart_trio import QuartTrio

from drp.serving import hypercorn_config, serve_app


def make_app(body: bytes) -> QuartTrio:
    app = QuartTrio("bare")

    @app.route("/<path:anything>")
    async def constant(anything: str):
        return Response(body, content_type="application/json")

    @app.websocket("/echo")
    async def echo():
        while True:
            await websocket.send(await websocket.receive())
    return app


async def main(port: int, cert: Path, key: Path, body: bytes) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_app, make_app(body),
                            hypercorn_config(port, cert, key, host="127.0.0.1"), stop)
        print("ready", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                stop.set()
                break


if __name__ == "__main__":
    port, cert, key, body_file = sys.argv[1:5]
    trio.run(main, int(port), Path(cert), Path(key), Path(body_file).read_bytes())

"""A deadline on every write to an API connection (--send-timeout).

hypercorn 0.18's trio TCPServer writes with no deadline and shielded from cancellation, so a peer
that stops reading holds its connection, the task writing to it and a graceful stop for ever: a
/ws subscriber dropped for falling behind (drp/api/events.py) stayed connected, and SIGTERM
waited on it. Here a write the peer does not take within the deadline closes that connection.
"""
from __future__ import annotations

import logging

import trio
from hypercorn.events import Closed, RawData
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger("drp.http")

_original = TCPServer.protocol_send
_deadline: dict[str, float | None] = {"seconds": None}


def install(seconds: float | None) -> None:
    """Every TCPServer write from now on gets `seconds` (None or 0: none, as hypercorn has it)."""
    _deadline["seconds"] = seconds or None
    TCPServer.protocol_send = _protocol_send


async def _protocol_send(self: TCPServer, event) -> None:
    seconds = _deadline["seconds"]
    if seconds is None or not isinstance(event, RawData):
        return await _original(self, event)
    async with self.send_lock:
        # As hypercorn's: a write is never cut in half by a cancellation from outside (shield),
        # only by its own deadline, when the peer takes nothing for so long.
        broken = False
        with trio.CancelScope(shield=True, deadline=trio.current_time() + seconds) as scope:
            try:
                await self.stream.send_all(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                broken = True
        if broken or scope.cancelled_caught:
            with trio.CancelScope(shield=True):  # outside the deadline: closing is not cut
                if not broken:
                    log.info("closed an API connection: the peer took none of a reply's "
                             "bytes for %gs (--send-timeout)", seconds)
                    await trio.aclose_forcefully(self.stream)
                await self.protocol.handle(Closed())

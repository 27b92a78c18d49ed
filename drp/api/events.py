"""Fan-out for the /api/v3/ws event stream: one store listener for every subscriber.

A committed change is looked up in an index of the subscribers' patterns (Type, Action, Key), so
it touches only subscribers whose patterns match it; its event's JSON text is made once
and put into each one's bounded queue with send_nowait. Writers run this listener (Store._notify)
and so never wait on a subscriber: one whose queue is full is dropped — unregistered, its
connection cancelled, one warning logged — rather than fed a stream with holes in it.
"""
from __future__ import annotations

import json
import logging
import weakref

import trio

from drp.claims import allowed

log = logging.getLogger("drp.api")

QUEUE_LENGTH = 1000  # events a subscriber may fall behind before it is dropped
UNPUBLISHED_KINDS = ("secrets", "ha")

Pattern = tuple[str, str, str]  # (Type, Action, Key), each "*" for any


def parse_pattern(pattern: str) -> tuple[str, str, str]:
    """"Type.Action.Key" with "*" for any; missing parts are "*" (the key may hold dots)."""
    kind, action, key = (pattern.split(".", 2) + ["*", "*"])[:3]
    return kind, action, key


def event(change: dict) -> dict:
    obj = change["body"]
    if change["kind"] == "users" and isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k not in ("PasswordHash", "Secret")}
    return {"Time": change["time"], "Type": change["kind"], "Action": change["action"],
            "Key": change["key"], "Object": obj}


class Subscriber:
    """One /ws connection: what it registered, what it may see, its queue of event texts."""

    def __init__(self, claims, peer: str):
        self.claims, self.peer = claims, peer
        self.send, self.recv = trio.open_memory_channel(QUEUE_LENGTH)
        self.patterns: set[str] = set()
        self.scope = trio.CancelScope()  # cancelled when it is dropped
        self.dropped = False


class EventHub:
    def __init__(self) -> None:
        # pattern -> the subscribers that registered it (a dict: a set in insertion order)
        self._index: dict[Pattern, dict[Subscriber, None]] = {}

    def register(self, sub: Subscriber, pattern: str) -> None:
        if sub.dropped or pattern in sub.patterns:
            return
        sub.patterns.add(pattern)
        self._index.setdefault(parse_pattern(pattern), {})[sub] = None

    def deregister(self, sub: Subscriber, pattern: str) -> None:
        if pattern not in sub.patterns:
            return
        sub.patterns.discard(pattern)
        parsed = parse_pattern(pattern)
        subs = self._index[parsed]
        # another of its patterns may parse the same ("machines" and "machines.*.*")
        if not any(parse_pattern(p) == parsed for p in sub.patterns):
            del subs[sub]
        if not subs:
            del self._index[parsed]

    def remove(self, sub: Subscriber) -> None:
        for pattern in list(sub.patterns):
            self.deregister(sub, pattern)

    def on_commit(self, changes: list[dict]) -> None:
        """The store listener: on the event loop, in the writer's task; never blocks."""
        for change in changes:
            kind = change["kind"]
            if not self._index or kind in UNPUBLISHED_KINDS:
                continue
            key = str(change["key"])
            targets = self._targets(kind, change["action"], key)
            if not targets:
                continue
            text = json.dumps(event(change))
            for sub in targets:
                if allowed(sub.claims, kind, "get", key):
                    self._offer(sub, text)

    def _targets(self, kind: str, action: str, key: str) -> list[Subscriber]:
        """Subscribers with a pattern matching the change: eight lookups, whatever the number
        of subscribers or of patterns that match something else."""
        found: dict[Subscriber, None] = {}
        for k in (kind, "*"):
            for a in (action, "*"):
                for ky in (key, "*"):
                    found.update(self._index.get((k, a, ky), ()))
        return list(found)

    def _offer(self, sub: Subscriber, text: str) -> None:
        if sub.dropped:
            return
        try:
            sub.send.send_nowait(text)
        except trio.WouldBlock:
            sub.dropped = True
            self.remove(sub)
            sub.scope.cancel()
            log.warning("event subscriber %s fell %d events behind; disconnected it",
                        sub.peer, QUEUE_LENGTH)


_hubs: "weakref.WeakKeyDictionary[object, EventHub]" = weakref.WeakKeyDictionary()


def hub_for(store) -> EventHub:
    """The store's hub, listening to it from the first call on."""
    hub = _hubs.get(store)
    if hub is None:
        hub = _hubs[store] = EventHub()
        store.listeners.append(hub.on_commit)
    return hub


async def serve(hub: EventHub, ws, claims, peer: str) -> None:
    """Send `ws` its matching events while reading its register/deregister commands."""
    sub = Subscriber(claims, peer)

    async def pump() -> None:
        async for text in sub.recv:
            await ws.send(text)
    try:
        with sub.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                while True:
                    msg = (await ws.receive()).strip()
                    verb, _, pattern = msg.partition(" ")
                    if verb == "register" and pattern:
                        hub.register(sub, pattern)
                    elif verb == "deregister":
                        hub.deregister(sub, pattern)
                    else:
                        await ws.send(json.dumps({"Error": f"unknown command {msg!r}"}))
    finally:
        hub.remove(sub)
    if sub.dropped:  # tell it why, if it still takes bytes at all
        with trio.move_on_after(1):
            await ws.close(1008, f"fell {QUEUE_LENGTH} events behind")

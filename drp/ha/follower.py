"""The passive's side of replication: dial the active, catch up, then follow in real time.

A read loop around a PassiveSession (drp/ha/passive_session.py): each frame received goes into
the session, and what it returns is carried out here — send a frame, fetch and install a
snapshot, apply a batch (bytes first, then the store, each entry in its own transaction), log.
The connection comes from an injected `connect()` (a websocket to the active's API port in a
real node, a memory channel in the in-process tests); reconnects back off, capped.
"""
from __future__ import annotations

import hashlib
import logging
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import AsyncContextManager, Callable, Protocol

import trio
import trio_websocket

from drp import __version__
from drp.blob.files import BlobFiles
from drp.blob.gate import gate_for
from drp.ha import protocol as p
from drp.ha.bulkget import pinned_context
from drp.ha.catchup import full_catchup, remove_orphans
from drp.ha.passive_session import PassiveSession
from drp.ha.session_events import (Apply, FetchSnapshot, HandedOver, InSync, Lagging, Refused,
                                   Send, Stalled, Welcomed)
from drp.ha.transfer import Gone, Progress
from drp.metrics import APPLIED_SEQ, LAG_ENTRIES, LAG_SECONDS
from drp.platform_id import goarch, goos

log = logging.getLogger("drp.ha.passive")
REALTIME = "Stream switch to realtime streaming"
GONE = "gone"  # a blob the active no longer has
BYTES_KINDS = ("blob", "joblog")  # entries that change files as well as rows
MAX_MESSAGE = 256 << 20
BACKOFF_MAX = 5.0
REFUSED_RETRY = 30.0  # a refusal someone must fix: token, ha-id, version, platform
# "busy": most often this node's own previous connection, which the active has not yet seen
# close (the node restarted, or its network blinked); that ends within seconds.
BUSY_RETRY = 5.0
REFUSED = "Refused"  # ha_status while the active refuses this node


class Channel(Protocol):
    """One replication connection as the passive sees it."""
    async def send(self, frame: str) -> None: ...
    async def receive(self) -> str | bytes: ...
    def peer_certificate(self) -> bytes | None: ...  # DER; None when not over TLS


Connect = Callable[[], AsyncContextManager[Channel]]


class RefusedError(Exception):
    def __init__(self, reason: str, code: str):
        super().__init__(reason)
        self.reason, self.code = reason, code


class _Websocket:
    def __init__(self, ws):
        self.ws = ws

    async def send(self, frame: str) -> None:
        await self.ws.send_message(frame)

    async def receive(self) -> str | bytes:
        return await self.ws.get_message()

    def peer_certificate(self) -> bytes | None:
        getpeercert = getattr(getattr(self.ws, "_stream", None), "getpeercert", None)
        return getpeercert(binary_form=True) if getpeercert else None


def websocket_connect(join_url: str, ha_token: str) -> Connect:
    """Dial the active's replication websocket (Bearer <ha-token>)."""
    base = join_url.rstrip("/")
    url = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + \
        "/api/v3/ha/replicate"
    headers = [(b"authorization", f"Bearer {ha_token}".encode())]

    @asynccontextmanager
    async def connect():
        ctx = pinned_context()  # who it is is checked by the pinned sha256 (_check_pin)
        async with trio_websocket.open_websocket_url(
                url, ctx, extra_headers=headers, max_message_size=MAX_MESSAGE,
                receive_buffer_size=1 << 20, connect_timeout=5,
                disconnect_timeout=0.5) as ws:
            yield _Websocket(ws)
    return connect


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"rejected with HTTP {exc.status_code}: {(exc.body or b'').decode()[:200]}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Follower:
    """Follows the active for as long as the passive role runs."""

    def __init__(self, node, connect: Connect, fetcher, clock: Callable[[], float]):
        self.node, self.store, self.cfg = node, node.store, node.cfg
        self.connect, self.fetcher, self.clock = connect, fetcher, clock
        self.files = BlobFiles(self.cfg.base_root)
        self.session: PassiveSession | None = None  # the current connection's
        self.last_session: PassiveSession | None = None  # kept after it ends (drain reports it)
        self.ha_status = p.CONNECTING
        self.active_id = ""
        self.reason = ""  # why the active refuses us, for operators
        self.welcomed = False  # the current session got a welcome
        self.reconciled = False  # blob files checked against the rows (see remove_orphans)
        self._progress = trio.Event()  # set after every message handled while streaming

    def _status(self, text: str) -> None:
        self.node.status_line(text)

    @property
    def streaming(self) -> bool:
        return self.session is not None and self.session.streaming

    async def drain(self, timeout: float) -> None:
        """Before this node takes over from an active that is handing over: apply what it
        still sends (it accepts no new writes), so its last acknowledged writes are here."""
        began = self.clock()
        with trio.move_on_after(timeout):
            while self.streaming and not self.session.has_final:
                await self._progress.wait()
        session = self.session or self.last_session
        if session is not None and session.has_final:
            log.info("took every entry of the handing-over active (seq %d, %.0f ms)",
                     session.applied_seq, (self.clock() - began) * 1000)
        elif self.streaming:
            log.warning("the active did not finish its handover within %.1fs; taking over at "
                        "seq %d", timeout, session.applied_seq)

    async def run(self) -> None:
        """Follow forever: reconnect with capped backoff; refused → retry slowly."""
        backoff = 0.2
        try:
            await self.fetcher.sweep_staged()
            while True:
                self.welcomed = False
                try:
                    async with self.connect() as channel:
                        await self._follow(channel)
                except RefusedError as r:
                    if r.code == "not_active":  # the VIP is changing hands: retry soon
                        log.info("%s is not the active (yet): %s; retrying in %.1fs",
                                 self.cfg.join_url, r.reason, backoff)
                        await trio.sleep(backoff)
                        backoff = min(backoff * 2, BACKOFF_MAX)
                        continue
                    self.reason, self.ha_status = r.reason, REFUSED
                    self._status(f"passive: refused by the active: {r.reason}")
                    retry = BUSY_RETRY if r.code == "busy" else REFUSED_RETRY
                    log.error("the active refused this node (%s): %s; retrying in %.0fs",
                              r.code, r.reason, retry)
                    await trio.sleep(retry)
                    continue
                except Exception as e:  # noqa: BLE001 — every failure means: reconnect
                    log.warning("replication from %s: %s; reconnecting in %.1fs",
                                self.cfg.join_url, _describe(e), backoff)
                finally:
                    self.session = None
                    self._progressed()
                if self.welcomed:  # a session that got going: reconnect promptly
                    backoff = 0.2
                self.ha_status = p.CONNECTING
                self._status(f"passive: connecting to {self.cfg.join_url}")
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            with trio.CancelScope(shield=True):
                await self.fetcher.aclose()

    async def _hello(self) -> p.Hello:
        history = tuple(p.HistoryEntry(*h) for h in await self.store.history())
        epoch = history[-1].epoch if history else 0
        return p.Hello(self.cfg.ha_id, self.node.drp_id, __version__, goos(), goarch(), epoch,
                       self.store.head, history)

    # ---- the read loop --------------------------------------------------------------------
    async def _follow(self, channel: Channel) -> None:
        session = self.session = self.last_session = PassiveSession(await self._hello(),
                                                                    self.clock())
        await self._carry_out(channel, session, session.start())
        while True:
            deadline = session.deadline
            frame = None
            with trio.move_on_after(max(0.0, deadline - self.clock())
                                    if deadline is not None else float("inf")):
                frame = await channel.receive()
            if frame is None:
                events = session.tick(self.clock())
            else:
                events = session.receive(p.decode(frame), self.clock())
            await self._carry_out(channel, session, events)
            if session.streaming:
                self._progressed()

    async def _carry_out(self, channel: Channel, session: PassiveSession, events) -> None:
        for ev in events:
            if isinstance(ev, Send):
                await channel.send(ev.frame)
            elif isinstance(ev, Refused):
                raise RefusedError(ev.reason, ev.code)
            elif isinstance(ev, Welcomed):
                await self._welcomed(channel, ev.welcome)
            elif isinstance(ev, FetchSnapshot):
                await self._catch_up(ev.snapshot, session.divergent > 0)
                await self._carry_out(channel, session,
                                      session.snapshot_installed(ev.snapshot.seq, self.clock()))
            elif isinstance(ev, Apply):
                # Apply what was received even if the role is being switched right now.
                with trio.CancelScope(shield=True):
                    await self._apply(ev.entries)
                await self._carry_out(channel, session,
                                      session.applied(ev.entries[-1]["seq"], self.clock()))
            elif isinstance(ev, InSync):
                log.info(REALTIME)
                self.ha_status = p.IN_SYNC
                self._status(f"passive: in sync with active {self.active_id}")
            elif isinstance(ev, HandedOver):
                log.info("the active is handing over; its last entry is seq %d", ev.final_head)
            elif isinstance(ev, Lagging):
                log.info("streaming: applied seq %d of %d (%d behind)", ev.applied, ev.head,
                         ev.behind)
                self._status(f"passive: syncing, {ev.behind} entries behind")
            elif isinstance(ev, Stalled):
                raise p.ProtocolError(ev.reason)
        APPLIED_SEQ.set(session.applied_seq)
        LAG_ENTRIES.set(session.lag_entries)
        LAG_SECONDS.set(session.lag_seconds or 0)

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def _welcomed(self, channel: Channel, msg: p.Welcome) -> None:
        await self._check_pin(channel, msg.drp_id)
        self.fetcher.use_static(msg.static_port)
        self.welcomed = True
        self.active_id, self.reason, self.ha_status = msg.drp_id, "", p.SYNCING
        if msg.mode == p.FULL:
            if msg.divergent:
                log.warning("this node holds %d change-log entries that the active's history "
                            "lacks (written while it was active and never replicated); "
                            "dropping them and taking a full catch-up", msg.divergent)
            log.info("connected to active %s: full catch-up", msg.drp_id)
        else:
            log.info("connected to active %s: resuming from seq %d (active head %d)",
                     msg.drp_id, self.store.head + 1, msg.head)
            if not self.reconciled:  # once per role: only a crash leaves such files
                await remove_orphans(self.node)
                self.reconciled = True

    async def _check_pin(self, channel: Channel, active_id: str) -> None:
        cert = channel.peer_certificate()
        if cert is None:
            return
        fingerprint = hashlib.sha256(cert).hexdigest()
        key = f"pin:{active_id}"
        pinned = await self.store.local_get(key)
        if pinned is None:
            await self.store.local_set(key, fingerprint)
            log.info("pinned the TLS certificate of active %s (sha256 %s)", active_id,
                     fingerprint[:16])
        elif pinned != fingerprint:
            raise RefusedError(
                f"the TLS certificate of active {active_id} changed (pinned sha256 "
                f"{pinned[:16]}…, now {fingerprint[:16]}…): if that is expected, remove the "
                f"pin with `sqlite3 {self.store.path} \"DELETE FROM local WHERE name='{key}'\"`",
                "certificate")
        self.fetcher.set_fingerprint(fingerprint)  # bulk downloads: this server only

    async def _catch_up(self, snap: p.Snapshot, divergent: bool) -> None:
        progress = Progress(self._status)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(progress.log_loop)
            await full_catchup(self.node, self.fetcher, snap, progress, divergent)
            nursery.cancel_scope.cancel()
        text, _ = progress.line()
        log.info("catch-up done: %s", text)

    # ---- applying a batch -----------------------------------------------------------------
    async def _apply(self, entries: list[dict]) -> None:
        """Bytes first (blobs, job-log appends), then the rows. Every blob the batch puts is
        fetched before anything changes on disk: when a fetch fails (the active went away
        mid-batch, its last entries maybe lost with it), no file is left without its row, nor
        a file replaced by the bytes of an entry this node never applied. From the first
        change on disk to the commit of the rows the paths are held in the blob gate, as on
        the active, so a reader here never pairs a row with bytes it does not describe."""
        staged: dict[int, Path | str | None] = {}  # seq of a blob put -> staged file | GONE
        touched: set[str] = set()  # blob paths an earlier entry of this batch puts or deletes
        try:
            for entry in entries:
                if entry["kind"] == "blob":
                    if entry["action"] == "put":
                        staged[entry["seq"]] = await self._stage_blob(
                            entry["key"], entry["body"], entry["key"] in touched)
                    touched.add(entry["key"])
            with ExitStack() as held:
                gate = gate_for(self.store)
                for path in sorted({e["key"] for e in entries if e["kind"] in BYTES_KINDS}):
                    held.enter_context(gate.writing(path))
                for entry in entries:  # on disk, in order
                    await self._apply_bytes(entry, staged)
                await self.store.apply_replicated(entries)
        finally:
            for left in staged.values():  # a failed batch: nothing of it is put in place
                if isinstance(left, Path):
                    left.unlink(missing_ok=True)

    async def _apply_bytes(self, entry: dict, staged: dict) -> None:
        kind, key, body = entry["kind"], entry["key"], entry["body"]
        if kind == "blob":
            got = staged.pop(entry["seq"], None) if entry["action"] == "put" else GONE
            if got == GONE:  # a delete, or deleted on the active since the put
                await trio.to_thread.run_sync(self.files.remove, key)
            elif got is not None:
                await trio.to_thread.run_sync(self.files.install, got, key,
                                              body.get("mode", 0o644))
        elif kind == "joblog":
            await trio.to_thread.run_sync(self.files.append, key, body["offset"], entry["data"])

    async def _stage_blob(self, path: str, meta: dict, touched: bool) -> Path | str | None:
        """The blob's bytes fetched aside (None: we hold them already; GONE: the active no
        longer has the file, and its delete entry follows)."""
        if not touched:
            have = await self.store.blob(path)
            target = self.files.target(path)
            if have and have["sha256"] == meta["sha256"] and target.exists() and \
                    target.stat().st_size == meta["size"]:
                return None
        try:
            return (await self.fetcher.stage_blob(path, meta["sha256"], meta["size"]))[2]
        except Gone:
            return GONE


"""The passive's side of replication: dial the active, catch up, then follow in real time.

Connecting → (full catch-up: snapshot + blobs, or resume from our position) → streaming: apply
each batch (bytes first, then the store, each entry in its own transaction), ack it. The first
time the lag reaches 0 on a connection we log "Stream switch to realtime streaming".
"""
from __future__ import annotations

import base64
import hashlib
import logging
import time
from contextlib import ExitStack
from pathlib import Path

import trio
import trio_websocket

from drp import __version__
from drp.blob import storage
from drp.blob.gate import gate_for
from drp.ha import protocol as p
from drp.ha.bulkget import pinned_context
from drp.ha.catchup import full_catchup, remove_orphans
from drp.ha.transfer import Fetcher, Gone, Progress
from drp.metrics import APPLIED_SEQ, LAG_ENTRIES, LAG_SECONDS
from drp.node import goarch, goos

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
STALL_TIMEOUT = 10.0  # no message (not even a heartbeat) for this long: reconnect


class Refused(Exception):
    def __init__(self, refuse: p.Refuse):
        super().__init__(refuse.reason)
        self.refuse = refuse


def from_wire(entry: dict) -> dict:
    if entry.get("data") is None:
        return entry
    return {**entry, "data": base64.b64decode(entry["data"])}


def _ws_url(join: str) -> str:
    base = join.rstrip("/")
    return base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + \
        "/api/v3/ha/replicate"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"rejected with HTTP {exc.status_code}: {(exc.body or b'').decode()[:200]}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Follower:
    def __init__(self, node):
        self.node = node
        self.welcomed = False  # the current session got a welcome
        self.reconciled = False  # blob files checked against the rows (see remove_orphans)
        self.streaming = False  # the current session is past catch-up, applying entries
        self._progress = trio.Event()  # set after every message handled while streaming
        self.store = node.store
        self.cfg = node.cfg
        self.proto = p.PassiveFollower()
        self.fetcher = Fetcher(self.cfg.join_url, self.cfg.ha_token,
                               self.cfg.base_root / "ha" / "partial")

    def _status(self, text: str) -> None:
        self.node.status_line(text)

    async def drain(self, timeout: float) -> None:
        """Before this node takes over from an active that is handing over: apply what it
        still sends (it accepts no new writes), so its last acknowledged writes are here."""
        began = time.monotonic()
        with trio.move_on_after(timeout):
            while self.streaming and not self.proto.has_final:
                await self._progress.wait()
        if self.proto.has_final:
            log.info("took every entry of the handing-over active (seq %d, %.0f ms)",
                     self.proto.applied_seq, (time.monotonic() - began) * 1000)
        elif self.streaming:
            log.warning("the active did not finish its handover within %.1fs; taking over at "
                        "seq %d", timeout, self.proto.applied_seq)

    async def run(self) -> None:
        """Follow forever: reconnect with capped backoff; refused → retry slowly."""
        backoff = 0.2
        try:
            await self.fetcher.sweep_staged()
            while True:
                self.welcomed = False
                try:
                    await self._session()
                except Refused as r:
                    if r.refuse.code == "not_active":  # the VIP is changing hands: retry soon
                        log.info("%s is not the active (yet): %s; retrying in %.1fs",
                                 self.cfg.join_url, r.refuse.reason, backoff)
                        await trio.sleep(backoff)
                        backoff = min(backoff * 2, BACKOFF_MAX)
                        continue
                    self.node.ha_reason = r.refuse.reason
                    self.node.ha_status = "Refused"
                    self._status(f"passive: refused by the active: {r.refuse.reason}")
                    retry = BUSY_RETRY if r.refuse.code == "busy" else REFUSED_RETRY
                    log.error("the active refused this node (%s): %s; retrying in %.0fs",
                              r.refuse.code, r.refuse.reason, retry)
                    await trio.sleep(retry)
                    continue
                except Exception as e:  # noqa: BLE001 — every failure means: reconnect
                    log.warning("replication from %s: %s; reconnecting in %.1fs",
                                self.cfg.join_url, _describe(e), backoff)
                if self.welcomed:  # a session that got going: reconnect promptly
                    backoff = 0.2
                self.proto.disconnected()
                self.node.ha_status = p.CONNECTING
                self._status(f"passive: connecting to {self.cfg.join_url}")
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            await self.fetcher.aclose()

    async def _hello(self) -> p.Hello:
        history = tuple(p.HistoryEntry(*h) for h in await self.store.history())
        epoch = history[-1].epoch if history else 0
        return p.Hello(self.cfg.ha_id, self.node.drp_id, __version__, goos(), goarch(), epoch,
                       self.store.head, history)

    async def _session(self) -> None:
        ctx = pinned_context()  # pinned in _check_pin, on first contact per active drp-id
        headers = [(b"authorization", f"Bearer {self.cfg.ha_token}".encode())]
        async with trio_websocket.open_websocket_url(
                _ws_url(self.cfg.join_url), ctx, extra_headers=headers,
                max_message_size=MAX_MESSAGE, receive_buffer_size=1 << 20,
                connect_timeout=5, disconnect_timeout=0.5) as ws:
            hello = self.proto.start(await self._hello())
            await ws.send_message(p.encode(hello))
            msg = p.decode(await ws.get_message())
            if isinstance(msg, p.Refuse):
                raise Refused(msg)
            if not isinstance(msg, p.Welcome):
                raise p.ProtocolError(f"expected welcome, got {msg.type}")
            await self._check_pin(ws, msg.drp_id)
            self.proto.on_welcome(msg)
            self.fetcher.use_static(msg.static_port)
            self.welcomed = True
            self.node.ha_active_id, self.node.ha_reason = msg.drp_id, ""
            self.node.ha_status = p.SYNCING
            if msg.mode == p.FULL:
                if msg.divergent:
                    log.warning("this node holds %d change-log entries that the active's "
                                "history lacks (written while it was active and never "
                                "replicated); dropping them and taking a full catch-up",
                                msg.divergent)
                log.info("connected to active %s: full catch-up", msg.drp_id)
                await self._full(ws, msg.divergent > 0)
            else:
                log.info("connected to active %s: resuming from seq %d (active head %d)",
                         msg.drp_id, self.store.head + 1, msg.head)
                if not self.reconciled:  # once per role: only a crash leaves such files
                    await remove_orphans(self.node)
                    self.reconciled = True
            self._realtime_check()
            await self._stream(ws)

    async def _check_pin(self, ws, active_id: str) -> None:
        stream = getattr(ws, "_stream", None)
        getpeercert = getattr(stream, "getpeercert", None)
        if getpeercert is None:
            return
        fingerprint = hashlib.sha256(getpeercert(binary_form=True) or b"").hexdigest()
        key = f"pin:{active_id}"
        pinned = await self.store.local_get(key)
        if pinned is None:
            await self.store.local_set(key, fingerprint)
            log.info("pinned the TLS certificate of active %s (sha256 %s)", active_id,
                     fingerprint[:16])
        elif pinned != fingerprint:
            raise Refused(p.Refuse(
                f"the TLS certificate of active {active_id} changed (pinned sha256 "
                f"{pinned[:16]}…, now {fingerprint[:16]}…): if that is expected, remove the "
                f"pin with `sqlite3 {self.store.path} \"DELETE FROM local WHERE name='{key}'\"`",
                "certificate"))
        self.fetcher.set_fingerprint(fingerprint)  # bulk downloads: this server only

    async def _full(self, ws, divergent: bool) -> None:
        msg = p.decode(await ws.get_message())
        if not isinstance(msg, p.Snapshot):
            raise p.ProtocolError(f"expected snapshot, got {msg.type}")
        snap = self.proto.on_snapshot(msg)
        progress = Progress(self._status)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(progress.log_loop)
            await full_catchup(self.node, self.fetcher, snap, progress, divergent)
            nursery.cancel_scope.cancel()
        text, _ = progress.line()
        log.info("catch-up done: %s", text)
        await ws.send_message(p.encode(self.proto.snapshot_installed(snap.seq)))

    def _realtime_check(self) -> None:
        if self.proto.just_reached_realtime:
            log.info(REALTIME)
            self.node.ha_status = p.IN_SYNC
            self._status(f"passive: in sync with active {self.node.ha_active_id}")
        APPLIED_SEQ.set(self.proto.applied_seq)
        LAG_ENTRIES.set(self.proto.lag_entries)
        LAG_SECONDS.set(self.proto.lag_seconds or 0)

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def _stream(self, ws) -> None:
        self.streaming = True
        try:
            await self._stream_loop(ws)
        finally:
            self.streaming = False
            self._progressed()

    async def _stream_loop(self, ws) -> None:
        last_report = time.monotonic()
        while True:
            msg = None
            with trio.move_on_after(STALL_TIMEOUT):
                msg = p.decode(await ws.get_message())
            if msg is None:  # the active heartbeats every second when idle: it is gone
                raise p.ProtocolError(f"nothing from the active for {STALL_TIMEOUT:.0f}s")
            if isinstance(msg, p.Entries):
                entries = [from_wire(e) for e in self.proto.on_entries(msg)]
                # Apply what was received even if the role is being switched right now.
                with trio.CancelScope(shield=True):
                    await self._apply(entries)
                await ws.send_message(p.encode(self.proto.applied(entries[-1]["seq"])))
            elif isinstance(msg, p.Heartbeat):
                self.proto.on_heartbeat(msg)
            elif isinstance(msg, p.Handover):
                self.proto.on_handover(msg)
                log.info("the active is handing over; its last entry is seq %d", msg.head)
            else:
                raise p.ProtocolError(f"unexpected {msg.type} while streaming")
            self._realtime_check()
            self._progressed()
            if self.proto.state == p.SYNCING and time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                log.info("streaming: applied seq %d of %d (%d behind)", self.proto.applied_seq,
                         self.proto.head, self.proto.lag_entries)
                self._status(f"passive: syncing, {self.proto.lag_entries} entries behind")

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
            target = storage.disk_path(self.cfg.base_root, key)
            got = staged.pop(entry["seq"], None) if entry["action"] == "put" else GONE
            if got == GONE:  # a delete, or deleted on the active since the put
                await trio.to_thread.run_sync(storage.remove, target)
            elif got is not None:
                await self.fetcher.install(got, target, body.get("mode", 0o644))
        elif kind == "joblog":
            target = storage.disk_path(self.cfg.base_root, key)
            await trio.to_thread.run_sync(_append, target, body["offset"], entry["data"])

    async def _stage_blob(self, path: str, meta: dict, touched: bool) -> Path | str | None:
        """The blob's bytes fetched aside (None: we hold them already; GONE: the active no
        longer has the file, and its delete entry follows)."""
        if not touched:
            have = await self.store.blob(path)
            target = storage.disk_path(self.cfg.base_root, path)
            if have and have["sha256"] == meta["sha256"] and target.exists() and \
                    target.stat().st_size == meta["size"]:
                return None
        try:
            return (await self.fetcher.stage_blob(path, meta["sha256"], meta["size"]))[2]
        except Gone:
            return GONE


def _append(target, offset: int, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    storage.append_at(target, offset, data)

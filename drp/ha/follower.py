"""The passive's side of replication: dial the active, catch up, then follow in real time.

A read loop around a PassiveSession (drp/ha/passive_session.py): each frame received goes into
the session, and what it returns is carried out here — send a frame, fetch and install a
snapshot, apply a batch (drp/ha/replay.py), log.
The connection comes from an injected `connect()` (a websocket to the active's API port in a
real node, a memory channel in the in-process tests); reconnects back off, capped.
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncContextManager, Callable, Protocol
from urllib.parse import urlsplit

import trio
import trio_websocket

from drp import __version__
from drp.ha import protocol as p
from drp.ha import enrolment
from drp.ha.catchup import full_catchup, remove_orphans
from drp.ha.certs import Untrusted
from drp.ha.passive_session import PassiveSession
from drp.ha.progress import Progress
from drp.ha.replay import BatchApplier
from drp.ha.session_events import (Apply, FetchSnapshot, HandedOver, InSync, Refused, Send,
                                   Stalled, Welcomed)
from drp.ha.trust import CLUSTER_SNI, tls_refusal
from drp.metrics import APPLIED_SEQ, LAG_ENTRIES, LAG_SECONDS
from drp.platform_id import goarch, goos

log = logging.getLogger("drp.ha.passive")
REALTIME = "Stream switch to realtime streaming"
MAX_MESSAGE = 256 << 20
CONNECT_TIMEOUT = 5.0
DISCONNECT_TIMEOUT = 0.5
BACKOFF_MAX = 5.0
REFUSED_RETRY = 30.0  # a refusal someone must fix: token, ha-id, version, platform
# "busy": most often this node's own previous connection, which the active has not yet seen
# close (the node restarted, or its network blinked); that ends within seconds.
BUSY_RETRY = 5.0
REFUSED = "Refused"  # ha_status while the active refuses this node
RAN_STANDALONE = "ran_standalone"  # a `local` row: this node has served without HA
NO_ACTIVE_AFTER = 30.0  # following nobody this long: say once what the operator can do


class Channel(Protocol):
    """One replication connection as the passive sees it."""
    async def send(self, frame: str) -> None: ...
    async def receive(self) -> str | bytes: ...
    # The drp-id the connection's certificate proved (None: not over TLS, in-process tests)
    peer_id: str | None


Connect = Callable[[], AsyncContextManager[Channel]]


class RefusedError(Exception):
    def __init__(self, reason: str, code: str):
        super().__init__(reason)
        self.reason, self.code = reason, code


class _Websocket:
    def __init__(self, ws, peer_id: str):
        self.ws, self.peer_id = ws, peer_id

    async def send(self, frame: str) -> None:
        await self.ws.send_message(frame)

    async def receive(self) -> str | bytes:
        return await self.ws.get_message()


def websocket_connect(join_url: str, node_trust, ha_token: str | None) -> Connect:
    """Dial the active's replication websocket over mutual TLS: enrol or renew first if due
    (drp.ha.enrolment), then the TLS handshake with this node's certificate and the cluster
    bundle as the only roots, and the server's certificate checked (a node of this cluster,
    not removed) before the websocket handshake writes a byte. No token is sent."""
    url = urlsplit(join_url)
    host, port = url.hostname or "localhost", url.port or 443
    resource = url.path.rstrip("/") + "/api/v3/ha/replicate"

    async def _dial() -> tuple[trio.SSLStream, str]:
        tcp = await trio.open_tcp_stream(host, port)
        stream = trio.SSLStream(tcp, node_trust.client_context(), server_hostname=CLUSTER_SNI,
                                https_compatible=True)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as e:
            await trio.aclose_forcefully(stream)
            raise RefusedError(f"refusing the server at {join_url}: {tls_refusal(e)}",
                               "certificate") from None
        try:
            return stream, node_trust.verify(stream.getpeercert(binary_form=True))
        except Untrusted as e:
            await trio.aclose_forcefully(stream)
            raise RefusedError(f"refusing the server at {join_url}: {e}", "certificate") \
                from None

    @asynccontextmanager
    async def connect():
        try:
            await enrolment.ensure(node_trust, join_url, ha_token)
        except enrolment.EnrolmentRefused as e:
            raise RefusedError(e.reason, e.code) from None
        try:
            async with trio.open_nursery() as nursery:  # the websocket's reader task
                with trio.fail_after(CONNECT_TIMEOUT):
                    stream, peer_id = await _dial()
                    ws = await trio_websocket.wrap_client_stream(
                        nursery, stream, f"{host}:{port}", resource,
                        max_message_size=MAX_MESSAGE, receive_buffer_size=1 << 20)
                try:
                    yield _Websocket(ws, peer_id)
                finally:
                    # A close handshake, bounded; not shielded: a role being cancelled (this
                    # node taking over) must not wait on the peer's answer.
                    with trio.move_on_after(DISCONNECT_TIMEOUT):
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # what the follower raised, as it raised it
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
    return connect


def _normal_close(exc: BaseException) -> bool:
    """The peer closed the connection in an orderly way (websocket close 1000, end of
    channel), not a network or protocol failure."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_normal_close(e) for e in exc.exceptions)
    if isinstance(exc, trio_websocket.ConnectionClosed):
        return getattr(exc.reason, "code", None) == 1000
    return isinstance(exc, trio.EndOfChannel)


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
        self.batches = BatchApplier(self.store, self.cfg.base_root, fetcher)
        self.session: PassiveSession | None = None  # the current connection's
        # the last session that got a welcome, kept after it ends (drain and the no-active line
        # report from it)
        self.last_session: PassiveSession | None = None
        self.ha_status = p.CONNECTING
        self.active_id = ""
        self.reason = ""  # why the active refuses us, for operators
        self._lost_at, self._said_no_active = clock(), False  # following nobody since
        self.welcomed = False  # the current session got a welcome
        self.progress: Progress | None = None  # the current connection's replay
        # Set once this follower follows, or has said why it cannot (its first attempt ended):
        # the node is ready (systemd READY=1) from then on.
        self.first_attempt = trio.Event()
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
        try:
            await self.fetcher.sweep_staged()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report_loop)
                await self._reconnect_loop()
        finally:
            with trio.CancelScope(shield=True):
                await self.fetcher.aclose()

    async def _reconnect_loop(self) -> None:
        backoff = 0.2
        while True:
            self.welcomed = False
            try:
                async with self.connect() as channel:
                    await self._follow(channel)
            except RefusedError as r:
                self.first_attempt.set()
                if r.code == "not_active":  # the VIP is changing hands: retry soon
                    log.info("%s is not the active (yet): %s; retrying in %.1fs",
                             self.cfg.join_url, r.reason, backoff)
                    self._say_if_no_active()
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                self.reason, self.ha_status = r.reason, REFUSED
                retry = BUSY_RETRY if r.code == "busy" else REFUSED_RETRY
                if r.code == "certificate":  # this node refuses the active, not the other way
                    self._status(f"passive: refusing the active: {r.reason}")
                    log.error("refusing the active at %s: %s; retrying in %.0fs",
                              self.cfg.join_url, r.reason, retry)
                else:
                    self._status(f"passive: refused by the active: {r.reason}")
                    log.error("the active refused this node (%s): %s; retrying in %.0fs",
                              r.code, r.reason, retry)
                await trio.sleep(retry)
                continue
            except Exception as e:  # noqa: BLE001 — every failure means: reconnect
                self.first_attempt.set()
                if self.welcomed:
                    self._lost_at = self.clock()
                backoff = self._ended(e, backoff)
            finally:
                self.session = self.progress = None
                self._progressed()
            if self.welcomed:  # a session that got going: reconnect promptly
                backoff, self._said_no_active = 0.2, False
            else:
                self._say_if_no_active()
            self.ha_status = p.CONNECTING
            self._status(f"passive: connecting to {self.cfg.join_url}")
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _ended(self, e: Exception, backoff: float) -> float:
        """Say why the connection ended, in the words it deserves; returns the backoff."""
        session = self.session
        if session is not None and session.final_head is not None:
            log.info("the active handed over at seq %d and closed the stream; following "
                     "whoever takes %s next", session.final_head, self.cfg.join_url)
            return 0.2
        if self.welcomed and _normal_close(e):
            log.info("the active closed the replication stream (it is stopping or switching); "
                     "reconnecting in %.1fs", backoff)
            return backoff
        log.warning("replication from %s: %s; reconnecting in %.1fs", self.cfg.join_url,
                    _describe(e), backoff)
        if isinstance(e, trio_websocket.HandshakeError):
            # A server answered: the active is (coming) up; do not let the doubling make it
            # wait the longest backoff.
            return min(backoff, 0.5)
        return backoff

    def _say_if_no_active(self) -> None:
        """Following nobody for NO_ACTIVE_AFTER: say once what the operator can do."""
        for_s = self.clock() - self._lost_at
        if not self._said_no_active and for_s >= NO_ACTIVE_AFTER:
            self._said_no_active = True
            log.warning("%s", self._no_active(for_s))

    def _no_active(self, for_s: float) -> str:
        last = self.last_session
        if last is not None and last.state == p.IN_SYNC:
            mine = (f"This node is electable: it was In-Sync with {self.active_id} at seq "
                    f"{last.applied_seq} when the connection ended")
        elif last is not None and last.active_drp_id:
            mine = (f"This node is not electable: it was at seq {last.applied_seq}, "
                    f"{last.lag_entries} entries behind {self.active_id}; promote an In-Sync "
                    "passive")
        else:
            mine = "This node has not synced with an active since it started: it is not electable"
        return (f"no active at {self.cfg.join_url} for {for_s:.0f}s; if it is down, promote an "
                "electable passive: `drpcli system active` against that node (or `systemctl "
                f"kill -s USR1 dr-provision` on it). {mine}")

    async def _report_loop(self) -> None:
        """Catch-up progress every few seconds while Syncing, also while a long batch (an ISO,
        say) is being fetched and nothing else happens on the connection."""
        while True:
            await trio.sleep(1.0)
            session, progress = self.session, self.progress
            if session is None or progress is None:
                continue
            for _ in session.report(self.clock()):
                text, status = progress.replay_line(session.applied_seq, session.head)
                log.info("%s", text)
                self._status(status)

    async def _hello(self) -> p.Hello:
        history = tuple(p.HistoryEntry(*h) for h in await self.store.history())
        epoch = history[-1].epoch if history else 0
        return p.Hello(self.cfg.ha_id, self.node.drp_id, __version__, goos(), goarch(), epoch,
                       self.store.head, history)

    # ---- the read loop --------------------------------------------------------------------
    async def _follow(self, channel: Channel) -> None:
        hello = await self._hello()
        session = self.session = PassiveSession(hello, self.clock())
        self.progress = Progress(self._status, start_seq=hello.seq)
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
                await self.batches.apply(ev.entries, self.progress)
                await self._carry_out(channel, session,
                                      session.applied(ev.entries[-1]["seq"], self.clock()))
            elif isinstance(ev, InSync):
                log.info(REALTIME)
                self.ha_status = p.IN_SYNC
                self._status(f"passive: in sync with active {self.active_id}")
            elif isinstance(ev, HandedOver):
                log.info("the active is handing over; its last entry is seq %d", ev.final_head)
            elif isinstance(ev, Stalled):
                raise p.ProtocolError(ev.reason)
        APPLIED_SEQ.set(session.applied_seq)
        LAG_ENTRIES.set(session.lag_entries)
        LAG_SECONDS.set(session.lag_seconds or 0)

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def _welcomed(self, channel: Channel, msg: p.Welcome) -> None:
        self._check_peer(channel, msg.drp_id)
        self.last_session = self.session
        self.fetcher.use_static(msg.static_port)
        self.welcomed = True
        self.first_attempt.set()
        self.active_id, self.reason, self.ha_status = msg.drp_id, "", p.SYNCING
        if msg.mode == p.FULL:
            if msg.divergent and await self.store.local_get(RAN_STANDALONE):
                log.warning("this node ran standalone before it joined the cluster: its %d "
                            "change-log entries are not in the cluster's history, so they are "
                            "replaced by a full copy from active %s (this node's own data is "
                            "kept in a backup, named below)", msg.divergent, msg.drp_id)
            elif msg.divergent:
                log.warning("this node holds %d change-log entries that the active's history "
                            "lacks (written while it was active and never replicated); "
                            "dropping them and taking a full catch-up", msg.divergent)
            log.info("connected to active %s: full catch-up", msg.drp_id)
        else:
            here = self.store.head
            if here >= msg.head:
                log.info("connected to active %s: this node has its head, seq %d; streaming "
                         "what follows", msg.drp_id, msg.head)
            else:
                log.info("connected to active %s: this node is at seq %d, %d behind its head "
                         "%d; replaying from seq %d", msg.drp_id, here, msg.head - here,
                         msg.head, here + 1)
            if not self.reconciled:  # once per role: only a crash leaves such files
                await remove_orphans(self.node)
                self.reconciled = True

    def _check_peer(self, channel: Channel, active_id: str) -> None:
        """The welcome must come from the node the certificate proved; bulk downloads then go
        to that node only."""
        peer_id = channel.peer_id
        if peer_id is None:  # not over TLS (in-process tests)
            return
        if peer_id != active_id:
            raise RefusedError(f"the welcome names {active_id} but the server's certificate "
                               f"proves {peer_id}", "certificate")
        trust = self.node.trust
        self.fetcher.set_peer(active_id, lambda der: trust.verify(der, expected=active_id))

    async def _catch_up(self, snap: p.Snapshot, divergent: bool) -> None:
        progress = Progress(self._status)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(progress.log_loop)
            await full_catchup(self.node, self.fetcher, snap, progress, divergent)
            await self.store.local_set(RAN_STANDALONE, "")  # its data is the cluster's now
            nursery.cancel_scope.cancel()
        text, _ = progress.line()
        log.info("catch-up done: %s", text)

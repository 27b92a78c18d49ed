"""The active's side of replication: one session per connected passive, and the sync gate.

The hub lives exactly as long as the active role. For each passive it drives an ActiveSession
(drp/ha/active_session.py) over a message channel — a read loop feeding it frames, a send loop
feeding it the store's log — and carries out what the session returns. The sync gate is the
store's replication hook: a client's write returns only when every In-Sync passive acked it;
one ack releases every write at or below it (group commit).
"""
from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Callable, Protocol

import trio

from drp.blob import storage
from drp.ha import protocol as p
from drp.ha.active_session import ActiveSession, Local, Position
from drp.ha.session_events import Announced, InSync, Refused, Send, Streaming, TakeSnapshot
from drp.metrics import SYNC_WAIT
from drp.modelvalues import now_text
from drp.store.errors import NotReplicated

log = logging.getLogger("drp.ha.active")
BATCH_ENTRIES = 500
HEARTBEAT = 1.0
CLOSE_GRACE = 0.05  # after ending the sessions at a handover, before the VIP goes
HELLO_TIMEOUT = 10.0


class Channel(Protocol):
    """One replication connection as the hub sees it: text frames both ways (quart's
    websocket, or a memory channel in the in-process tests)."""
    async def send(self, frame: str) -> None: ...
    async def receive(self) -> str | bytes: ...


class Hub:
    """Everything the active knows about its passives."""

    def __init__(self, store, local: Local, snapshot_dir: Path, sync_timeout: float,
                 clock: Callable[[], float] = time.monotonic):
        self.store, self.local, self.clock = store, local, clock
        self.sync_timeout = sync_timeout
        # a Syncing passive holds writes back once it acks within a quarter of the timeout
        self.tracker = p.ActiveTracker(head=store.head, prompt=min(1.0, sync_timeout / 4))
        self._changed = trio.Event()
        self.snapshot_dir = snapshot_dir
        self.snapshots: dict[str, Path] = {}  # served at /api/v3/ha/snapshot/<id>
        self.closed = False
        self.final_head: int | None = None  # set by begin_handover
        self._sessions: dict[trio.CancelScope, ActiveSession] = {}
        # With automatic failover: the members of the sync set (committed in etcd, or being
        # written there). Each holds writes back whatever its session's state, until etcd
        # has recorded that it left the set (drp.ha.leadership).
        self.pinned: frozenset[str] = frozenset()

    # ---- the role's calls -----------------------------------------------------------------
    def close(self) -> None:
        """The role ended: end every replication session (their passives reconnect to
        whoever holds the VIP next) and release writes waiting for acks."""
        self.closed = True
        for scope in self._sessions:
            scope.cancel()
        self._wake()

    def begin_handover(self) -> None:
        """No more writes: tell every passive our final head once it has been sent. From now
        on a passive that leaves still counts as owing its acks, so no write is confirmed
        that the passive taking over may lack."""
        self.final_head = self.store.head
        self._sync_head()
        for session in self._sessions.values():
            session.handover_begun(self.final_head)
        self.store.wake_head_waiters()  # senders waiting for entries: send Handover now

    async def wait_all_acked(self, timeout: float) -> bool:
        """For a graceful handover: every In-Sync passive has the head (bounded by timeout)."""
        self._sync_head()
        with trio.move_on_after(timeout):
            while self.owed(self.store.head):
                await self._changed.wait()
            return True
        return False

    async def end_sessions(self, announce_timeout: float = 1.0,
                           close_timeout: float = 0.5) -> None:
        """Handover, before the VIP goes: let every streaming session send its passive the
        Handover message, then end the sessions, so both reach the passives while the VIP
        still routes to us (whatever we send once it is removed is black-holed, and a
        passive would wait for a dead connection until its stall timeout)."""
        with trio.move_on_after(announce_timeout):
            while any(s.state == "streaming" and not s.announced
                      for s in self._sessions.values()):
                await self._changed.wait()
        self.close()
        with trio.move_on_after(close_timeout):
            while self._sessions:
                await self._changed.wait()
        await trio.sleep(CLOSE_GRACE)  # hypercorn sends the close frames as handlers return

    async def expire_loop(self) -> None:
        timeout = self.sync_timeout
        while True:
            await trio.sleep(min(0.1, timeout / 4))
            if self.final_head is not None:  # passives are finishing the last entries
                continue
            for pid in self.tracker.expire(self.clock(), timeout):
                log.warning("passive %s did not ack within --ha-sync-timeout %.1fs: dropped to "
                            "Syncing; writes no longer wait for it until it catches up",
                            pid, timeout)
                self._wake()

    # ---- sync gate ------------------------------------------------------------------------
    def pin(self, members: frozenset[str]) -> None:
        self.pinned = frozenset(members)
        self._wake()

    def owed(self, seq: int) -> set[str]:
        """The passives a write at seq still waits for."""
        tracker = self.tracker
        owed = tracker.must_wait_for(seq)
        owed.update(m for m in self.pinned if tracker.acked_by(m) < seq)
        return owed

    async def changed(self) -> None:
        """Until the passives' states or acks next change."""
        await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _sync_head(self, at_least: int = 0) -> None:
        # A sender may read an entry the writer committed a moment before the store's head
        # moved past it; committed is what counts.
        head = max(self.store.head, at_least)
        if head > self.tracker.head:
            self.tracker.head_advanced(head, self.clock())

    async def wait_synced(self, seq: int) -> None:
        """The store's replication hook: return once no In-Sync passive owes an ack for seq."""
        self._sync_head()
        if not self.owed(seq):
            return
        started = time.monotonic()
        while self.owed(seq) and not self.closed:
            await self._changed.wait()
        SYNC_WAIT.observe(time.monotonic() - started)
        if self.owed(seq):
            # The role ended before the passives confirmed it: never report such a write as
            # replicated (a passive taking over may not have it).
            raise NotReplicated(f"the write (seq {seq}) is committed on this node but no "
                                "longer active node, and the passives did not confirm it: it "
                                "may be lost on failover; check and retry on the active")

    # ---- one passive: the driver ------------------------------------------------------------
    def disconnect(self, drp_id: str) -> bool:
        """End the session of that passive (removed from the cluster); True if it had one."""
        cut = False
        for scope, session in list(self._sessions.items()):
            if session.passive_id == drp_id:
                scope.cancel()
                cut = True
        return cut

    async def serve(self, channel: Channel, address: str, peer_id: str | None = None) -> None:
        """Run one replication session until it ends or the hub is closed. A ProtocolError
        (the passive sent something malformed or out of order) ends it with the reason.
        peer_id: the drp-id the passive's certificate proved (its hello must say the same)."""
        session = ActiveSession(self.local, self.tracker, address, peer_id)
        if self.closed or self.final_head is not None:  # its hello is answered not_active
            session.handover_begun(self.store.head if self.final_head is None
                                   else self.final_head)
            with trio.move_on_after(HELLO_TIMEOUT):
                hello = p.decode(await channel.receive())
                for ev in session.hello(hello, Position((), 0, 0), self.clock()):  # refuses
                    if isinstance(ev, Send):
                        await channel.send(ev.frame)
            return
        with trio.CancelScope() as scope:
            self._sessions[scope] = session
            try:
                await self._serve(channel, session)
            finally:
                del self._sessions[scope]
                if session.tracked and self.final_head is None:  # see begin_handover
                    self.tracker.disconnected(session.passive_id, now_text())
                self._wake()
                if session.passive_id:
                    log.info("passive %s at %s disconnected", session.passive_id, address)

    async def _serve(self, channel: Channel, session: ActiveSession) -> None:
        with trio.fail_after(HELLO_TIMEOUT):
            hello = p.decode(await channel.receive())
        history = await self.store.history()
        oldest = await self.store.oldest_seq() or self.store.head + 1
        self._sync_head()
        events = session.hello(hello, Position(tuple(history), self.store.head, oldest),
                               self.clock())
        for ev in events:
            if isinstance(ev, Send):
                await channel.send(ev.frame)
            elif isinstance(ev, Refused):
                log.warning("refusing passive %s at %s: %s", hello.drp_id, session.address,
                            ev.reason)
                return
            elif isinstance(ev, TakeSnapshot):
                if ev.divergent:
                    log.warning("passive %s holds %d entries this active's history lacks; "
                                "it drops them and takes a full catch-up", hello.drp_id,
                                ev.divergent)
                await self._send_snapshot(channel, session)
            elif isinstance(ev, Streaming):
                await self._stream(channel, session, ev)

    async def _send_snapshot(self, channel: Channel, session: ActiveSession) -> None:
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        snap_id = uuid.uuid4().hex
        path = self.snapshot_dir / f"{snap_id}.db"
        self.snapshots[snap_id] = path
        try:
            seq = await self.store.snapshot_into(path)
            size, sha = await trio.to_thread.run_sync(storage.file_sha256, path)
            self._sync_head()
            for ev in session.snapshot_taken(seq, snap_id, size, sha, self.clock()):
                await channel.send(ev.frame)
            log.info("passive %s: full catch-up from a snapshot at seq %d (%d bytes)",
                     session.passive_id, seq, size)
            done = p.decode(await channel.receive())
            self._sync_head()
            events = session.receive(done, self.clock())
        finally:
            self.snapshots.pop(snap_id, None)
            path.unlink(missing_ok=True)
        for ev in events:
            await self._stream(channel, session, ev)

    async def _stream(self, channel: Channel, session: ActiveSession, ev: Streaming) -> None:
        log.info("passive %s at %s: streaming from seq %d (%s)", session.passive_id,
                 session.address, ev.start_seq, ev.mode)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_loop, channel, session)
            await self._send_loop(channel, session)

    async def _read_loop(self, channel: Channel, session: ActiveSession) -> None:
        while True:
            msg = p.decode(await channel.receive())
            self._sync_head()
            for ev in session.receive(msg, self.clock()):
                if isinstance(ev, InSync):
                    log.info("passive %s is In-Sync at seq %d", session.passive_id, ev.seq)
            self._wake()

    async def _send_loop(self, channel: Channel, session: ActiveSession) -> None:
        store = self.store
        while True:
            batch = await store.wire_after(session.sent_seq, BATCH_ENTRIES)
            if batch:
                self._sync_head(at_least=batch[-1][0])
                for ev in session.entries(batch, self.tracker.head, self.clock()):
                    await channel.send(ev.frame)
                continue
            for ev in session.nothing_to_send():
                if isinstance(ev, Send):
                    await channel.send(ev.frame)
                elif isinstance(ev, Announced):
                    self._wake()
            with trio.move_on_after(HEARTBEAT) as idle:
                # One wait, no nursery (this is on the path of every synchronous write):
                # begin_handover wakes the store's head waiters too.
                while store.head <= session.sent_seq and (
                        session.announced or session.final_head is None):
                    await store.wait_head_moved()
            if idle.cancelled_caught:
                self._sync_head()
                for ev in session.idle(self.clock(), time.time()):
                    await channel.send(ev.frame)

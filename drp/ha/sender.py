"""The active's side of replication: one session per connected passive, and the sync gate.

A session answers the passive's hello (refuse, or welcome + stream, or welcome + snapshot), then
sends change-log entries as they are committed and reads acks. The gate is the store's commit
hook: a client's write returns only when every In-Sync passive acked it; one ack releases every
write at or below it (group commit).
"""
from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import trio

from drp import __version__
from drp.blob import storage
from drp.errors import ApiError
from drp.ha import protocol as p
from drp.metrics import SYNC_WAIT
from drp.node import goarch, goos

log = logging.getLogger("drp.ha.active")
BATCH_ENTRIES = 500
BATCH_BYTES = 4 << 20  # keep frames well under the passive's message limit
HEARTBEAT = 1.0
CLOSE_GRACE = 0.05  # after ending the sessions at a handover, before the VIP goes
HELLO_TIMEOUT = 10.0


class Hub:
    """Everything the active knows about its passives; lives exactly as long as the role."""

    def __init__(self, node):
        self.node = node
        self.store = node.store
        self.cfg = node.cfg
        self.tracker = p.ActiveTracker(head=self.store.head)
        self._changed = trio.Event()
        self.snapshot_dir = self.cfg.base_root / "ha" / "snapshots"
        self.snapshots: dict[str, Path] = {}
        self.closed = False
        self.handing_over = False  # set by a graceful switch to passive (begin_handover)
        self.final_head = 0
        self._handover_started = trio.Event()
        self._sessions: set[trio.CancelScope] = set()
        self._streaming: set[str] = set()  # passives whose session streams entries
        self._announced: set[str] = set()  # passives sent the Handover message

    def close(self) -> None:
        """The role ended: end every replication session (their passives reconnect to
        whoever holds the VIP next) and release writes waiting for acks."""
        self.closed = True
        for scope in self._sessions:
            scope.cancel()
        self._wake()

    async def end_sessions(self, announce_timeout: float = 1.0,
                           close_timeout: float = 0.5) -> None:
        """Handover, before the VIP goes: let every streaming session send its passive the
        Handover message, then end the sessions, so both reach the passives while the VIP
        still routes to us (whatever we send once it is removed is black-holed, and a
        passive would wait for a dead connection until its stall timeout)."""
        with trio.move_on_after(announce_timeout):
            while self._streaming - self._announced:
                await self._changed.wait()
        self.close()
        with trio.move_on_after(close_timeout):
            while self._sessions:
                await self._changed.wait()
        await trio.sleep(CLOSE_GRACE)  # hypercorn sends the close frames as handlers return

    def begin_handover(self) -> None:
        """No more writes: tell every passive our final head once it has been sent. From now
        on a passive that leaves still counts as owing its acks, so no write is confirmed
        that the passive taking over may lack."""
        self.handing_over = True
        self.final_head = self.store.head
        self._sync_head()
        self._handover_started.set()
        self.store.wake_head_waiters()  # senders waiting for entries: send Handover now

    # ---- sync gate ------------------------------------------------------------------------
    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _sync_head(self, at_least: int = 0) -> None:
        # A sender may read an entry the writer committed a moment before the store's head
        # moved past it; committed is what counts.
        head = max(self.store.head, at_least)
        if head > self.tracker.head:
            self.tracker.head_advanced(head, time.monotonic())

    async def wait_synced(self, seq: int) -> None:
        """Store commit hook: return once no In-Sync passive still owes an ack for seq."""
        self._sync_head()
        if not self.tracker.must_wait_for(seq):
            return
        started = time.monotonic()
        while self.tracker.must_wait_for(seq) and not self.closed:
            await self._changed.wait()
        SYNC_WAIT.observe(time.monotonic() - started)
        if self.tracker.must_wait_for(seq):
            # The role ended before the passives confirmed it: never report such a write as
            # replicated (a passive taking over may not have it).
            raise ApiError(503, f"the write (seq {seq}) is committed on this node but no "
                           "longer active node, and the passives did not confirm it: it may "
                           "be lost on failover; check and retry on the active",
                           type_="HA_UNCONFIRMED")

    async def wait_all_acked(self, timeout: float) -> bool:
        """For a graceful handover: every In-Sync passive has the head (bounded by timeout)."""
        self._sync_head()
        with trio.move_on_after(timeout):
            while self.tracker.must_wait_for(self.store.head):
                await self._changed.wait()
            return True
        return False

    async def expire_loop(self) -> None:
        timeout = self.cfg.ha_sync_timeout
        while True:
            await trio.sleep(min(0.1, timeout / 4))
            if self.handing_over:  # passives are finishing the last entries: wait for them
                continue
            for pid in self.tracker.expire(time.monotonic(), timeout):
                log.warning("passive %s did not ack within --ha-sync-timeout %.1fs: dropped to "
                            "Syncing; writes no longer wait for it until it catches up",
                            pid, timeout)
                self._wake()

    # ---- one passive ----------------------------------------------------------------------
    async def serve(self, ws, address: str) -> None:
        """Run one replication session on a websocket (send/receive of text frames), until
        it ends or the hub is closed."""
        if self.closed or self.handing_over:
            await ws.send(p.encode(p.Refuse(f"{self.node.drp_id} is handing over to another "
                                            "node", "not_active")))
            return
        with trio.CancelScope() as scope:
            self._sessions.add(scope)
            try:
                await self._serve(ws, address)
            finally:
                self._sessions.discard(scope)
                self._wake()

    async def _serve(self, ws, address: str) -> None:
        with trio.fail_after(HELLO_TIMEOUT):
            hello = p.decode(await ws.receive())
        if not isinstance(hello, p.Hello):
            raise p.ProtocolError(f"expected hello, got {hello.type}")
        refusal = p.check_hello(hello, ha_id=self.cfg.ha_id, os=goos(), arch=goarch(),
                                version=__version__, drp_id=self.node.drp_id)
        if refusal is None and hello.drp_id in self.tracker:
            refusal = p.busy_refusal(hello.drp_id)
        if refusal is not None:
            log.warning("refusing passive %s at %s: %s", hello.drp_id, address, refusal.reason)
            await ws.send(p.encode(refusal))
            return
        history = await self.store.history()
        oldest = await self.store.oldest_seq() or self.store.head + 1
        self._sync_head()
        plan = p.plan_sync(active_history=history, active_head=self.store.head,
                           active_oldest_retained_seq=oldest, passive_history=hello.history,
                           passive_head=hello.seq)
        await ws.send(p.encode(p.Welcome(self.node.drp_id, history[-1][0], self.store.head,
                                         tuple(history), plan.mode, plan.divergent,
                                         self.cfg.static_port)))
        pid = hello.drp_id
        try:
            if plan.mode == p.FULL:
                if plan.divergent:
                    log.warning("passive %s holds %d entries this active's history lacks; it "
                                "drops them and takes a full catch-up", pid, plan.divergent)
                start = await self._send_snapshot(ws, pid, address)
            else:
                self.tracker.add(pid, address, plan.start_seq)
                start = plan.start_seq
            log.info("passive %s at %s: streaming from seq %d (%s)", pid, address, start,
                     plan.mode)
            self._streaming.add(pid)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_acks, ws, pid)
                await self._send_entries(ws, pid, start)
        finally:
            self._streaming.discard(pid)
            if not self.handing_over:  # see begin_handover
                self.tracker.remove(pid)
            self._wake()
            log.info("passive %s at %s disconnected", pid, address)

    async def _send_snapshot(self, ws, pid: str, address: str) -> int:
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        snap_id = uuid.uuid4().hex
        path = self.snapshot_dir / f"{snap_id}.db"
        self.snapshots[snap_id] = path
        try:
            seq = await self.store.snapshot_into(path)
            _, sha = await trio.to_thread.run_sync(storage.file_sha256, path)
            self._sync_head()
            self.tracker.add(pid, address, 1)
            await ws.send(p.encode(p.Snapshot(seq, snap_id, path.stat().st_size, sha)))
            log.info("passive %s: full catch-up from a snapshot at seq %d (%d bytes)", pid, seq,
                     path.stat().st_size)
            msg = p.decode(await ws.receive())
            if not isinstance(msg, p.SnapshotDone) or msg.seq != seq:
                raise p.ProtocolError(f"expected snapshot_done {seq}, got {msg}")
            self._sync_head()
            self.tracker.on_ack(pid, seq, time.monotonic())
            return seq + 1
        finally:
            self.snapshots.pop(snap_id, None)
            path.unlink(missing_ok=True)

    async def _receive_acks(self, ws, pid: str) -> None:
        while True:
            msg = p.decode(await ws.receive())
            if not isinstance(msg, p.Ack):
                raise p.ProtocolError(f"expected ack, got {msg.type}")
            self._sync_head()
            if self.tracker.on_ack(pid, msg.seq, time.monotonic()):
                log.info("passive %s is In-Sync at seq %d", pid, msg.seq)
            self._wake()

    async def _wait_head_or_handover(self, pos: int, announced: bool) -> None:
        # One wait, no nursery (this is on the path of every synchronous write):
        # begin_handover wakes the store's head waiters too.
        while self.store.head <= pos and (announced or not self.handing_over):
            await self.store.wait_head_moved()

    async def _send_entries(self, ws, pid: str, start: int) -> None:
        pos = start - 1
        announced = False
        while True:
            entries = await self.store.wire_after(pos, BATCH_ENTRIES)  # [(seq, json text)]
            if not entries:
                if self.handing_over and not announced and pos >= self.final_head:
                    await ws.send(p.encode(p.Handover(self.final_head)))
                    announced = True
                    self._announced.add(pid)
                    self._wake()
                with trio.move_on_after(HEARTBEAT) as idle:
                    await self._wait_head_or_handover(pos, announced)
                if idle.cancelled_caught:
                    await ws.send(p.encode(p.Heartbeat(self.store.head, time.time())))
                continue
            if entries[0][0] != pos + 1:
                raise p.ProtocolError(f"passive {pid} needs seq {pos + 1}, which the log no "
                                      "longer holds (--ha-log-retention); it will reconnect "
                                      "for a full catch-up")
            batch, size = [], 0
            for seq, text in entries:
                size += len(text)
                if batch and size > BATCH_BYTES:
                    break
                batch.append(text)
                pos = seq
            self._sync_head(at_least=pos)
            await ws.send(p.encode_entries(batch, self.tracker.head))
            self.tracker.on_sent(pid, pos, time.monotonic())

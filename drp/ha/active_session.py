"""The active's end of one replication connection (one per passive), with no I/O.

Hello → refuse, or welcome + (stream from the passive's position | snapshot, snapshot_done) →
entries as they are committed, acks, a heartbeat when idle, and at a planned switch the
Handover announcement once the passive has been sent the last entry. The driver
(drp/ha/sender.py) reads frames and the store's log and carries out the events
(drp/ha/session_events.py) this returns; the shared ActiveTracker is the ledger that says which
writes may return.

    s = ActiveSession(local, tracker, address)
    s.hello(msg, position, now)     → [Send(refuse), Refused] | [Send(welcome), Streaming|TakeSnapshot]
    s.snapshot_taken(..., now)      → [Send(snapshot)]
    s.receive(msg, now)             → snapshot_done: [Streaming]; ack: [InSync?]
    s.entries(batch, head, now)     → [Send(entries frame)]   (a prefix of batch, by size)
    s.idle(now, wall_time)          → [Send(heartbeat)]
    s.nothing_to_send()             → [Send(handover), Announced] once, during a handover
"""
from __future__ import annotations

from dataclasses import dataclass

from drp.ha.messages import (FULL, Ack, Heartbeat, Handover, Hello, Message, ProtocolError,
                             Refuse, Snapshot, SnapshotDone, Welcome, encode)
from drp.ha.protocol import ActiveTracker, busy_refusal, check_hello, plan_sync
from drp.ha.session_events import (Announced, Event, InSync, Refused, Send, Streaming,
                                   TakeSnapshot)
from drp.store.wire import entries_frame, puts_blob

BATCH_BYTES = 4 << 20  # keep frames well under the passive's message limit


@dataclass(frozen=True)
class Local:
    """Who this active is, as a passive's hello is checked against it."""
    ha_id: str
    drp_id: str
    os: str
    arch: str
    version: str
    static_port: int


@dataclass(frozen=True)
class Position:
    """The active's log as the hello is answered: epoch history, head, oldest retained seq."""
    history: tuple
    head: int
    oldest: int


HELLO, SNAPSHOT, STREAMING, CLOSED = "hello", "snapshot", "streaming", "closed"


class ActiveSession:
    def __init__(self, local: Local, tracker: ActiveTracker, address: str,
                 peer_id: str | None = None) -> None:
        self.local, self.tracker, self.address = local, tracker, address
        self.peer_id = peer_id  # who the connection's certificate proved (None: not checked)
        self.state = HELLO
        self.passive_id = ""
        self.sent_seq = 0  # the last seq handed to this passive's connection
        self.tracked = False  # in the tracker (from the welcome's plan, or the snapshot)
        self.final_head: int | None = None  # set by handover_begun
        self.announced = False
        self._snapshot_seq: int | None = None

    def hello(self, msg: Message, position: Position, now: float) -> list[Event]:
        if self.state != HELLO:
            raise ProtocolError(f"unexpected hello in state {self.state}")
        if not isinstance(msg, Hello):
            raise ProtocolError(f"expected hello, got {msg.type}")
        local = self.local
        refusal = check_hello(msg, ha_id=local.ha_id, os=local.os, arch=local.arch,
                              version=local.version, drp_id=local.drp_id)
        if refusal is None and self.peer_id is not None and msg.drp_id != self.peer_id:
            refusal = Refuse(f"the hello names {msg.drp_id} but the certificate proves "
                             f"{self.peer_id}", "untrusted")
        if refusal is None and msg.drp_id in self.tracker:
            refusal = busy_refusal(msg.drp_id)
        if refusal is None and self.final_head is not None:
            refusal = Refuse(f"{local.drp_id} is handing over to another node", "not_active")
        if refusal is not None:
            self.state = CLOSED
            return [Send(encode(refusal)), Refused(refusal.reason, refusal.code)]
        self.passive_id = msg.drp_id
        plan = plan_sync(active_history=position.history, active_head=position.head,
                         active_oldest_retained_seq=position.oldest,
                         passive_history=msg.history, passive_head=msg.seq)
        welcome = Send(encode(Welcome(local.drp_id, position.history[-1][0], position.head,
                                      tuple(position.history), plan.mode, plan.divergent,
                                      local.static_port)))
        if plan.mode == FULL:
            self.state = SNAPSHOT
            return [welcome, TakeSnapshot(plan.divergent)]
        self._track(plan.start_seq)
        return [welcome, self._stream(plan.start_seq, plan.mode)]

    def snapshot_taken(self, seq: int, snapshot_id: str, size: int, sha256: str,
                       now: float) -> list[Event]:
        if self.state != SNAPSHOT or self._snapshot_seq is not None:
            raise ProtocolError(f"no snapshot is due in state {self.state}")
        self._track(1)  # holds no write back until it has caught up
        self._snapshot_seq = seq
        return [Send(encode(Snapshot(seq, snapshot_id, size, sha256)))]

    def receive(self, msg: Message, now: float) -> list[Event]:
        if self.state == SNAPSHOT:
            if not isinstance(msg, SnapshotDone) or msg.seq != self._snapshot_seq:
                raise ProtocolError(f"expected snapshot_done {self._snapshot_seq}, got {msg}")
            self.tracker.on_ack(self.passive_id, msg.seq, now)
            return [self._stream(msg.seq + 1, FULL)]
        if self.state == HELLO:
            raise ProtocolError(f"expected hello, got {msg.type}")
        if self.state != STREAMING or not isinstance(msg, Ack):
            raise ProtocolError(f"expected ack, got {msg.type}")
        if self.tracker.on_ack(self.passive_id, msg.seq, now):
            return [InSync(msg.seq)]
        return []

    def entries(self, batch: list[tuple[int, str]], head: int, now: float) -> list[Event]:
        """batch: (seq, wire text) read from the log after sent_seq. Sends a prefix of it
        (at least one entry, at most BATCH_BYTES); the driver reads again from sent_seq."""
        if self.state != STREAMING:
            raise ProtocolError(f"no entries are due in state {self.state}")
        if batch[0][0] != self.sent_seq + 1:
            raise ProtocolError(f"passive {self.passive_id} needs seq {self.sent_seq + 1}, "
                                "which the log no longer holds (--ha-log-retention); it will "
                                "reconnect for a full catch-up")
        texts, size, slow = [], 0, False
        for seq, text in batch:
            size += len(text)
            if texts and size > BATCH_BYTES:
                break
            texts.append(text)
            slow = slow or puts_blob(text)
            self.sent_seq = seq
        frame = entries_frame(texts, max(head, self.sent_seq))
        self.tracker.on_sent(self.passive_id, self.sent_seq, now, slow)
        return [Send(frame)]

    def idle(self, now: float, wall_time: float) -> list[Event]:
        """Nothing was sent for a heartbeat interval: say we are here, and the head."""
        if self.state != STREAMING:
            return []
        return [Send(encode(Heartbeat(self.tracker.head, wall_time)))]

    def handover_begun(self, final_head: int) -> None:
        """No more writes here: final_head is the last entry there will be."""
        self.final_head = final_head

    def nothing_to_send(self) -> list[Event]:
        """The log has nothing after sent_seq: during a handover, announce it once."""
        if self.state != STREAMING or self.final_head is None or self.announced \
                or self.sent_seq < self.final_head:
            return []
        self.announced = True
        return [Send(encode(Handover(self.final_head))), Announced(self.final_head)]

    def _track(self, start_seq: int) -> None:
        self.tracker.add(self.passive_id, self.address, start_seq)
        self.tracked = True

    def _stream(self, start_seq: int, mode: str) -> Streaming:
        self.state, self.sent_seq = STREAMING, start_seq - 1
        return Streaming(start_seq, mode)

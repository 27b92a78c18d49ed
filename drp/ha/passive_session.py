"""The passive's end of one replication connection, as a state machine with no I/O.

Connecting → Syncing → In-Sync. The driver (drp/ha/follower.py) feeds it every message it
receives, what it has applied, and the time; it answers with events (drp/ha/session_events.py):
frames to send, a snapshot to fetch, entries to apply, the first time lag reaches 0 on this
connection (InSync: log "Stream switch to realtime streaming"), progress while Syncing, the
active's handover, a refusal, a stall. A replication bug on this side can be replayed by
feeding messages, with no network.

    s = PassiveSession(hello, now)
    s.start()                      → [Send(hello)]
    s.receive(msg, now)            → Welcomed / FetchSnapshot / Apply / HandedOver / Refused …
    s.snapshot_installed(seq, now) → [Send(snapshot_done), …]
    s.applied(seq, now)            → [Send(ack), InSync?]
    s.tick(now)                    → [Stalled] once nothing was heard for stall_timeout
    s.report(now)                  → [Lagging] every report_every seconds while Syncing
"""
from __future__ import annotations

from collections import deque

from drp.ha.messages import (CONNECTING, FULL, IN_SYNC, STREAM, SYNCING, Ack, Entries,
                             Handover, Heartbeat, Hello, History, Message, ProtocolError, Refuse,
                             Snapshot, SnapshotDone, Welcome, encode)
from drp.ha.protocol import epoch_at, is_promote_marker
from drp.ha.session_events import (Apply, Event, FetchSnapshot, HandedOver, InSync, Lagging,
                                   Refused, Send, Stalled, Welcomed)
from drp.store.wire import WireError, entry_from_wire

STALL_TIMEOUT = 10.0  # the active heartbeats every second when idle: silence this long = gone
REPORT_EVERY = 5.0  # progress while Syncing, at most this often


class PassiveSession:
    def __init__(self, hello: Hello, now: float, *, stall_timeout: float = STALL_TIMEOUT,
                 report_every: float = REPORT_EVERY) -> None:
        self.hello = hello
        self.stall_timeout, self.report_every = stall_timeout, report_every
        self.state = CONNECTING
        self.epoch = self._recv_epoch = hello.epoch
        self.applied_seq = self.received_seq = self.head = hello.seq
        self.mode: str | None = None
        self.final_head: int | None = None  # set when the active announces its handover
        self.divergent = 0
        self.active_drp_id: str | None = None
        self.active_history: History = ()
        self._awaiting_snapshot, self._snapshot = False, None
        self._pending: deque = deque()  # received, not yet applied: (seq, time, epoch)
        self._active_time: float | None = None  # latest time seen on the active's clock
        self._heard = self._reported = now

    # ---- driver calls ---------------------------------------------------------------------
    def start(self) -> list[Event]:
        return [Send(encode(self.hello))]

    def receive(self, msg: Message, now: float) -> list[Event]:
        self._heard = now
        if self.state == CONNECTING:
            if isinstance(msg, Refuse):
                return [Refused(msg.reason, msg.code)]
            if not isinstance(msg, Welcome):
                raise ProtocolError(f"expected welcome, got {msg.type}")
            return [Welcomed(self._on_welcome(msg)), *self._after(now)]
        if self._awaiting_snapshot and not isinstance(msg, (Snapshot, Heartbeat)):
            raise ProtocolError(f"expected snapshot, got {msg.type}")
        if isinstance(msg, Snapshot):
            return [FetchSnapshot(self._on_snapshot(msg))]
        if isinstance(msg, Entries):
            return [Apply(self._on_entries(msg))]
        if isinstance(msg, Heartbeat):
            self.head = max(self.head, msg.head)
            self._active_time = max(self._active_time or 0.0, msg.time)
            return self._after(now)
        if isinstance(msg, Handover):
            self.final_head = msg.head
            self.head = max(self.head, msg.head)
            return [HandedOver(msg.head), *self._after(now)]
        raise ProtocolError(f"unexpected {msg.type} while streaming")

    def snapshot_installed(self, seq: int, now: float) -> list[Event]:
        if self._snapshot is None or seq != self._snapshot.seq:
            raise ValueError(f"no snapshot at seq {seq} was announced")
        self.applied_seq = self.received_seq = seq
        self.epoch = self._recv_epoch = epoch_at(self.active_history, seq)
        self._awaiting_snapshot, self._snapshot = False, None
        self._pending.clear()
        self._heard = self._reported = now  # the stream resumes from here
        return [Send(encode(SnapshotDone(seq))), *self._after(now)]

    def applied(self, seq: int, now: float) -> list[Event]:
        """Everything up to seq is applied and durable here."""
        if not self.applied_seq <= seq <= self.received_seq:
            raise ValueError(f"applied({seq}) outside {self.applied_seq}..{self.received_seq}")
        while self._pending and self._pending[0][0] <= seq:
            self.epoch = self._pending.popleft()[2]
        self.applied_seq = seq
        self._heard = now  # the driver waits again from now: applying was not the active's silence
        return [Send(encode(Ack(seq))), *self._after(now)]

    def report(self, now: float) -> list[Event]:
        """Progress, due every report_every seconds while Syncing (the driver asks on a timer
        of its own, so that a batch that takes long to apply is reported while it applies)."""
        if self.state == SYNCING and not self._awaiting_snapshot and \
                now - self._reported >= self.report_every:
            self._reported = now
            return [Lagging(self.applied_seq, self.head, self.lag_entries)]
        return []

    def tick(self, now: float) -> list[Event]:
        deadline = self.deadline
        if deadline is not None and now >= deadline:
            return [Stalled(f"nothing from the active for {self.stall_timeout:.0f}s")]
        return []

    @property
    def deadline(self) -> float | None:
        """When tick() must be called if nothing arrives; None while nothing is due (before
        the welcome, and while the active prepares a snapshot: it sends nothing meanwhile)."""
        if self.state == CONNECTING or self._awaiting_snapshot:
            return None
        return self._heard + self.stall_timeout

    # ---- state ----------------------------------------------------------------------------
    @property
    def streaming(self) -> bool:
        """Past catch-up: entries flow."""
        return self.state != CONNECTING and not self._awaiting_snapshot

    @property
    def has_final(self) -> bool:
        """Applied everything the handing-over active will ever send."""
        return self.final_head is not None and self.applied_seq >= self.final_head

    @property
    def lag_entries(self) -> int:
        return max(0, self.head - self.applied_seq)

    @property
    def lag_seconds(self) -> float | None:
        """Age of the oldest unapplied entry on the active's clock (no cross-host skew)."""
        if self.lag_entries == 0:
            return 0.0
        if not self._pending or self._active_time is None:
            return None  # not received yet: unknown
        return max(0.0, self._active_time - self._pending[0][1])

    def status(self) -> dict:
        return {"state": self.state, "epoch": self.epoch, "seq": self.applied_seq,
                "head": self.head, "lag": self.lag_entries, "lag_seconds": self.lag_seconds}

    # ---- inside ---------------------------------------------------------------------------
    def _on_welcome(self, w: Welcome) -> Welcome:
        if w.mode == STREAM and self.applied_seq > w.head:
            raise ProtocolError(f"welcome: stream mode, but this node is at seq "
                                f"{self.applied_seq}, past the active's head {w.head}")
        self.state, self.mode, self.divergent = SYNCING, w.mode, w.divergent
        self.active_drp_id, self.active_history = w.drp_id, w.history
        self.head = w.head  # the active's, even below a divergent local head
        self._awaiting_snapshot = w.mode == FULL
        return w

    def _on_snapshot(self, s: Snapshot) -> Snapshot:
        if not self._awaiting_snapshot or self._snapshot is not None:
            raise ProtocolError("unexpected snapshot while streaming")
        self._snapshot = s
        self.head = max(self.head, s.seq)
        return s

    def _on_entries(self, e: Entries) -> list[dict]:
        """Checks the batch continues the stream; returns the entries to apply, in order."""
        expected, epoch = self.received_seq + 1, self._recv_epoch
        for item in e.items:  # check the whole batch before taking any of it
            seq = item["seq"]
            if seq != expected:
                raise ProtocolError(f"entries: expected seq {expected}, got {seq}")
            marker = is_promote_marker(item)
            if marker and item["epoch"] <= epoch:
                raise ProtocolError(f"entries: seq {seq} promotes to epoch {item['epoch']} "
                                    f"from epoch {epoch}")
            if item["epoch"] != epoch and not marker:
                raise ProtocolError(f"entries: seq {seq} moves from epoch {epoch} to "
                                    f"{item['epoch']} without a promote marker")
            epoch, expected = item["epoch"], expected + 1
        try:
            entries = [entry_from_wire(i) for i in e.items]
        except WireError as err:
            raise ProtocolError(str(err)) from None
        self._pending.extend((i["seq"], float(i["time"]), i["epoch"]) for i in e.items)
        self.received_seq, self._recv_epoch = expected - 1, epoch
        self.head = max(self.head, e.head, self.received_seq)
        self._active_time = max(self._active_time or 0.0, float(e.items[-1]["time"]))
        return entries

    def _after(self, now: float) -> list[Event]:
        """In-Sync once per connection (so the realtime line is logged once per connection)."""
        if self.state == SYNCING and not self._awaiting_snapshot and \
                self.applied_seq >= self.head:
            self.state = IN_SYNC
            return [InSync(self.applied_seq)]
        return []

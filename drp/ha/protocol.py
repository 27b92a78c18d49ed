"""Sans-IO replication protocol between the active node and its passives.

No sockets, no trio, no clock: the handshake checks, how a passive catches up (plan_sync), and
the active's ledger of its passives (ActiveTracker, which says which writes may return). The
per-connection state machines built on these are drp/ha/active_session.py and
drp/ha/passive_session.py; times are passed in by the caller.

The messages themselves and their validation live in drp/ha/messages.py (re-exported here).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from drp.ha.messages import (  # noqa: F401  (re-exported: drivers use protocol.<Message>)
    CONNECTING,
    FULL,
    IN_SYNC,
    PROTOCOL_VERSION,
    STREAM,
    SYNCING,
    ProtocolError,
    HistoryEntry,
    History,
    Hello,
    Ack,
    SnapshotDone,
    Refuse,
    Refusal,
    Welcome,
    Snapshot,
    Entries,
    Heartbeat,
    Handover,
    Message,
    parse_history,
    decode,
    encode,
)

# --- handshake --------------------------------------------------------------------------------

def _major(version: str) -> str:
    """"4.14.0" → "4"; anything unparsable stands for itself (equal only to the same text)."""
    m = re.match(r"v?(\d+)(\.|$)", version)
    return m.group(1) if m else version


def check_hello(hello: Hello, *, ha_id: str, os: str, arch: str, version: str,
                drp_id: str | None = None) -> Refuse | None:
    """The active's verdict on a passive's hello: a Refuse to send, or None to go on.

    `drp_id` is the active's own; a passive with the same one would make epoch histories
    ambiguous. Token checks happen in the HTTP layer, before any of this.
    """
    if hello.ha_id != ha_id:
        return Refuse(f"this node has --ha-id {hello.ha_id}, the cluster is {ha_id}: "
                      f"set RS_HA_ID={ha_id}", "ha_id")
    if (hello.os, hello.arch) != (os, arch):
        return Refuse(f"cluster runs {os}/{arch}, this node is {hello.os}/{hello.arch}: "
                      "HA nodes must share OS and architecture", "platform")
    major = _major(version)
    if hello.protocol != PROTOCOL_VERSION or _major(hello.version) != major:
        return Refuse(f"this node runs {hello.version} (protocol {hello.protocol}), the active "
                      f"runs {version}; install a {major}.x release of drp on this node "
                      f"(protocol {PROTOCOL_VERSION})", "version")
    if drp_id is not None and hello.drp_id == drp_id:
        return Refuse(f"this node has the active's --drp-id {drp_id}: give every node its own "
                      "RS_DRP_ID", "drp_id")
    return None


def busy_refusal(drp_id: str) -> Refuse:
    """For a hello from a drp_id that already has a live replication connection."""
    return Refuse(f"a passive with drp_id {drp_id} is already connected to this active: stop "
                  "the other node, or give this one its own RS_DRP_ID", "busy")


# --- positions --------------------------------------------------------------------------------

class SyncPlan(NamedTuple):
    mode: str              # STREAM or FULL
    start_seq: int | None  # first seq to stream; None for FULL (the snapshot's seq decides)
    divergent: int         # passive entries that are not on the active's history


def _hist(history) -> History:  # plain (epoch, start_seq, drp_id) tuples/lists welcome
    return tuple(HistoryEntry(*t) for t in history)


def divergence_seq(a, b) -> int | None:
    """First seq at which logs with these epoch histories may differ; None if they agree."""
    a, b = _hist(a), _hist(b)
    for x, y in zip(a, b):
        if x != y:
            return min(x.start_seq, y.start_seq)
    if len(a) != len(b):  # one is a prefix: the longer one's next epoch is not in the other
        longer = a if len(a) > len(b) else b
        return longer[min(len(a), len(b))].start_seq
    return None


def epoch_at(history, seq: int) -> int:
    """The epoch of the entry at seq (0 before the first promotion)."""
    return max((e.epoch for e in _hist(history) if e.start_seq <= seq), default=0)


def plan_sync(*, active_history, active_head: int, active_oldest_retained_seq: int,
              passive_history, passive_head: int) -> SyncPlan:
    """How a passive at passive_head catches up: stream the missing entries, or a full copy."""
    split = divergence_seq(active_history, passive_history)
    if not passive_history:
        split = 1  # entries written before any promotion can't be matched to anyone's
    common_end = active_head if split is None else min(split - 1, active_head)
    divergent = max(0, passive_head - common_end)
    if divergent == 0 and (passive_head == active_head
                           or passive_head + 1 >= active_oldest_retained_seq):
        return SyncPlan(STREAM, passive_head + 1, 0)
    return SyncPlan(FULL, None, divergent)


def is_promote_marker(entry: dict) -> bool:
    body = entry.get("body")
    return (entry.get("kind") == "ha" and entry.get("action") == "promote"
            and isinstance(body, dict) and body.get("epoch") == entry.get("epoch"))


# --- active side ------------------------------------------------------------------------------

JOINING = "Joining"  # internal: holds writes back, not yet electable; shown as Syncing
DISCONNECTED = "Disconnected"  # its connection ended; kept in view until it reconnects


@dataclass
class _Passive:
    id: str
    address: str
    acked: int
    state: str
    # (seq, time, slow) sent and not yet acked; slow: the batch puts blobs to fetch
    sends: deque = field(default_factory=deque)
    join_seq: int = 0  # JOINING: In-Sync once it acks this
    since: str = ""  # DISCONNECTED: when (UTC, ISO 8601)

    @property
    def holds_writes(self) -> bool:
        return self.state in (IN_SYNC, JOINING)


class ActiveTracker:
    """The active's view of every connected passive, for synchronous (group) commit.

    Create it with the store's head; call head_advanced(seq, now) after each commit, before
    waiting on must_wait_for(seq); call expire() periodically and after it recheck the waiters.
    """

    def __init__(self, head: int = 0, prompt: float = 1.0) -> None:
        self.head = head
        # A Syncing passive holds writes back (joins) only while it acks promptly: nothing sent
        # to it is older than this, and nothing it was sent has files to fetch first.
        self.prompt = prompt
        self._passives: dict[str, _Passive] = {}
        # (head, commit time) since the lowest In-Sync ack: when an unsent entry became due
        self._commits: deque[tuple[int, float]] = deque()

    def __contains__(self, passive_id: str) -> bool:
        """Connected and tracked (a disconnected passive may connect again)."""
        p = self._passives.get(passive_id)
        return p is not None and p.state != DISCONNECTED

    def add(self, passive_id: str, address: str, start_seq: int) -> str:
        """start_seq: the first seq it still needs (1 for a full catch-up). Returns its state."""
        if passive_id in self:
            raise ValueError(f"passive {passive_id} is already tracked")
        if start_seq - 1 > self.head:
            raise ValueError(f"start_seq {start_seq} is past head {self.head} + 1")
        state = IN_SYNC if start_seq - 1 >= self.head else SYNCING
        self._passives[passive_id] = _Passive(passive_id, address, start_seq - 1, state)
        return state

    def remove(self, passive_id: str) -> None:
        self._passives.pop(passive_id, None)
        self._trim()

    def disconnected(self, passive_id: str, since: str) -> None:
        """Its connection ended: it holds no write back, and stays in view (state
        Disconnected, since when) until it connects again."""
        p = self._passives.get(passive_id)
        if p is not None:
            p.state, p.since = DISCONNECTED, since
            p.sends.clear()
            self._trim()

    def head_advanced(self, seq: int, now: float) -> None:
        if seq < self.head:
            raise ValueError(f"head went back from {self.head} to {seq}")
        if seq > self.head and any(p.holds_writes for p in self._passives.values()):
            self._commits.append((seq, now))
        self.head = seq

    def on_sent(self, passive_id: str, seq: int, now: float, slow: bool = False) -> None:
        """Entries up to seq were handed to this passive's connection (slow: they put blobs,
        whose bytes it fetches before it can ack)."""
        p = self._passives[passive_id]
        if seq > self.head:
            raise ValueError(f"sent seq {seq} past head {self.head}")
        if seq > p.acked and (not p.sends or seq > p.sends[-1][0]):
            p.sends.append((seq, now, slow))
        if p.state == SYNCING and seq >= self.head and self._prompt(p, now):
            # Caught up as of this send: writes committed from now on wait for it, so once it
            # acks seq it holds every acknowledged write and can be called In-Sync. (Waiting
            # for an ack of the moving head instead would never happen under steady load.)
            # A passive still fetching files (an ISO of a batch it was sent) would hold every
            # write back until the sync timeout dropped it again, once per write: it joins
            # only once what it was sent can be acked promptly.
            p.state, p.join_seq = JOINING, seq

    def _prompt(self, p: _Passive, now: float) -> bool:
        return not any(slow for *_, slow in p.sends) and \
            (not p.sends or now - p.sends[0][1] <= self.prompt)

    def on_ack(self, passive_id: str, seq: int, now: float) -> bool:
        """Also feed snapshot_done here. True when this ack (re)joins the passive to In-Sync.

        (`now` is accepted for symmetry with on_sent; acks start no timers.)
        """
        p = self._passives[passive_id]
        if seq < p.acked or seq > self.head:
            raise ProtocolError(f"ack {seq} outside {p.acked}..{self.head}")
        p.acked = seq
        while p.sends and p.sends[0][0] <= seq:
            p.sends.popleft()
        joined = (p.state == SYNCING and seq >= self.head) or \
            (p.state == JOINING and seq >= p.join_seq)
        if joined:
            p.state = IN_SYNC
        self._trim()
        return joined

    def must_wait_for(self, seq: int) -> set[str]:
        """In-Sync passives that have not acked seq: a write at seq returns when this is empty."""
        return {p.id for p in self._passives.values() if p.holds_writes and p.acked < seq}

    def in_sync(self) -> frozenset[str]:
        """The passives In-Sync now (the sync set an etcd-run active publishes)."""
        return frozenset(p.id for p in self._passives.values() if p.state == IN_SYNC)

    def acked_by(self, passive_id: str) -> int:
        """The highest seq this passive acked (-1 if it never connected to this active)."""
        p = self._passives.get(passive_id)
        return p.acked if p is not None else -1

    def released_through(self) -> int | None:
        """Every write at or below this seq may return (None: no passive holds writes back)."""
        return min((p.acked for p in self._passives.values() if p.holds_writes),
                   default=None)

    def expire(self, now: float, sync_timeout: float) -> list[str]:
        """Drop to Syncing the In-Sync passives owing an ack for longer than sync_timeout."""
        dropped = []
        for p in self._passives.values():
            if not p.holds_writes or p.acked >= self.head:
                continue
            # due since its oldest unacked entry was committed or sent, whichever came first
            due = [t for t in (next((t for s, t in self._commits if s > p.acked), None),
                               p.sends[0][1] if p.sends else None) if t is not None]
            if due and now - min(due) > sync_timeout:
                p.state = SYNCING
                dropped.append(p.id)
        self._trim()
        return dropped

    def _trim(self) -> None:
        floor = self.released_through()
        if floor is None:  # nobody can be late: forget commit times
            self._commits.clear()
            return
        while self._commits and self._commits[0][0] <= floor:
            self._commits.popleft()

    def snapshot(self) -> list[dict]:
        """For /api/v3/info ha_passive_state."""
        return [{"id": p.id, "address": p.address,
                 "state": SYNCING if p.state == JOINING else p.state,
                 "electable": p.state == IN_SYNC, "lag": self.head - p.acked,
                 **({"since": p.since} if p.state == DISCONNECTED else {})}
                for p in self._passives.values()]

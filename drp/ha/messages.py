"""Replication wire messages: what the active and a passive say to each other, and checks.

One JSON object per websocket text frame, {"type": ..., ...}; decode() validates every field and
raises ProtocolError (one line) on anything malformed. Bulk bytes (the snapshot file, blobs)
travel over HTTP(S) with Range, never here. The entries themselves are in drp/store/wire.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from drp.store.wire import WireError, check_entry

PROTOCOL_VERSION = 1
CONNECTING, SYNCING, IN_SYNC = "Connecting", "Syncing", "In-Sync"  # shown in /api/v3/info
STREAM, FULL = "stream", "full"


class ProtocolError(Exception):
    """The peer sent something malformed or out of order (the text is one line)."""


class HistoryEntry(NamedTuple):
    epoch: int
    start_seq: int
    drp_id: str


History = tuple[HistoryEntry, ...]


# --- messages -------------------------------------------------------------------------------
# Field annotations double as the wire schema: decode() checks each field by its annotation.

@dataclass(frozen=True)
class Hello:  # passive → active, first frame
    type: ClassVar[str] = "hello"
    ha_id: str
    drp_id: str
    version: str
    os: str
    arch: str
    epoch: int
    seq: int
    history: History
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Ack:  # passive → active: applied and fsynced everything up to seq
    type: ClassVar[str] = "ack"
    seq: int


@dataclass(frozen=True)
class SnapshotDone:  # passive → active: installed the snapshot taken at seq; stream from seq+1
    type: ClassVar[str] = "snapshot_done"
    seq: int


@dataclass(frozen=True)
class Refuse:  # active → passive, then close
    type: ClassVar[str] = "refuse"
    reason: str  # operator-facing: says what to do
    code: str    # "token", "ha_id", "platform", "version", "drp_id", "busy"


Refusal = Refuse  # what check_hello returns is the message itself, ready to encode


@dataclass(frozen=True)
class Welcome:  # active → passive: the handshake succeeded
    type: ClassVar[str] = "welcome"
    drp_id: str
    epoch: int
    head: int
    history: History
    mode: str       # STREAM or FULL
    divergent: int  # passive entries not on the active's history (dropped by a full catch-up)
    # The active's --static-port: files and ISOs are fetched from it over plain HTTP (as any
    # machine being provisioned gets them), checked against the sha256 this stream vouches for.
    # Optional, so that nodes of either side of this addition still talk (0: over the API).
    static_port: int = dataclasses.field(default=0, metadata={"optional": True})


@dataclass(frozen=True)
class Snapshot:  # active → passive: fetch this snapshot over HTTPS, then send snapshot_done
    type: ClassVar[str] = "snapshot"
    seq: int
    snapshot_id: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Entries:  # active → passive: contiguous change-log entries, ascending
    type: ClassVar[str] = "entries"
    items: list[dict]
    head: int


@dataclass(frozen=True)
class Heartbeat:  # active → passive when idle, so lag can be reported in seconds
    type: ClassVar[str] = "heartbeat"
    head: int
    time: float


@dataclass(frozen=True)
class Handover:  # active → passive: no more writes here; my last entry is head
    type: ClassVar[str] = "handover"
    head: int


Message = Hello | Ack | SnapshotDone | Refuse | Welcome | Snapshot | Entries | Heartbeat | Handover
MESSAGES: dict[str, type] = {c.type: c for c in (Hello, Ack, SnapshotDone, Refuse, Welcome,
                                                  Snapshot, Entries, Heartbeat, Handover)}


def _show(value: Any) -> str:
    return repr(value)[:40]


def _str(name: str, v: Any) -> str:
    return v if isinstance(v, str) else _bad(name, "a string", v)


def _int(name: str, v: Any) -> int:  # JSON true is not a seq: bool is excluded
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
    return v if ok else _bad(name, "a non-negative integer", v)


def _float(name: str, v: Any) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else _bad(name, "a number", v)


def _bad(name: str, expected: str, v: Any) -> Any:
    raise ProtocolError(f"{name}: expected {expected}, got {_show(v)}")


def parse_history(v: Any, name: str = "history") -> History:
    """A wire epoch history ([[epoch, start_seq, drp_id], ...]) → tuple of HistoryEntry."""
    if not isinstance(v, (list, tuple)):
        raise ProtocolError(f"{name}: expected a list, got {_show(v)}")
    out: list[HistoryEntry] = []
    for t in v:
        if not isinstance(t, (list, tuple)) or len(t) != 3:
            raise ProtocolError(f"{name}: expected [epoch, start_seq, drp_id], got {_show(t)}")
        e = HistoryEntry(_int(f"{name} epoch", t[0]), _int(f"{name} start_seq", t[1]),
                         _str(f"{name} drp_id", t[2]))
        if e.epoch < 1 or e.start_seq < 1 or not e.drp_id:
            raise ProtocolError(f"{name}: invalid epoch {_show(list(t))}")
        # every epoch starts with its own marker entry, so both columns strictly increase
        if out and (e.epoch <= out[-1].epoch or e.start_seq <= out[-1].start_seq):
            raise ProtocolError(f"{name}: not ascending at {_show(list(t))}")
        out.append(e)
    return tuple(out)


def _entries(name: str, v: Any) -> list[dict]:
    if not isinstance(v, list) or not v:
        raise ProtocolError(f"{name}: expected a non-empty list of entries")
    try:
        items = [check_entry(e) for e in v]
    except WireError as e:
        raise ProtocolError(str(e)) from None
    for prev, cur in zip(items, items[1:]):
        if cur["seq"] != prev["seq"] + 1:
            raise ProtocolError(f"{name}: seq {cur['seq']} follows {prev['seq']}")
    return items


_CHECKS = {"str": _str, "int": _int, "float": _float, "list[dict]": _entries,
           "History": lambda name, v: parse_history(v, name)}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_message(m: Message) -> None:
    """Rules that tie fields of one message together."""
    where = m.type
    if isinstance(m, (Hello, Welcome)):
        seq = m.seq if isinstance(m, Hello) else m.head
        if m.history:  # the position must lie inside the last epoch
            last = m.history[-1]
            if m.epoch != last.epoch or seq < last.start_seq:
                raise ProtocolError(f"{where}: position ({m.epoch}, {seq}) is not in its history")
        elif m.epoch != 0 or isinstance(m, Welcome):  # an active always has promoted
            raise ProtocolError(f"{where}: epoch {m.epoch} with an empty history")
    if isinstance(m, Welcome):
        if m.mode not in (STREAM, FULL):
            raise ProtocolError(f"welcome: unknown mode {_show(m.mode)}")
        if m.mode == STREAM and m.divergent:
            raise ProtocolError("welcome: stream mode with divergent entries")
        if m.static_port > 65535:
            raise ProtocolError(f"welcome: static_port {m.static_port} is not a port")
    elif isinstance(m, Refuse) and not m.code:
        raise ProtocolError("refuse: empty code")
    elif isinstance(m, Snapshot) and (m.seq < 1 or not m.snapshot_id
                                      or not _SHA256.fullmatch(m.sha256)):
        raise ProtocolError(f"snapshot: bad seq, id or sha256 ({m.seq}, {_show(m.snapshot_id)})")
    elif isinstance(m, Entries) and m.head < m.items[-1]["seq"]:
        raise ProtocolError(f"entries: head {m.head} is before seq {m.items[-1]['seq']}")


def decode(text: str | bytes) -> Message:
    """One websocket text frame → a message; anything malformed raises ProtocolError."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"expected a JSON object, got {_show(obj)}")
    kind = obj.get("type")
    cls = MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {_show(obj.get('type'))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in obj:  # unknown extra fields are ignored (newer peers may add some)
            if f.metadata.get("optional"):
                continue  # an older peer: the field's default
            raise ProtocolError(f"{cls.type}: missing {f.name!r}")
        kwargs[f.name] = _CHECKS[f.type](f"{cls.type} {f.name}", obj[f.name])
    msg = cls(**kwargs)
    _check_message(msg)
    return msg


def encode(msg: Message) -> str:
    """A message → one websocket text frame."""
    out: dict[str, Any] = {"type": msg.type}
    for f in dataclasses.fields(msg):
        v = getattr(msg, f.name)
        out[f.name] = [list(t) for t in v] if f.name == "history" else v
    return json.dumps(out, separators=(",", ":"))



"""What the replication sessions (drp/ha/active_session.py, drp/ha/passive_session.py) tell
their drivers to do or to know. Every session call returns a list of these, in order; the
driver carries them out (send a frame, apply entries, log a line) and feeds the outcome back.
"""
from __future__ import annotations

from dataclasses import dataclass

from drp.ha.messages import Snapshot, Welcome


@dataclass(frozen=True)
class Send:
    """Send this frame (one websocket text message, already encoded)."""
    frame: str


# --- both ends ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Refused:
    """The handshake failed: the active refused (passive side), or refuses (active side, after
    sending the Refuse). The session is over."""
    reason: str
    code: str


@dataclass(frozen=True)
class InSync:
    """Active side: the passive acked the head it joined at and now holds writes back.
    Passive side: lag reached 0 for the first time on this connection (log the realtime line)."""
    seq: int


# --- passive side ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Welcomed:
    welcome: Welcome


@dataclass(frozen=True)
class FetchSnapshot:
    """Fetch, verify and install this snapshot, then call snapshot_installed(seq)."""
    snapshot: Snapshot


@dataclass(frozen=True)
class Apply:
    """Apply these entries (bytes first, then rows), then call applied(last seq)."""
    entries: list[dict]


@dataclass(frozen=True)
class HandedOver:
    """The active stopped taking writes; final_head is its last entry."""
    final_head: int


@dataclass(frozen=True)
class Lagging:
    """Still catching up (reported at most every few seconds while Syncing)."""
    applied: int
    head: int
    behind: int


@dataclass(frozen=True)
class Stalled:
    """Nothing heard from the active for too long: drop the connection and dial again."""
    reason: str


# --- active side -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TakeSnapshot:
    """A full catch-up: make a snapshot and call snapshot_taken() with what was made."""
    divergent: int


@dataclass(frozen=True)
class Streaming:
    """The passive is tracked; send entries from start_seq on (mode: stream or full)."""
    start_seq: int
    mode: str


@dataclass(frozen=True)
class Announced:
    """The Handover message is out: the passive has been sent every entry there will be."""
    final_head: int


Event = (Send | Refused | InSync | Welcomed | FetchSnapshot | Apply | HandedOver | Lagging
         | Stalled | TakeSnapshot | Streaming | Announced)

"""One read transfer as a state machine, without I/O: the driver feeds it file bytes, ACKs and
the clock, and sends the packets it hands out.

Blocks are numbered k = 1, 2, ... without bound here; on the wire k & 0xFFFF, so block numbers
roll over past 65535 to 0. A window is `windowsize` blocks (1 = plain RFC 1350 lock-step).
An ACK of k (acked < k <= last sent) moves the window to k+1..k+windowsize, resending what
the client did not take (RFC 7440); an ACK of anything else — a duplicate or an old one — is
ignored, so a delayed ACK never doubles the traffic (the Sorcerer's Apprentice bug). Silence
for `timeout` seconds resends the window (or the OACK); `retries` silences in a row end it.

Driver loop:
    t.start(now)
    while not t.done:
        while (want := t.need()): t.supply(read(*want))   # offset, length
        send(t.outgoing())
        packet or timeout -> t.on_ack(block, now) / t.on_error(...) / t.timeout_due(now)
"""
from __future__ import annotations

from drp.tftp import packets
from drp.tftp.packets import Options

READ_AHEAD = 256 << 10  # bytes asked for at once, so a small window is no disk trip per block


class ReadTransfer:
    def __init__(self, options: Options, oack: dict[str, str] | None = None, *,
                 timeout: float = 1.0, retries: int = 5):
        self.blksize = options.blksize
        self.window = options.windowsize
        self.timeout = options.timeout or timeout
        self.retries = retries
        self._oack = packets.build_oack(oack) if oack else None
        self._oack_unacked = self._oack is not None  # waiting for ACK 0
        self._oack_queued = False
        self.acked = 0  # highest block the client has acknowledged
        self.last_sent = 0  # highest block sent so far
        self._next = 1  # next block outgoing() hands out
        self._buf = bytearray()  # file bytes from offset _buf_start on
        self._buf_start = 0
        self._eof: int | None = None  # file size, once a read came back short
        self._silences = 0
        self.deadline = float("inf")
        self.done = False
        self.error: str | None = None  # why it ended unfinished (None: completed or running)
        self.sent_packets = 0

    # ---- file bytes ---------------------------------------------------------------------------
    @property
    def final(self) -> int | None:
        """The last block's number (short, maybe empty), once the file's end is known."""
        return None if self._eof is None else self._eof // self.blksize + 1

    def need(self) -> tuple[int, int] | None:
        """(offset, length) of file bytes to supply before outgoing() can fill the window (and
        the next), or None. A short supply marks the end of the file."""
        if self.done or self._eof is not None:
            return None
        buf_end = self._buf_start + len(self._buf)
        want_end = (self.acked + 2 * self.window) * self.blksize
        if buf_end >= want_end:
            return None
        return buf_end, max(want_end - buf_end, READ_AHEAD)

    def supply(self, data: bytes, asked: int | None = None) -> None:
        """Bytes at the offset need() gave; fewer than asked (default: what need() asked for)
        means the file ends there."""
        if asked is None:
            want = self.need()
            asked = want[1] if want else len(data)
        self._buf += data
        if len(data) < asked:
            self._eof = self._buf_start + len(self._buf)

    # ---- events -------------------------------------------------------------------------------
    def start(self, now: float) -> None:
        self._oack_queued = self._oack_unacked
        self.deadline = now + self.timeout

    def on_ack(self, block: int, now: float) -> bool:
        """An ACK of wire block `block`; False when it was ignored (duplicate, old, stray)."""
        if self.done:
            return False
        if self._oack_unacked:
            if block != 0:
                return False
            self._oack_unacked = self._oack_queued = False
        else:
            k = self.acked + ((block - self.acked) & 0xFFFF)
            if k == self.acked or k > self.last_sent:
                return False
            self.acked = k
            drop = k * self.blksize - self._buf_start
            if drop > 0:
                del self._buf[:drop]  # cheap: bytearray trims its front in place
                self._buf_start += drop
            if k == self.final:
                self.done = True
                self.deadline = float("inf")
                return True
        self._next = self.acked + 1  # after a partial ACK the client dropped the rest: resend
        self._silences = 0
        self.deadline = now + self.timeout
        return True

    def on_error(self, code: int, message: str) -> None:
        """The client gave up (an ERROR packet, e.g. 8 when it rejects our OACK)."""
        self._finish(f"client sent error {code}: {message}")

    def timeout_due(self, now: float) -> bool:
        """Call when the deadline may have passed: True when it did (the window, or the OACK,
        will be resent — or, after too many silences, the transfer ends with `error` set)."""
        if self.done or now < self.deadline:
            return False
        self._silences += 1
        if self._silences > self.retries:
            self._finish(f"no answer after {self.retries} retransmissions")
            return True
        if self._oack_unacked:
            self._oack_queued = True
        else:
            self._next = self.acked + 1
        self.deadline = now + self.timeout
        return True

    def _finish(self, error: str) -> None:
        self.done, self.error, self.deadline = True, error, float("inf")

    # ---- packets ------------------------------------------------------------------------------
    def outgoing(self) -> list[bytes]:
        """The packets to send now (an OACK, or DATA of the window not yet sent)."""
        if self.done:
            return []
        if self._oack_unacked:
            if not self._oack_queued:
                return []
            self._oack_queued = False
            self.sent_packets += 1
            return [self._oack]
        out = []
        final, end = self.final, self.acked + self.window
        buf_end = self._buf_start + len(self._buf)
        while self._next <= end and (final is None or self._next <= final):
            lo = (self._next - 1) * self.blksize
            hi = lo + self.blksize
            if hi > buf_end and final is None:
                break  # need() first
            data = bytes(self._buf[lo - self._buf_start:min(hi, buf_end) - self._buf_start])
            out.append(packets.build_data(self._next, data))
            self.last_sent = max(self.last_sent, self._next)
            self._next += 1
        self.sent_packets += len(out)
        return out

"""Warnings about bad or unanswerable packets, at most one line per source per EVERY seconds,
each saying how many were held back: a flood of junk costs the log a line, not a line each
(the UDP services: DHCP and TFTP)."""
from __future__ import annotations

import logging
import time

EVERY = 10.0  # seconds between two lines about one source
KEEP = 4096  # sources remembered; past it the quiet ones are forgotten


class RateLog:
    def __init__(self, log: logging.Logger, what: str):
        self.log, self.what = log, what  # lines read "<what> from <source>: <message>"
        self._last: dict[str, tuple[float, int]] = {}

    def warn(self, source: str, message: str, *args) -> None:
        now = time.monotonic()
        last, held = self._last.get(source, (-EVERY, 0))
        if now - last < EVERY:
            self._last[source] = (last, held + 1)
            return
        if len(self._last) > KEEP:  # a flood from many sources: forget the quiet ones
            self._last = {s: v for s, v in self._last.items() if now - v[0] < EVERY}
        self._last[source] = (now, 0)
        more = f" ({held} more since last said)" if held else ""
        text = message % args if args else message  # a '%' in a plain message stays as it is
        self.log.warning("%s from %s: %s%s", self.what, source, text, more)

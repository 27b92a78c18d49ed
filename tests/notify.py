"""Reading what a dr-provision process sends to $NOTIFY_SOCKET (READY=1, STATUS=...), as
systemd would, from a test."""
from __future__ import annotations

import socket
import threading
import time


class Notifications:
    """What a process sends to $NOTIFY_SOCKET, with what `probe()` said when each arrived."""

    def __init__(self, path, probe=lambda: None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.path, self.probe = str(path), probe
        self.got: list[tuple[str, object]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            for line in data.splitlines():
                self.got.append((line, self.probe()))

    def wait(self, message: str, timeout: float = 20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line, seen in self.got:
                if line == message:
                    return seen
            time.sleep(0.02)
        raise AssertionError(f"no {message} within {timeout}s; got {self.got}")

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()

    def statuses(self) -> list[str]:
        return [line[7:] for line, _ in self.got if line.startswith("STATUS=")]

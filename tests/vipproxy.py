"""A virtual IP for loopback tests: a TCP proxy that forwards to whichever node holds "the VIP".

Each node's --ha-interface-script is a small shell script that, on `add`, writes the node's API
port into the proxy's target file and, on `remove`, clears it if it is still its own. Like a
real VIP moving, a change of target cuts the connections made to the old holder.
"""
from __future__ import annotations

import socket
import stat
import threading
from pathlib import Path

SCRIPT = """#!/bin/sh
# $1 = add|remove, $2 = interface, $3 = address; this node's API port is {port}
echo "$@" >> "{log}"
case "$1" in
  add) echo {port} > "{target}.tmp" && mv "{target}.tmp" "{target}" ;;
  remove) if [ "$(cat "{target}" 2>/dev/null)" = "{port}" ]; then : > "{target}"; fi ;;
esac
"""


class VipProxy:
    def __init__(self, workdir: Path):
        self.target_file = workdir / "vip-target"
        self.target_file.write_text("")
        self.log = workdir / "vip-calls.log"
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        self._pairs: list[tuple[int, socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True),
                         threading.Thread(target=self._watch, daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def script_for(self, workdir: Path, api_port: int) -> Path:
        path = workdir / f"vip-script-{api_port}.sh"
        path.write_text(SCRIPT.format(port=api_port, target=self.target_file, log=self.log))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
        return path

    def target(self) -> int | None:
        text = self.target_file.read_text().strip()
        return int(text) if text else None

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            port = self.target()
            if port is None:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the holder is dead: like a VIP nobody serves
                continue
            with self._lock:
                self._pairs.append((port, client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _watch(self) -> None:
        """Cut connections to a node that no longer holds the VIP."""
        while not self._closed.wait(0.02):
            port = self.target()
            with self._lock:
                stale = [p for p in self._pairs if p[0] != port]
                self._pairs = [p for p in self._pairs if p[0] == port]
            for _, a, b in stale:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    s.close()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for _, a, b in pairs:
            a.close()
            b.close()

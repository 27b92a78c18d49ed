"""An in-process HA cluster for tests of role transitions: real stores and real roles, the
world around them in memory.

- The VIP is a name in a shared `Segment`: whoever added it last holds it, and the passives'
  `connect()` reaches the hub of whichever node holds it (as a real dial to the VIP would).
- A connection is two trio memory channels; `Segment.cut()` drops every open one (a network
  blink), `Link.stalled` stops a passive reading (a slow or paused passive).
- Catch-up downloads copy from the active's base root and snapshot files.
- The guard refuses while another node serving as active holds the VIP.
Everything else — stores, writer, change log, the sans-IO sessions and their drivers, the
roles and the supervisor — is the code a real node runs.
"""
from __future__ import annotations

import hashlib
import logging
import math
import shutil
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from drp.blob import storage
from drp.config import load
from drp.ha import messages as m
from drp.ha.roles import Seams
from drp.ha.supervisor import Supervisor
from drp.ha.transfer import Gone
from drp.ha.vip_control import VipError
from drp.node import Node
from drp.store.store import Store

VIP_CIDR = "198.18.0.100/24"


class Segment:
    """The shared network: who holds the VIP, and the open replication links."""

    def __init__(self, nursery: trio.Nursery):
        self.nursery = nursery
        self.vip_holder: "FakeNode | None" = None
        self.nodes: dict[str, "FakeNode"] = {}
        self.links: set["Link"] = set()
        self.fail_vip_add: set[str] = set()  # drp-ids whose next add() fails

    def cut(self) -> None:
        for link in list(self.links):
            link.close()


class FakeVip:
    def __init__(self, segment: Segment, owner: "FakeNode"):
        self.segment, self.owner = segment, owner
        self.cidr, self.ip, self.interface = VIP_CIDR, VIP_CIDR.split("/")[0], "eth0"
        self.announced = 0
        self.calls: list[str] = []

    async def add(self) -> None:
        await trio.sleep(0)
        self.calls.append("add")
        if self.owner.drp_id in self.segment.fail_vip_add:
            self.segment.fail_vip_add.discard(self.owner.drp_id)
            raise VipError(f"adding {self.cidr} on eth0: permission denied (needs root or "
                           "CAP_NET_ADMIN)")
        self.segment.vip_holder = self.owner

    async def remove(self) -> None:
        await trio.sleep(0)
        self.calls.append("remove")
        if self.segment.vip_holder is self.owner:
            self.segment.vip_holder = None

    async def held(self) -> bool:
        return self.segment.vip_holder is self.owner

    async def announce(self) -> None:
        self.announced += 1

    async def holder(self) -> str | None:
        h = self.segment.vip_holder
        return None if h is None or h is self.owner else h.mac


class Link:
    """One replication connection: the passive's end and the active's end."""

    def __init__(self, segment: Segment):
        self.segment = segment
        self.to_active_send, self.to_active_recv = trio.open_memory_channel(math.inf)
        self.to_passive_send, self.to_passive_recv = trio.open_memory_channel(math.inf)
        self.stalled = False  # the passive stops reading while set
        self.closed = False
        self._unstalled = trio.Event()
        segment.links.add(self)

    def stall(self, on: bool) -> None:
        self.stalled = on
        if not on:
            self._unstalled.set()
            self._unstalled = trio.Event()

    def close(self) -> None:
        self.closed = True
        self.stall(False)  # a closed connection is not slow, it is gone
        self.segment.links.discard(self)
        for ch in (self.to_active_send, self.to_passive_send, self.to_active_recv,
                   self.to_passive_recv):
            ch.close()

    # the passive's end
    async def send(self, frame: str) -> None:
        await self.to_active_send.send(frame)

    async def receive(self) -> str:
        frame = await self.to_passive_recv.receive()
        while self.stalled:  # also a frame that arrived while the passive was waiting
            await self._unstalled.wait()
        if self.closed:  # what a stalled passive had not read is lost with the connection
            raise trio.EndOfChannel
        return frame

    peer_id = None  # not over TLS


class ActiveEnd:
    def __init__(self, link: Link):
        self.link = link

    async def send(self, frame: str) -> None:
        await self.link.to_passive_send.send(frame)

    async def receive(self) -> str:
        return await self.link.to_active_recv.receive()


class LocalFetcher:
    """Catch-up downloads from the node holding the VIP, by copying files."""

    def __init__(self, segment: Segment, partial: Path, delay: float = 0.0):
        self.segment, self.partial = segment, partial
        self.delay = delay  # each blob fetch takes this long (a big file on a slow link)
        self.fetched: list[str] = []

    async def sweep_staged(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def use_static(self, port: int) -> None:
        pass

    def set_peer(self, tag: str, check) -> None:
        pass

    def _source(self, url_or_path: str) -> Path:
        active = self.segment.vip_holder
        if active is None:
            raise Gone(f"{url_or_path}: nobody holds the VIP")
        if url_or_path.startswith("/api/v3/ha/snapshot/"):
            hub = active.supervisor.replication_hub()
            path = hub.snapshots.get(url_or_path.rsplit("/", 1)[1]) if hub else None
        else:
            path = storage.disk_path(active.base, url_or_path)  # files/x: tftpboot/files/x
        if path is None or not path.exists():
            raise Gone(f"{url_or_path}: not on the active")
        return path

    async def _copy(self, source: Path, dest: Path, sha256: str | None) -> tuple[int, str]:
        dest.parent.mkdir(parents=True, exist_ok=True)
        await trio.to_thread.run_sync(shutil.copyfile, source, dest)
        data = dest.read_bytes()
        got = hashlib.sha256(data).hexdigest()
        if sha256 and got != sha256:
            raise Gone(f"{source}: sha256 {got}, want {sha256}")
        return len(data), got

    async def fetch(self, url: str, dest: Path, sha256: str, mode: int = 0o644,
                    progress=None) -> None:
        self.fetched.append(url)
        await self._copy(self._source(url), dest, sha256)

    async def fetch_blob(self, path, dest, sha256, size, mode, progress):
        self.fetched.append(path)
        got_size, got = await self._copy(self._source(path), dest, sha256)
        return got_size, got, False

    async def stage_blob(self, path: str, sha256: str, size: int, progress=None):
        self.fetched.append(path)
        await trio.sleep(self.delay)
        staged = self.partial / hashlib.sha256(path.encode()).hexdigest()
        got_size, got = await self._copy(self._source(path), staged, sha256)
        if progress is not None:
            progress.add(got_size)
        return got_size, got, staged

    async def install(self, staged: Path, dest: Path, mode: int) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(dest)


class FakeNode:
    """One node: a real Store and Supervisor, fake world; start()/crash() as a process."""

    def __init__(self, segment: Segment, base: Path, drp_id: str, mac: str, *,
                 passive: bool, sync_timeout: str = "0.5s", handover_timeout: str = "2s",
                 autopilot=None):
        """autopilot: automatic failover, a function of the drp Node returning its
        drp.ha.autopilot.Autopilot (tests/fakekv.py has an in-memory etcd for it)."""
        self.make_autopilot = autopilot
        self.autopilot = None
        self.segment, self.base, self.drp_id, self.mac = segment, base, drp_id, mac
        self.args = ["--base-root", str(base), "--drp-id", drp_id, "--ha-enabled", "true",
                     "--ha-id", "inproc", "--ha-address", VIP_CIDR, "--ha-interface", "lo",
                     "--ha-token", "t", "--ha-sync-timeout", sync_timeout,
                     "--ha-handover-timeout", handover_timeout,
                     "--ha-passive", "true" if passive else "false"]
        self.cfg = load(self.args, environ={})
        self.lines: list[str] = []  # STATUS lines
        self.store: Store | None = None
        self.supervisor: Supervisor | None = None
        self.vip: FakeVip | None = None
        self.fetcher: LocalFetcher | None = None
        self._scope: trio.CancelScope | None = None
        self._ended = trio.Event()
        self.alive = False
        self.fetch_delay = 0.0  # given to the node's LocalFetcher at start()
        segment.nodes[drp_id] = self

    async def start(self) -> None:
        """As dr-provision starts with --ha-enabled: the store refuses writes until the
        supervisor has a role; returns once the supervisor is up."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.base / "drp.db")
        self.store.retention = self.cfg.ha_log_retention
        node = Node(cfg=self.cfg, store=self.store, drp_id=self.drp_id)
        node.status_line = self.lines.append
        self.vip = FakeVip(self.segment, self)
        self.fetcher = LocalFetcher(self.segment, self.base / "ha" / "partial", self.fetch_delay)
        seams = Seams(vip=self.vip, connect=self._connect, fetcher=lambda: self.fetcher,
                      guard=self._guard)
        self.autopilot = self.make_autopilot(node) if self.make_autopilot else None
        self.supervisor = node.ha = Supervisor(node, seams, self.autopilot)
        self.store.refuse_writes("this node is starting up in HA mode; try again shortly")
        self._ended = trio.Event()
        self.alive = True
        self._scope = trio.CancelScope()
        await self.segment.nursery.start(self._run)

    async def _run(self, task_status) -> None:
        try:
            with self._scope:
                await self.supervisor.run(task_status=task_status)
        finally:
            self._ended.set()

    async def stop(self) -> None:
        """A graceful stop (SIGTERM): the role's cleanup runs."""
        self._scope.cancel()
        await self._ended.wait()
        self.alive = False
        self.store.close()

    async def crash(self) -> None:
        """kill -9: the VIP stays on the interface, nothing is cleaned up but our tasks."""
        holder = self.segment.vip_holder
        self.alive = False
        self.vip.add = self.vip.remove = _dead  # a dead process changes nothing any more
        self._scope.cancel()
        await self._ended.wait()
        self.segment.vip_holder = holder
        for link in list(self.segment.links):
            link.close()
        self.store.close()

    # ---- seams ----------------------------------------------------------------------------
    @asynccontextmanager
    async def _connect(self):
        link = Link(self.segment)
        self.segment.nursery.start_soon(_serve_link, self.segment, link, self.drp_id)
        try:
            yield link
        finally:
            link.close()

    async def _guard(self) -> str | None:
        holder = self.segment.vip_holder
        if holder is not None and holder is not self and holder.alive \
                and holder.supervisor.status().role == "active":
            return f"VIP {VIP_CIDR.split('/')[0]} is answered by {holder.mac}, where " \
                   f"{holder.drp_id} serves as active"
        return None

    # ---- what tests look at -----------------------------------------------------------------
    def status(self):
        return self.supervisor.status()

    async def switch(self, role: str) -> None:
        done = trio.Event()
        await self.supervisor.request_switch(role, done)
        await done.wait()

    async def write(self, key: str, **body):
        return await self.store.write(
            lambda tx: tx.record("machines", key, "create", {"Name": key, **body}))

    async def put_file(self, name: str, data: bytes) -> str:
        """A file as an upload makes it: bytes under the base root, then its blob entry."""
        path = f"files/{name}"
        target = storage.disk_path(self.base, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        meta = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mode": 0o644}
        await self.store.write(lambda tx: tx.record("blob", path, "put", meta))
        return path

    async def keys(self) -> list[str]:
        return [o["Name"] for o in await self.store.list("machines")]

    def link(self) -> Link | None:
        """This node's open replication link, if any."""
        return next((ln for ln in self.segment.links if getattr(ln, "owner", None) == self.drp_id),
                    None)


async def _dead(*_):
    pass


async def _serve_link(segment: Segment, link: Link, passive_id: str) -> None:
    """The active's end of a dial to the VIP: what /api/v3/ha/replicate does."""
    link.owner = passive_id
    end = ActiveEnd(link)
    active = segment.vip_holder
    hub = active.supervisor.replication_hub() if active is not None else None
    try:
        if active is None or not active.alive:
            return  # nobody answers: the dial fails
        if hub is None:
            await end.send(m.encode(m.Refuse("this node is not the active", "not_active")))
        else:
            await hub.serve(end, f"{passive_id}.inproc")
    except* (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError,
             m.ProtocolError):
        pass  # the connection ended, as a websocket closes
    finally:
        link.close()


async def wait_until(pred, timeout: float = 5.0, what: str = "condition"):
    """Poll pred() (a plain function) until it is true."""
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(0.005)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# ---- fixtures (imported by tests/conftest.py) ---------------------------------------------------
@pytest.fixture
async def segment():
    """A Segment in a nursery of the test's; every node still up is stopped at the end."""
    async with trio.open_nursery() as nursery:
        seg = Segment(nursery)
        yield seg
        for node in seg.nodes.values():
            if node.alive:
                await node.stop()
        nursery.cancel_scope.cancel()


@pytest.fixture
def logs(caplog):
    """logs(text) -> the messages of drp's loggers (INFO and up) that contain text."""
    caplog.set_level(logging.INFO, logger="drp")

    def lines(contains: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if contains in r.getMessage()]
    return lines

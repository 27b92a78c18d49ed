"""dr-provision: config → store → one root nursery (API, static files, metrics, signals, HA)."""
from __future__ import annotations

import gc
import logging
import os
import signal
import sys

import trio

from drp import config as configmod, node as nodemod, systemd, tls
from drp.plane import Plane
from drp.api.app import create_app
from drp.blob.static import static_service
from drp.config import Config, ConfigError
from drp.ha.follower import RAN_STANDALONE
from drp.ha.autopilot import make_autopilot
from drp.ha.nodetrust import NodeTrust
from drp.ha.trust import install_peer_certificate_hook
from drp.ha.supervisor import Supervisor
from drp.metrics import metrics_service
from drp.serving import hypercorn_config, serve_app
from drp.store.store import Store

log = logging.getLogger("drp.server")
STOP_GRACE = 3.0  # seconds a graceful stop may take before the nursery is cancelled
READY_WAIT = 15.0  # READY=1 at the latest this long after the API listens, serving or not


def setup_logging(level: str) -> None:
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):  # journald stamps lines itself
        fmt = "%(asctime)s " + fmt
    level = {"warn": "WARNING"}.get(level.lower(), level.upper())
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
    for noisy in ("hypercorn.access", "httpx", "httpcore", "trio-websocket", "scapy.runtime"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Server:
    """Owns the root nursery and the stop event of one dr-provision process."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.stop = trio.Event()
        self.exit_status = 0

    def _disk_failed(self, reason: str) -> None:
        """The store lost a commit to the disk: stop (gracefully: the role's cleanup releases
        the VIP) and exit non-zero, so systemd's Restart=on-failure starts it from what the
        disk really holds."""
        self.exit_status = 1
        self.stop.set()

    async def run(self) -> None:
        cfg = self.cfg
        systemd.notify("STATUS=starting: opening the store")
        cfg.base_root.mkdir(parents=True, exist_ok=True)
        store = Store(cfg.base_root / "drp.db")
        store.on_disk_failure = self._disk_failed
        store.retention = cfg.ha_log_retention
        try:
            drp_id = nodemod.resolve_drp_id(store, cfg)
            cert, key = await trio.to_thread.run_sync(tls.ensure_certificate, cfg)
            node = nodemod.Node(cfg=cfg, store=store, drp_id=drp_id)
            node.cert_path, node.key_path = cert, key
            if cfg.ha_enabled:
                node.trust = await trio.to_thread.run_sync(NodeTrust, cfg, store, drp_id)
                install_peer_certificate_hook()  # requests carry their client certificate
            node.plane = Plane(node)
            node.status_line = lambda text: systemd.notify(f"STATUS={text}")
            await self._run_node(node)
        finally:
            store.close()

    async def _run_node(self, node) -> None:
        cfg = node.cfg
        supervisor = None
        if cfg.ha_enabled:  # the supervisor decides the role; until then, no writes
            supervisor = node.ha = Supervisor(node, autopilot=make_autopilot(node))
            node.store.refuse_writes("this node is starting up in HA mode; try again shortly")
        else:
            await node.store.write(lambda tx: nodemod.bootstrap(tx, node.drp_id), internal=True)
            await node.store.local_set(RAN_STANDALONE, "yes")  # said if it joins a cluster
        app = create_app(node)
        # Tasks that never end on their own (signal watcher, watchdog): cancelled once a stop
        # begins, so a graceful stop takes as long as the services need, not the full grace.
        daemons: list[trio.CancelScope] = []

        async def daemon(fn, *args, task_status=None):
            with trio.CancelScope() as scope:  # a scope may be entered only once: one each
                daemons.append(scope)
                if self.stop.is_set():  # started after the stop began
                    scope.cancel()
                if task_status is None:
                    await fn(*args)
                else:  # started with nursery.start: ready when fn says so
                    await fn(*args, task_status=task_status)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon, self._watch_signals, node, nursery.cancel_scope)
            urls = await nursery.start(serve_app, app,
                                       hypercorn_config(cfg.api_port, node.cert_path,
                                                        node.key_path, cfg.api_address,
                                                        node.trust),
                                       self.stop)
            log.info("API listening on %s (drp-id %s, base root %s)", ", ".join(urls),
                     node.drp_id, cfg.base_root)
            for start in self._extra_services(node):
                await nursery.start(start)
            ha_scope = trio.CancelScope()
            if supervisor is not None:
                async def run_ha(task_status=trio.TASK_STATUS_IGNORED):
                    with ha_scope:
                        await supervisor.run(task_status=task_status)
                await nursery.start(run_ha)
            else:  # a standalone node serves the provisioning plane itself
                for start in node.plane.starters():
                    await nursery.start(daemon, start)
                node.status_line("standalone: serving")
            # What starting made (modules, the app, its routes: ~80k objects) lives as long as
            # the process: kept out of the collector's sight, full collections stop walking it,
            # which stalled every request in flight for 30-60 ms every few seconds under load
            # (16 writers, two HA clusters side by side: p99 94 -> 50 ms).
            gc.collect()  # the garbage of starting up is not kept forever
            gc.freeze()
            if supervisor is not None:  # ready means serving in its role (or a stop began)
                with trio.move_on_after(READY_WAIT):
                    await _first_of(supervisor.serving, self.stop.wait)
            systemd.notify("READY=1")
            interval = systemd.watchdog_interval()
            if interval:
                nursery.start_soon(daemon, systemd.watchdog_loop, interval)
            await self.stop.wait()
            systemd.notify("STOPPING=1")
            log.info("stopping")
            ha_scope.cancel()  # the role's shielded cleanup removes the VIP first
            for scope in list(node.websockets):  # hypercorn leaves open websockets alone
                scope.cancel()
            for scope in daemons:
                scope.cancel()
            # Hypercorn drains HTTP for graceful_timeout; anything still running after the
            # grace period (open websockets, role subtrees) is cancelled.
            nursery.cancel_scope.deadline = trio.current_time() + STOP_GRACE

    def _extra_services(self, node):
        """Services other modules add: each an async fn(task_status=...) started in order."""
        services = [static_service(node, self.stop)]
        if node.cfg.metrics_port:
            services.append(metrics_service(node, self.stop))
        return services

    async def _watch_signals(self, node, scope) -> None:
        sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
        with trio.open_signal_receiver(*sigs) as received:
            async for signum in received:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    log.info("got %s: graceful stop", signal.Signals(signum).name)
                    self.stop.set()
                    continue
                role = "active" if signum == signal.SIGUSR1 else "passive"
                if node.ha is None:
                    log.info("got %s: HA not enabled; ignoring", signal.Signals(signum).name)
                else:
                    log.info("got %s: switching to %s", signal.Signals(signum).name, role)
                    await node.ha.request_switch(role)


async def _first_of(*waits) -> None:
    """Return when the first of these async functions returns."""
    async with trio.open_nursery() as nursery:
        async def one(wait):
            await wait()
            nursery.cancel_scope.cancel()
        for wait in waits:
            nursery.start_soon(one, wait)


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = configmod.load(argv)
    except ConfigError as e:
        print(f"dr-provision: {e}", file=sys.stderr)
        sys.exit(2)
    setup_logging(cfg.log_level)
    server = Server(cfg)
    try:
        trio.run(server.run)
    except KeyboardInterrupt:
        pass
    if server.exit_status:
        sys.exit(server.exit_status)


if __name__ == "__main__":
    main()

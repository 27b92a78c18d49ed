"""Prometheus metrics on --metrics-port (plain HTTP, /metrics)."""
from __future__ import annotations

import prometheus_client as prom
import trio
from quart import Response
from quart_trio import QuartTrio

from drp.serving import hypercorn_config, serve_app

REGISTRY = prom.CollectorRegistry()
ROLE = prom.Gauge("drp_ha_role_active", "1 when this node is the active", registry=REGISTRY)
EPOCH = prom.Gauge("drp_ha_epoch", "current epoch", registry=REGISTRY)
HEAD_SEQ = prom.Gauge("drp_changelog_seq", "last change-log seq in the store", registry=REGISTRY)
APPLIED_SEQ = prom.Gauge("drp_ha_applied_seq", "last seq a passive applied", registry=REGISTRY)
LAG_ENTRIES = prom.Gauge("drp_ha_lag_entries", "entries a passive is behind", registry=REGISTRY)
LAG_SECONDS = prom.Gauge("drp_ha_lag_seconds", "seconds a passive is behind", registry=REGISTRY)
CATCHUP_BYTES = prom.Counter("drp_ha_catchup_bytes", "blob bytes fetched during catch-up",
                             registry=REGISTRY)
SYNC_WAIT = prom.Histogram("drp_ha_sync_wait_seconds",
                           "time a write waited for In-Sync passives", registry=REGISTRY,
                           buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5))
WRITES = prom.Counter("drp_writes", "change-log entries committed (active) or applied "
                      "(passive) on this node", registry=REGISTRY)


def count_writes(changes: list[dict]) -> None:
    """A store listener: every committed or replicated group of changes."""
    WRITES.inc(len(changes))


def metrics_service(node, stop: trio.Event):
    app = QuartTrio("drp-metrics")

    @app.get("/metrics")
    async def metrics():
        HEAD_SEQ.set(node.store.head)
        EPOCH.set(node.store.epoch)
        ROLE.set(1 if node.is_active else 0)
        return Response(prom.generate_latest(REGISTRY), content_type=prom.CONTENT_TYPE_LATEST)

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        node.store.listeners.append(count_writes)
        try:
            await serve_app(app, hypercorn_config(node.cfg.metrics_port,
                                                  host=node.cfg.metrics_address), stop,
                            task_status=task_status)
        finally:
            node.store.listeners.remove(count_writes)
    return run

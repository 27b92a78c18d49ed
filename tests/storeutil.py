"""Helpers for tests of the store: mutations to write, and the `store` fixture (conftest)."""
from __future__ import annotations

import pytest

from drp.store.store import Store


def put(kind: str, key: str, body: dict, action: str = "create"):
    def fn(tx):
        tx.record(kind, key, action, body)
        return key
    return fn


def promote(epoch: int, drp_id: str = "n1"):
    """What bootstrap does first: open an epoch."""
    def fn(tx):
        tx.record("ha", drp_id, "promote", {"epoch": epoch, "drp_id": drp_id}, epoch=epoch)
        tx.epoch = epoch
    return fn


@pytest.fixture
async def store(tmp_path):
    """A store in a temp dir, with epoch 1 open."""
    s = Store(tmp_path / "a.db")
    await s.write(promote(1))
    yield s
    s.close()

"""The store's own boundary (issue 13 §3): its exceptions and how drp/api answers them, the
write gate and quiesce, the named queries, and the one owner of blob bytes."""
from __future__ import annotations

import base64
import json
import threading

import pytest
import trio

from drp import models
from drp.api.app import create_app
from drp.api.errors import api_error
from drp.blob import storage
from drp.blob.files import BlobFiles
from drp.config import load
from drp.errors import error_body
from drp.node import Node, bootstrap
from drp.store import snapshot
from drp.store.errors import NotReplicated, StorageLost, WritesRefused
from drp.store.store import Store
from tests.storeutil import put

AUTH = {"Authorization": "Basic " + base64.b64encode(b"rocketskates:r0cketsk8ts").decode()}


# ---- exceptions -> dr-provision's error bodies, over the API ----------------------------------
@pytest.fixture
async def api(tmp_path):
    """The real app over a real store (standalone), and its store."""
    cfg = load(["--base-root", str(tmp_path)], {})
    store = Store(tmp_path / "drp.db")
    await store.write(lambda tx: bootstrap(tx, "n1"), internal=True)
    app = create_app(Node(cfg, store, "n1"))
    yield app.test_client(), store
    store.close()


async def _answer(client, method: str, path: str, body=None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body)
    reply = await client.open(path, method=method, headers=AUTH, data=data)
    return reply.status_code, json.loads(await reply.get_data())


async def test_writes_refused_is_a_503_ha_passive(api):
    client, store = api
    store.refuse_writes("this node is a passive; write to the active")
    assert store.writes_refused == "this node is a passive; write to the active"
    assert await _answer(client, "POST", "/api/v3/profiles", {"Name": "p"}) == (
        503, error_body(503, "this node is a passive; write to the active", type_="HA_PASSIVE"))


async def test_an_upload_is_refused_before_its_body_with_model_and_key(api):
    client, store = api
    store.refuse_writes("passive")
    assert await _answer(client, "POST", "/api/v3/files/a/b.txt", "x") == (
        503, error_body(503, "passive", model="files", key="a/b.txt", type_="HA_PASSIVE"))


async def test_not_replicated_is_a_503_ha_unconfirmed(api):
    client, store = api
    seen = []

    async def replicated(seq: int) -> None:
        seen.append(seq)
        raise NotReplicated(f"the write (seq {seq}) is not confirmed")
    store.accept_writes(replicated)
    code, body = await _answer(client, "POST", "/api/v3/profiles", {"Name": "p"})
    assert (code, body) == (503, error_body(503, f"the write (seq {seen[0]}) is not confirmed",
                                            type_="HA_UNCONFIRMED"))
    assert seen == [store.head]


async def test_storage_lost_is_a_500_storage_error(api):
    client, store = api
    store.disk_failure = "a commit could not be made durable; restart dr-provision"
    assert await _answer(client, "POST", "/api/v3/profiles", {"Name": "p"}) == (
        500, error_body(500, store.disk_failure, type_="StorageError"))


async def test_model_errors_keep_their_codes_types_and_keys(api):
    client, _ = api
    assert await _answer(client, "GET", "/api/v3/nosuch") == (
        404, error_body(404, "no such object type: nosuch", model="nosuch"))
    code, body = await _answer(client, "POST", "/api/v3/profiles", {"Name": "p", "Params": 1})
    assert (code, body["Type"], body["Model"], body["Key"]) == (
        422, "ValidationError", "profiles", "p")
    assert body["Messages"] == ["Params must be an object, not integer"]  # JSON type names
    assert await _answer(client, "POST", "/api/v3/profiles", [1]) == (
        422, error_body(422, "profile must be a JSON object", model="profiles"))


def test_the_table_maps_every_lower_exception():
    for err, code, type_ in ((WritesRefused("r"), 503, "HA_PASSIVE"),
                             (NotReplicated("r"), 503, "HA_UNCONFIRMED"),
                             (StorageLost("r"), 500, "StorageError"),
                             (models.UnknownKind("r", model="m"), 404, "API_ERROR"),
                             (models.NotAnObject("r", model="m"), 422, "API_ERROR"),
                             (models.Invalid("r", "s", model="m", key="k"), 422,
                              "ValidationError")):
        answer = api_error(err)
        assert (answer.code, answer.type) == (code, type_)
        assert answer.messages == (err.messages if isinstance(err, models.ObjectError)
                                   else ["r"])


# ---- the write gate and quiesce ----------------------------------------------------------------
class _Held:
    """A mutation that holds the writer (in its worker thread) until released."""

    def __init__(self, key: str):
        self.key, self.inside, self.release = key, threading.Event(), threading.Event()

    def __call__(self, tx):
        self.inside.set()
        assert self.release.wait(10)
        tx.record("profiles", self.key, "create", {"Name": self.key})


async def test_quiesced_waits_for_the_write_inside_the_writer(store):
    held, order = _Held("inside"), []

    async def write_held():
        await store.write(held)
        order.append("write done")

    async def quiesce():
        async with store.quiesced():
            order.append("quiesced")
            assert await store.get("profiles", "inside") is not None

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_held)
        assert await trio.to_thread.run_sync(held.inside.wait, 10)
        nursery.start_soon(quiesce)
        await trio.sleep(0.05)
        assert order == []  # the write is inside: quiesce waits for it
        held.release.set()
    assert order == ["write done", "quiesced"]


async def test_writes_arriving_while_quiesced_wait(store):
    done = []

    async def writer():
        await store.write(put("profiles", "later", {"Name": "later"}))
        done.append("later")
    async with trio.open_nursery() as nursery:
        async with store.quiesced():
            nursery.start_soon(writer)
            await trio.sleep(0.05)
            assert done == [] and await store.get("profiles", "later") is None
    assert done == ["later"]


async def test_refuse_writes_refuses_queued_writes_but_not_internal_ones(store):
    outcomes = {}

    async def writer(key, internal=False):
        try:
            await store.write(put("profiles", key, {"Name": key}), internal=internal)
            outcomes[key] = "ok"
        except WritesRefused as e:
            outcomes[key] = str(e)
    async with trio.open_nursery() as nursery:
        async with store.quiesced():
            nursery.start_soon(writer, "queued")
            nursery.start_soon(writer, "internal", True)
            while len(store._queue) < 2:
                await trio.sleep(0.01)
            store.refuse_writes("now a passive")
    assert outcomes == {"queued": "now a passive", "internal": "ok"}
    with pytest.raises(WritesRefused, match="^now a passive$"):
        await store.write(put("profiles", "after", {"Name": "after"}))
    store.accept_writes()
    assert store.writes_refused is None
    await store.write(put("profiles", "after", {"Name": "after"}))


async def test_a_write_waits_for_the_hook_it_was_taken_under(store):
    """Refusing writes (leaving the active role) does not let a write already in the writer
    return without the replication wait it committed under."""
    waited, held = [], _Held("taken")
    release_hook = trio.Event()

    async def replicated(seq: int) -> None:
        waited.append(seq)
        await release_hook.wait()
    store.accept_writes(replicated)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.write, held)
        assert await trio.to_thread.run_sync(held.inside.wait, 10)
        store.refuse_writes("handing over")
        held.release.set()
        while not waited:
            await trio.sleep(0.01)
        assert waited == [store.head]
        release_hook.set()
    await store.write(put("profiles", "internal", {"Name": "internal"}), internal=True)
    assert waited == [store.head - 1]  # no hook since refuse_writes


# ---- named queries ---------------------------------------------------------------------------
def _blob(path: str, size: int, sha: str = "s", mode: int = 0o644):
    def fn(tx):
        tx.record("blob", path, "put", {"size": size, "sha256": sha, "mode": mode})
    return fn


async def test_named_queries(store, tmp_path):
    await store.write(put("machines", "u1", {"Uuid": "u1", "Name": "m1"}))
    await store.write(put("profiles", "p", {"Name": "p"}))
    await store.write(_blob("plugins/a", 3, mode=0o755))
    await store.write(_blob("files/x_%", 5))
    assert await store.kind_counts() == {"machines": 1, "profiles": 1}
    assert await store.has_any("users", "profiles") and not await store.has_any("users")
    assert [b["path"] for b in await store.blobs()] == ["files/x_%", "plugins/a"]
    [plugin] = await store.blobs("plugins/")
    assert {k: plugin[k] for k in ("path", "size", "sha256", "mode")} == {
        "path": "plugins/a", "size": 3, "sha256": "s", "mode": 0o755}
    assert await store.blobs("files/x_") == [await store.blob("files/x_%")]
    assert await store.blobs("files/y") == [] and await store.blob("files/nope") is None

    def in_tx(tx):
        return (tx.blob("plugins/a")["size"], tx.max_epoch(), tx.has_any("machines"),
                tx.name_taken("machines", "m1", "u2"), tx.name_taken("machines", "m1", "u1"))
    assert await store.write(in_tx) == (3, 1, True, "u1", None)
    snap = tmp_path / "snap.db"
    await store.snapshot_into(snap)
    blobs, objects = snapshot.manifest(snap)
    assert sorted(b[0] for b in blobs) == ["files/x_%", "plugins/a"] and objects == 2


async def test_max_epoch_is_zero_on_an_empty_store(tmp_path):
    store = Store(tmp_path / "empty.db")
    try:
        assert await store.write(lambda tx: tx.max_epoch()) == 0
        assert await store.content_bundle("nothing") is None
    finally:
        store.close()


async def test_content_bundle_reads_record_and_objects_together(store):
    await store.write(put("contents", "b", {"record": {"meta": {"Name": "b"}}, "objects": [
        ["profiles", "p", {"Name": "p", "Bundle": "b"}]]}))
    await store.write(put("profiles", "q", {"Name": "q"}))
    record, rows = await store.content_bundle("b")
    assert record == {"meta": {"Name": "b"}}
    assert [(kind, key) for kind, key, _ in rows] == [("profiles", "p")]
    assert json.loads(rows[0][2])["Bundle"] == "b"


# ---- blob bytes: one owner -------------------------------------------------------------------
async def test_blob_files_install_remove_append_cut(tmp_path):
    files = BlobFiles(tmp_path)
    target = files.target("plugins/tool")
    staged = tmp_path / "staged"
    staged.write_bytes(b"#!/bin/sh\n")
    files.install(staged, "plugins/tool", 0o755)
    assert target.read_bytes() == b"#!/bin/sh\n" and target.stat().st_mode & 0o777 == 0o755
    assert not staged.exists()
    files.append("job-logs/j1", 0, b"one\n")
    files.append("job-logs/j1", 4, b"two\n")
    files.cut("job-logs/j1", 4)
    assert files.target("job-logs/j1").read_bytes() == b"one\n"
    assert files.remove("plugins/tool") is True and files.remove("plugins/tool") is False
    files.target("files/d").mkdir(parents=True)
    staged.write_bytes(b"x")
    with pytest.raises(storage.PathError):
        files.install(staged, "files/d", 0o644)

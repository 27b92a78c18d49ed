"""drp.ha.catchup: the end of a full catch-up, with a real store and real files."""
from __future__ import annotations

from types import SimpleNamespace

import trio

from drp.blob.gate import gate_for
from drp.ha import catchup
from drp.store.store import Store


class RecordingFetcher:
    """Installs staged files as the real one does, noting whether the gate held the path."""

    def __init__(self, store: Store):
        self.gate = gate_for(store)
        self.held_at_install: dict[str, bool] = {}

    async def install(self, staged, dest, mode):
        key = dest.relative_to(dest.parents[1]).as_posix()  # .../tftpboot/files/x -> files/x
        self.held_at_install[key] = self.gate.stamp(key) is None
        await trio.to_thread.run_sync(staged.replace, dest)


async def test_replacements_removals_and_rows_change_inside_the_blob_gate(tmp_path):
    """A reader never pairs an old row with new bytes: the staged replacement, the removal of
    an extra file and the snapshot's rows all happen while the gate holds their paths."""
    base = tmp_path / "node"
    base.mkdir()
    active, store = Store(tmp_path / "active.db"), Store(base / "drp.db")
    try:
        snap = tmp_path / "snap.db"
        await active.snapshot_into(snap)
        files = base / "tftpboot" / "files"
        files.mkdir(parents=True)
        (files / "changed.bin").write_bytes(b"old bytes")
        (files / "extra.bin").write_bytes(b"the active has no such file")
        aside = tmp_path / "aside.staged"
        aside.write_bytes(b"new bytes")
        node = SimpleNamespace(cfg=SimpleNamespace(base_root=base), store=store)
        fetcher = RecordingFetcher(store)
        gate = gate_for(store)
        held_at_install_snapshot = {}
        real_install = store.install_snapshot

        async def install_snapshot(path):
            for key in ("files/changed.bin", "files/extra.bin"):
                held_at_install_snapshot[key] = gate.stamp(key) is None
            assert not (files / "extra.bin").exists()  # removed before the rows change
            await real_install(path)
        store.install_snapshot = install_snapshot
        staged = {"files/changed.bin": (aside, 0o644, "sha-of-new-bytes")}
        await catchup._install(node, fetcher, catchup.LocalBlobs(node), snap, staged,
                               ["files/extra.bin"])
        assert fetcher.held_at_install == {"files/changed.bin": True}
        assert held_at_install_snapshot == {"files/changed.bin": True, "files/extra.bin": True}
        assert staged == {}  # every staged file was put in place
        assert (files / "changed.bin").read_bytes() == b"new bytes"
        assert gate.stamp("files/changed.bin") is not None  # released afterwards
        noted = store.local_get_sync("sha:files/changed.bin")
        assert noted and noted.endswith(":sha-of-new-bytes")
    finally:
        active.close()
        store.close()

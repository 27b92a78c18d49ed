"""A passive applying a batch of replicated entries: the bytes of the blobs it puts fetched aside
first (cancellable: a stop keeps the partial file for the next start), then, shielded, every file
put in place in log order and the rows committed.
"""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import trio

from drp.blob.files import BlobFiles
from drp.blob.gate import gate_for
from drp.ha.progress import Progress
from drp.ha.transfer import Gone

GONE = "gone"  # a blob the active no longer has
BYTES_KINDS = ("blob", "joblog")  # entries that change files as well as rows


class BatchApplier:
    def __init__(self, store, base_root: Path, fetcher):
        self.store, self.fetcher = store, fetcher
        self.files = BlobFiles(base_root)

    async def apply(self, entries: list[dict], progress: Progress | None) -> None:
        """Bytes first (blobs, job-log appends), then the rows. Every blob the batch puts is
        fetched before anything changes on disk: when a fetch fails (the active went away
        mid-batch, its last entries maybe lost with it) or is cancelled (a stop: its partial
        file stays, to be resumed), no file is left without its row, nor a file replaced by
        the bytes of an entry this node never applied. From the first change on disk to the
        commit of the rows the batch is shielded from cancellation, and the paths are held in
        the blob gate, as on the active, so a reader here never pairs a row with bytes it does
        not describe."""
        staged: dict[int, Path | str | None] = {}  # seq of a blob put -> staged file | GONE
        try:
            await self._stage(entries, staged, progress)
            with trio.CancelScope(shield=True), ExitStack() as held:
                gate = gate_for(self.store)
                for path in sorted({e["key"] for e in entries if e["kind"] in BYTES_KINDS}):
                    held.enter_context(gate.writing(path))
                for entry in entries:  # on disk, in order
                    await self._apply_bytes(entry, staged)
                await self.store.apply_replicated(entries)
        finally:
            for left in staged.values():  # a failed batch: nothing of it is put in place
                if isinstance(left, Path):
                    left.unlink(missing_ok=True)

    async def _stage(self, entries: list[dict], staged: dict,
                     progress: Progress | None) -> None:
        """Fetch aside the bytes of every blob the batch puts that this node lacks (staged:
        the file, or GONE when the active no longer has it, or None when we hold it already),
        counted in the replay's progress."""
        touched: set[str] = set()  # blob paths an earlier entry of this batch puts or deletes
        need = []
        for entry in entries:
            if entry["kind"] != "blob":
                continue
            if entry["action"] == "put":
                if entry["key"] in touched or not await self._held(entry["key"], entry["body"]):
                    need.append(entry)
                else:
                    staged[entry["seq"]] = None
            touched.add(entry["key"])
        if progress is not None:
            progress.files_total += len(need)
            progress.bytes_total += sum(e["body"]["size"] for e in need)
        for entry in need:
            meta = entry["body"]
            try:
                staged[entry["seq"]] = (await self.fetcher.stage_blob(
                    entry["key"], meta["sha256"], meta["size"], progress))[2]
            except Gone:
                staged[entry["seq"]] = GONE
            if progress is not None:
                progress.files_done += 1

    async def _apply_bytes(self, entry: dict, staged: dict) -> None:
        kind, key, body = entry["kind"], entry["key"], entry["body"]
        if kind == "blob":
            got = staged.pop(entry["seq"], None) if entry["action"] == "put" else GONE
            if got == GONE:  # a delete, or deleted on the active since the put
                await trio.to_thread.run_sync(self.files.remove, key)
            elif got is not None:
                await trio.to_thread.run_sync(self.files.install, got, key,
                                              body.get("mode", 0o644))
        elif kind == "joblog":
            await trio.to_thread.run_sync(self.files.append, key, body["offset"], entry["data"])

    async def _held(self, path: str, meta: dict) -> bool:
        """This node holds that version of the blob already (its row and file say so)."""
        have = await self.store.blob(path)
        target = self.files.target(path)
        return bool(have and have["sha256"] == meta["sha256"] and target.exists()
                    and target.stat().st_size == meta["size"])

"""drp.blob.storage and drp.blob.gate without a server: the helpers the replica reuses."""
from __future__ import annotations

import hashlib
import os
import time

import pytest
import trio

from drp.blob import storage
from drp.blob.files import BlobFiles
from drp.blob.gate import BlobGate
from drp.blob.storage import PathError


async def _chunks(*pieces: bytes):
    for piece in pieces:
        await trio.sleep(0)
        yield piece


def test_disk_path_mapping(tmp_path):
    assert storage.disk_path(tmp_path, "files/a/b.txt") == tmp_path / "tftpboot/files/a/b.txt"
    assert storage.disk_path(tmp_path, "isos/x.iso") == tmp_path / "tftpboot/isos/x.iso"
    assert storage.disk_path(tmp_path, "plugins/p") == tmp_path / "plugins/p"
    assert storage.disk_path(tmp_path, "job-logs/u") == tmp_path / "job-logs/u"
    for bad in ("files/../x", "files//x", "files/", "isos/a/b", "plugins/a/b", "nope/x",
                "files/a\x00b", "files/.x.drp-tmp-1", "/files/x", "job-logs/.."):
        with pytest.raises(PathError) as e:
            storage.disk_path(tmp_path, bad)
        assert e.value.code == 400, bad


def test_clean_relpath():
    assert storage.clean_relpath("a/b c/d") == "a/b c/d"
    assert storage.clean_relpath("", allow_empty=True) == ""
    for bad in ("", "/abs", "a/../b", "./a", "a/", "a//b", "x\x00"):
        with pytest.raises(PathError):
            storage.clean_relpath(bad)


def test_check_inside_follows_symlinks(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (root / "esc").symlink_to(tmp_path / "out")
    (root / "ok").symlink_to(root / "d")
    storage.check_inside(root, root / "ok/new/file")
    storage.check_inside(root, root / "d/x")
    for bad in (root / "esc", root / "esc/new/deeper"):
        with pytest.raises(PathError) as e:
            storage.check_inside(root, bad)
        assert e.value.code == 403


async def test_stage_install_and_failure_cleanup(tmp_path):
    target = storage.prepare_target(tmp_path, "files/x/y.bin")
    data = [os.urandom(700_000), os.urandom(900_000), b"tail"]
    staged = await storage.stage(target, _chunks(*data))
    assert staged.path.parent == target.parent and storage.is_temp(staged.path.name)
    assert staged.size == sum(map(len, data))
    assert staged.sha256 == hashlib.sha256(b"".join(data)).hexdigest()
    assert not target.exists()  # nothing visible before install
    BlobFiles(tmp_path).install(staged, "files/x/y.bin", 0o755)
    assert target.read_bytes() == b"".join(data) and target.stat().st_mode & 0o777 == 0o755
    assert storage.file_sha256(target) == (staged.size, staged.sha256)
    storage.discard(staged)  # a no-op once installed
    assert target.exists()

    async def broken():
        yield b"partial"
        raise ConnectionError("client went away")
    with pytest.raises(ConnectionError):
        await storage.stage(target, broken())
    assert [p.name for p in target.parent.iterdir()] == ["y.bin"]
    assert storage.remove(target) is True and storage.remove(target) is False


async def test_stage_resume_continues_a_partial_temp(tmp_path):
    target = storage.prepare_target(tmp_path, "isos/r.iso")
    first = await storage.stage(target, _chunks(b"hello "))
    resumed = await storage.stage(target, _chunks(b"world"), resume=first.path)
    assert resumed.path == first.path and resumed.size == 11
    assert resumed.sha256 == hashlib.sha256(b"hello world").hexdigest()


def test_append_at_truncates_a_torn_tail(tmp_path):
    log = tmp_path / "job-logs/j"
    storage.append_at(log, 0, b"one\n")
    storage.append_at(log, 4, b"two\n")
    with open(log, "ab") as f:
        f.write(b"torn")
    storage.append_at(log, 8, b"three\n")
    assert log.read_bytes() == b"one\ntwo\nthree\n"


def test_sweep_temps_spares_running_transfers(tmp_path):
    isos = tmp_path / "tftpboot/isos"
    isos.mkdir(parents=True)
    old, new = isos / ".a.drp-tmp-1", isos / ".b.drp-tmp-2"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (time.time() - 60, time.time() - 60))
    (isos / "real.iso").write_bytes(b"z")
    assert storage.sweep_temps(tmp_path, older_than=time.time() - 30) == 1
    assert sorted(p.name for p in isos.iterdir()) == [new.name, "real.iso"]


async def test_gate_retries_reads_that_overlap_a_write():
    gate, reads = BlobGate(), []

    async def read():
        reads.append(1)
        if len(reads) == 1:
            with gate.writing("files/x"):  # a put lands while the reader is between steps
                await trio.sleep(0)
        return len(reads)
    assert await gate.stable("files/x", read) == 2
    assert gate.stamp("files/x") is not None


@pytest.mark.parametrize("path, url", [("files/boot/a b.ipxe", "/files/boot/a b.ipxe"),
                                       ("isos/x.iso", "/isos/x.iso"),
                                       ("plugins/p", None), ("job-logs/j1", None)])
def test_static_url_names_only_what_the_static_port_serves(path, url):
    assert storage.static_url(path) == url
    if url is not None:  # and back: the static server finds the blob's row from its URL
        assert storage.static_blob(url.lstrip("/")) == path


@pytest.mark.parametrize("rel", ["files", "files/", "isos/a/b.iso", "isos/../x", "plugins/p",
                                 "job-logs/j1", "boot/x", "", "files/../../etc/passwd"])
def test_static_blob_is_none_for_what_names_no_blob(rel):
    assert storage.static_blob(rel) is None

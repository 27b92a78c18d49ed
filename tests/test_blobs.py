"""Files, ISOs, plugin providers and job logs through a real dr-provision process."""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.blobutil import blob_row, changes, drpcli_bytes, raw_request, temp_files


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_file_round_trip_and_change_rows(drp):
    data = os.urandom(3_000_000 + 17)
    with drp.client() as c:
        r = c.post("/files/boot/sub dir/k.img", content=data,
                   headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        assert r.json() == {"Path": "/boot/sub dir/k.img", "Size": len(data), "Sha256": sha(data)}
        r = c.get("/files/boot/sub dir/k.img")
        assert r.status_code == 200 and sha(r.content) == sha(data)
        assert r.headers["ETag"] == f'"SHA256:{sha(data)}"'
        assert r.headers["X-DRP-SHA256SUM"] == sha(data)
        head = c.head("/files/boot/sub dir/k.img")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["Content-Length"] == str(len(data))
        assert c.get("/files", params={"path": "/"}).json() == ["boot/"]
        assert c.get("/files", params={"path": "boot"}).json() == ["sub dir/"]
        assert c.get("/files", params={"path": "/boot/sub dir"}).json() == ["k.img"]
        assert c.get("/files", params={"path": "nope"}).status_code == 404

    on_disk = drp.base_root / "tftpboot/files/boot/sub dir/k.img"
    assert on_disk.read_bytes() == data
    assert blob_row(drp, "files/boot/sub dir/k.img") == {"size": len(data), "sha256": sha(data),
                                                          "mode": 0o644}
    [put] = changes(drp, "blob")
    assert (put["key"], put["action"]) == ("files/boot/sub dir/k.img", "put")
    assert put["body"] == {"size": len(data), "sha256": sha(data), "mode": 0o644}
    assert put["data"] is None  # blob bytes live on disk, not in the log

    with drp.client() as c:
        assert c.delete("/files/boot/sub dir/k.img").status_code == 204
        r = c.get("/files/boot/sub dir/k.img")
        assert r.status_code == 404 and r.json()["Type"] == "NotFound"
        assert c.delete("/files/boot/sub dir/k.img").status_code == 404
    assert not on_disk.exists() and blob_row(drp, "files/boot/sub dir/k.img") is None
    put, delete = changes(drp, "blob")
    assert (delete["key"], delete["action"], delete["seq"]) == (
        "files/boot/sub dir/k.img", "delete", put["seq"] + 1)


def test_range_if_none_match_and_if_range(drp):
    data = bytes(range(256)) * 40
    etag = f'"SHA256:{sha(data)}"'
    with drp.client() as c:
        assert c.post("/files/r.bin", content=data).status_code == 201
        r = c.get("/files/r.bin", headers={"Range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == data[10:20]
        assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
        r = c.get("/files/r.bin", headers={"Range": "bytes=10000-"})
        assert r.status_code == 206 and r.content == data[10000:]
        r = c.get("/files/r.bin", headers={"Range": "bytes=-7"})
        assert r.status_code == 206 and r.content == data[-7:]
        r = c.get("/files/r.bin", headers={"Range": f"bytes={len(data)}-"})
        assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(data)}"
        assert r.json()["Code"] == 416
        r = c.get("/files/r.bin", headers={"If-None-Match": etag})
        assert r.status_code == 304 and r.content == b"" and r.headers["ETag"] == etag
        assert c.get("/files/r.bin", headers={"If-None-Match": '"SHA256:00"'}).status_code == 200
        # If-Range: the range applies only while the validator matches (resumed transfers)
        r = c.get("/files/r.bin", headers={"Range": "bytes=5-", "If-Range": etag})
        assert r.status_code == 206 and r.content == data[5:]
        r = c.get("/files/r.bin", headers={"Range": "bytes=5-", "If-Range": '"SHA256:00"'})
        assert r.status_code == 200 and r.content == data
        # Files up to 64 KiB are read whole when opened; larger ones are streamed: both range.
        big = os.urandom(200_000)
        assert c.post("/files/big.bin", content=big).status_code == 201
        r = c.get("/files/big.bin", headers={"Range": "bytes=70000-70009"})
        assert r.status_code == 206 and r.content == big[70000:70010]
        assert c.get("/files/big.bin").content == big


def test_isos_and_plugin_providers(drp):
    iso, plugin = os.urandom(200_000), b"#!/bin/sh\necho plugin\n"
    with drp.client() as c:
        r = c.post("/isos/ubuntu.iso", content=iso)
        assert r.status_code == 201 and r.json()["Sha256"] == sha(iso)
        assert c.get("/isos").json() == ["ubuntu.iso"]
        assert c.get("/isos/ubuntu.iso").content == iso
        r = c.post("/isos/a/b.iso", content=b"x")
        assert r.status_code == 400 and r.json()["Model"] == "isos"
        r = c.post("/plugin_providers/myplugin", content=plugin)
        assert r.status_code == 201, r.text
        assert r.json()["Name"] == "myplugin" and r.json()["Sha256"] == sha(plugin)
        assert [p["Name"] for p in c.get("/plugin_providers").json()] == ["myplugin"]
        assert c.get("/plugin_providers/myplugin").json()["Size"] == len(plugin)
        assert c.get("/plugin_providers/myplugin/binary").content == plugin
        assert c.get("/plugin_providers/other").status_code == 404
    assert (drp.base_root / "tftpboot/isos/ubuntu.iso").read_bytes() == iso
    binary = drp.base_root / "plugins/myplugin"
    assert binary.read_bytes() == plugin and binary.stat().st_mode & 0o777 == 0o755
    keys = [(r["key"], r["action"], r["body"]["mode"]) for r in changes(drp, "blob")]
    assert keys == [("isos/ubuntu.iso", "put", 0o644), ("plugins/myplugin", "put", 0o755)]
    with drp.client() as c:
        assert c.delete("/plugin_providers/myplugin").json()["Name"] == "myplugin"
        assert c.delete("/isos/ubuntu.iso").status_code == 204
        assert c.get("/plugin_providers").json() == [] and c.get("/isos").json() == []
    assert not binary.exists()
    assert [(r["key"], r["action"]) for r in changes(drp, "blob")][2:] == [
        ("plugins/myplugin", "delete"), ("isos/ubuntu.iso", "delete")]


def test_job_log_appends_in_order(drp):
    with drp.client() as c:
        job = c.post("/jobs", json={"Machine": "m1"}).json()["Uuid"]
        pieces = [f"line {i}\n".encode() for i in range(20)]
        for piece in pieces:
            assert c.put(f"/jobs/{job}/log", content=piece).status_code == 204
        big = os.urandom(2_500_000)  # more than one change-log entry's worth
        assert c.put(f"/jobs/{job}/log", content=big).status_code == 204
        whole = b"".join(pieces) + big
        r = c.get(f"/jobs/{job}/log")
        assert r.status_code == 200 and r.content == whole
        r = c.get(f"/jobs/{job}/log", headers={"Range": "bytes=7-13"})
        assert r.status_code == 206 and r.content == whole[7:14]
        other = c.post("/jobs", json={"Machine": "m1"}).json()["Uuid"]
        assert c.get(f"/jobs/{other}/log").content == b""
        missing = "00000000-0000-4000-8000-000000000000"
        assert c.put(f"/jobs/{missing}/log", content=b"x").status_code == 404
        assert c.get(f"/jobs/{missing}/log").status_code == 404
    assert (drp.base_root / "job-logs" / job).read_bytes() == whole
    rows = changes(drp, "joblog")
    assert all(r["key"] == f"job-logs/{job}" and r["action"] == "append" for r in rows)
    offset = 0
    for row in rows:  # each row is exactly the appended range: offset, length, bytes
        assert row["body"]["offset"] == offset and row["body"]["length"] == len(row["data"])
        assert row["data"] == whole[offset:offset + len(row["data"])]
        assert len(row["data"]) <= 1 << 20
        offset += len(row["data"])
    assert offset == len(whole) and len(rows) == 20 + 3
    assert blob_row(drp, f"job-logs/{job}")["size"] == len(whole)


def test_concurrent_job_log_appends_are_whole_and_contiguous(drp):
    with drp.client() as c:
        job = c.post("/jobs", json={"Machine": "m1"}).json()["Uuid"]

    def writer(n):
        with drp.client() as c:
            for i in range(10):
                c.put(f"/jobs/{job}/log", content=f"<{n}:{i}>".encode() * 50)
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with drp.client() as c:
        log = c.get(f"/jobs/{job}/log").content
    rows = changes(drp, "joblog")
    assert b"".join(r["data"] for r in rows) == log and len(rows) == 40
    for n in range(4):  # each writer's appends are whole and in its own order
        positions = [log.index(f"<{n}:{i}>".encode() * 50) for i in range(10)]
        assert positions == sorted(positions)


def test_file_and_directory_clashes_are_conflicts(drp):
    with drp.client() as c:
        assert c.get("/files").json() == []  # nothing uploaded yet
        assert c.post("/files/a", content=b"file").status_code == 201
        r = c.post("/files/a/b", content=b"below a file")
        assert r.status_code == 409 and "parent" in r.json()["Messages"][0]
        assert c.post("/files/d/x", content=b"x").status_code == 201
        assert c.post("/files/d", content=b"over a directory").status_code == 409
        assert c.delete("/files/d").status_code == 409
        assert c.get("/files/d").status_code == 404  # directories are listed, not served
    assert (drp.base_root / "tftpboot/files/a").read_bytes() == b"file"
    assert temp_files(drp.base_root) == [] and len(changes(drp, "blob")) == 2


def test_upload_checksum_header_mismatch_stores_nothing(drp):
    with drp.client() as c:
        r = c.post("/files/x.bin", content=b"hello", headers={"X-DRP-SHA256SUM": "00" * 32})
        assert r.status_code == 422
        assert c.get("/files/x.bin").status_code == 404
        r = c.post("/files/x.bin", content=b"hello", headers={"X-DRP-SHA256SUM": sha(b"hello")})
        assert r.status_code == 201
    assert temp_files(drp.base_root) == [] and len(changes(drp, "blob")) == 1


@pytest.mark.parametrize("target,code", [
    ("/api/v3/files/../../drp.db", 400),
    ("/api/v3/files/%2e%2e/%2e%2e/drp.db", 400),
    ("/api/v3/files/a/../../../etc/passwd", 400),
    ("/api/v3/files/%2Fetc%2Fpasswd", 400),
    ("/api/v3/files//etc/passwd", 400),
    ("/api/v3/files/a%00b", 400),
    ("/api/v3/isos/..%2F..%2Fdrp.db", 400),
    ("/api/v3/files?path=../..", 400),
    ("/api/v3/files?path=%2e%2e", 400),
])
def test_traversal_refused_by_api(drp, target, code):
    for method in ("GET", "POST", "DELETE"):
        status, headers, body = raw_request("127.0.0.1", drp.api_port, target, method=method,
                                            tls=True, body=b"evil" if method == "POST" else b"")
        if method != "GET" and "?" in target:
            continue  # the list route is GET only
        assert status == code, (method, target, body)
        assert b'"Messages"' in body and headers["content-type"] == "application/json"
    assert not (drp.base_root.parent / "drp.db").exists()
    assert (drp.base_root / "drp.db").stat().st_size > 0


def test_symlinks_out_of_the_root_are_refused(drp, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    files = drp.base_root / "tftpboot/files"
    files.mkdir(parents=True, exist_ok=True)
    (files / "escape").symlink_to(outside)
    (files / "leak").symlink_to(outside / "secret")
    (files / "real.txt").write_text("fine")
    (files / "inside").symlink_to(files / "real.txt")
    with drp.client() as c:
        for r in (c.get("/files/escape/secret"), c.get("/files/leak"),
                  c.post("/files/escape/new", content=b"x"), c.post("/files/escape/d/new",
                                                                   content=b"x"),
                  c.delete("/files/leak"), c.get("/files", params={"path": "escape"})):
            assert r.status_code == 403, r.text
            assert "symlink" in r.json()["Messages"][0]
        assert c.get("/files/inside").content == b"fine"  # a link that stays inside is fine
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_text() == "secret"


def test_cut_off_upload_leaves_nothing(drp):
    sock = socket.create_connection(("127.0.0.1", drp.api_port))
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    tls = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    import base64
    auth = base64.b64encode(b"rocketskates:r0cketsk8ts").decode()
    tls.sendall(f"POST /api/v3/isos/cut.iso HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}"
                f"\r\nContent-Length: {64 << 20}\r\n\r\n".encode())
    chunk = os.urandom(1 << 20)
    for _ in range(6):
        tls.sendall(chunk)
    isos = drp.base_root / "tftpboot/isos"
    deadline = time.monotonic() + 10
    while not temp_files(isos) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert temp_files(isos), "the upload should be streaming into a temp file"
    tls.close()
    deadline = time.monotonic() + 10
    while temp_files(isos) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(isos.iterdir()) == []
    assert blob_row(drp, "isos/cut.iso") is None and changes(drp, "blob") == []
    with drp.client() as c:  # the server is fine and the name is free
        assert c.get("/isos/cut.iso").status_code == 404
        assert c.post("/isos/cut.iso", content=b"whole").status_code == 201


def test_concurrent_uploads_to_one_path_leave_one_whole_version(drp):
    versions = [bytes([n]) * (1_500_000 + n) for n in range(6)]

    def put(data):
        with drp.client() as c:
            assert c.post("/files/same.bin", content=data).status_code == 201
    threads = [threading.Thread(target=put, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = (drp.base_root / "tftpboot/files/same.bin").read_bytes()
    assert final in versions
    rows = changes(drp, "blob", "files/same.bin")
    assert len(rows) == 6
    # rename order == change-log order: the last logged put is what is on disk and recorded
    assert rows[-1]["body"]["sha256"] == sha(final) == blob_row(drp, "files/same.bin")["sha256"]
    with drp.client() as c:
        r = c.get("/files/same.bin")
        assert r.content == final and r.headers["X-DRP-SHA256SUM"] == sha(final)
    assert temp_files(drp.base_root) == []


def test_upload_streams_in_constant_memory(drp):
    size = 384 << 20
    status = Path(f"/proc/{drp.proc.pid}/status")

    def hwm() -> int:
        line = next(ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM"))
        return int(line.split()[1]) * 1024

    block = os.urandom(1 << 20)
    before = hwm()
    with drp.client(timeout=httpx.Timeout(60, read=None, write=None)) as c:
        r = c.post("/isos/big.iso", content=(block for _ in range(size >> 20)),
                   headers={"Content-Length": str(size)})
        assert r.status_code == 201 and r.json()["Size"] == size
        with c.stream("GET", "/isos/big.iso") as resp:
            got = sum(len(ch) for ch in resp.iter_raw(1 << 20))
        assert got == size
    growth = hwm() - before
    assert growth < 64 << 20, f"server peak RSS grew by {growth >> 20} MiB for a 384 MiB file"


def test_a_client_that_hangs_up_before_the_reply_leaves_no_file_open(drp):
    """A GET whose client is gone before its response starts: the handler is cancelled before
    Quart reads the body; the file it opened must be closed all the same (an operator's
    script that gives up, a passive switching roles: each used to leak one descriptor)."""
    with drp.client() as c:
        assert c.post("/files/big.bin", content=os.urandom(1 << 20)).status_code == 201
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    auth = base64.b64encode(b"rocketskates:r0cketsk8ts").decode()
    for _ in range(10):
        with ctx.wrap_socket(socket.create_connection((drp.host, drp.api_port))) as tls:
            tls.sendall(f"GET /api/v3/files/big.bin HTTP/1.1\r\nHost: x\r\n"
                        f"Authorization: Basic {auth}\r\n\r\n".encode())

    def held() -> int:
        count = 0
        for fd in Path(f"/proc/{drp.proc.pid}/fd").iterdir():
            try:
                count += os.readlink(fd).endswith("/big.bin")
            except FileNotFoundError:  # closed while we looked
                pass
        return count
    deadline = time.monotonic() + 10
    while held() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert held() == 0
    with drp.client() as c:  # and the server serves it as before
        assert len(c.get("/files/big.bin").content) == 1 << 20


def test_restart_keeps_everything(drp_factory):
    drp = drp_factory("keep")
    data = os.urandom(100_000)
    with drp.client() as c:
        c.post("/files/k/file.bin", content=data)
        job = c.post("/jobs", json={"Machine": "m"}).json()["Uuid"]
        c.put(f"/jobs/{job}/log", content=b"before restart\n")
    drp.kill()  # no graceful shutdown: everything acknowledged must be durable already
    drp.start()
    with drp.client() as c:
        r = c.get("/files/k/file.bin")
        assert r.content == data and r.headers["X-DRP-SHA256SUM"] == sha(data)
        c.put(f"/jobs/{job}/log", content=b"after\n")
        assert c.get(f"/jobs/{job}/log").content == b"before restart\nafter\n"
    assert drp.stop() == 0


def test_job_log_torn_tail_is_dropped(drp_factory):
    drp = drp_factory("torn")
    with drp.client() as c:
        job = c.post("/jobs", json={"Machine": "m"}).json()["Uuid"]
        c.put(f"/jobs/{job}/log", content=b"committed\n")
    drp.kill()
    with open(drp.base_root / "job-logs" / job, "ab") as f:  # a crash mid-append
        f.write(b"torn garbage")
    drp.start()
    with drp.client() as c:
        assert c.get(f"/jobs/{job}/log").content == b"committed\n"
        c.put(f"/jobs/{job}/log", content=b"next\n")
        assert c.get(f"/jobs/{job}/log").content == b"committed\nnext\n"
    assert (drp.base_root / "job-logs" / job).read_bytes() == b"committed\nnext\n"



def test_ha_blobs_serves_what_the_store_records(drp):
    """/api/v3/ha/blobs (what a catching-up passive fetches): the bytes with their sha256, a
    job log only up to its recorded size, 404 for what is not a file."""
    data = os.urandom(100_000)
    with drp.client() as c:
        c.post("/files/pxe/k.img", content=data).raise_for_status()
        job = c.post("/jobs", json={"Machine": "m"}).json()["Uuid"]
        c.put(f"/jobs/{job}/log", content=b"committed\n").raise_for_status()
        r = c.get("/ha/blobs/files/pxe/k.img")
        assert r.status_code == 200 and r.content == data
        assert r.headers["X-DRP-SHA256SUM"] == sha(data)
        with open(drp.base_root / "job-logs" / job, "ab") as f:  # an append not yet committed
            f.write(b"in flight")
        r = c.get(f"/ha/blobs/job-logs/{job}")
        assert r.status_code == 200 and r.content == b"committed\n"
        for missing in ("files/pxe/nope", "files/pxe/k.img/under-a-file", "files/pxe"):
            r = c.get(f"/ha/blobs/{missing}")
            assert r.status_code == 404 and r.json()["Model"] == "ha", missing

def test_stale_temp_files_are_swept_at_start(drp_factory):
    drp = drp_factory("sweep", start=False)
    isos = drp.base_root / "tftpboot/isos"
    isos.mkdir(parents=True)
    (isos / ".x.iso.drp-tmp-abc123").write_bytes(b"partial")
    (isos / "keep.iso").write_bytes(b"keep")
    drp.start()
    assert sorted(p.name for p in isos.iterdir()) == ["keep.iso"]


def test_drpcli_files_isos_and_plugin_providers(drp, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(2_000_000))
    out = drp.drpcli("files", "upload", str(src), "as", "/pxe/src.bin")
    assert '"Sha256": "' + sha(src.read_bytes()) in out.stdout and out.stderr == ""
    assert '"pxe/"' in drp.drpcli("files", "list").stdout
    assert '"src.bin"' in drp.drpcli("files", "list", "pxe").stdout
    assert drp.drpcli("files", "exists", "pxe/src.bin").stdout == ""
    missing = drp.drpcli("files", "exists", "pxe/nope", check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    dest = tmp_path / "back.bin"
    drp.drpcli("files", "download", "pxe/src.bin", "to", str(dest))
    assert dest.read_bytes() == src.read_bytes()
    piped = drpcli_bytes(drp, "files", "download", "pxe/src.bin", "to", "-")
    assert piped.stdout == src.read_bytes() and piped.stderr == b""  # nothing extra when piped
    assert drp.drpcli("files", "destroy", "pxe/src.bin").stdout.strip() == \
        "Deleted file pxe/src.bin"
    assert drp.drpcli("isos", "upload", str(src), "as", "x.iso").returncode == 0
    assert '"x.iso"' in drp.drpcli("isos", "list").stdout
    drp.drpcli("isos", "download", "x.iso", "to", str(tmp_path / "x.iso"))
    assert (tmp_path / "x.iso").read_bytes() == src.read_bytes()
    assert drp.drpcli("isos", "destroy", "x.iso").stdout.strip() == "Deleted iso x.iso"
    up = drp.drpcli("plugin_providers", "upload", "p1", "from", str(src))
    assert '"Name": "p1"' in up.stdout
    assert '"p1"' in drp.drpcli("plugin_providers", "list").stdout
    assert '"Size": 2000000' in drp.drpcli("plugin_providers", "show", "p1").stdout
    assert drp.drpcli("plugin_providers", "destroy", "p1").returncode == 0
    bad = drp.drpcli("files", "upload", str(src), "as", "../x", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("Error: 400")


def test_drpcli_job_logs(drp, tmp_path):
    job = drp.client().post("/jobs", json={"Machine": "m"}).json()["Uuid"]
    drp.drpcli("jobs", "log-append", job, "-", input="from stdin\n")
    (tmp_path / "part").write_text("from a file\n")
    drp.drpcli("jobs", "log-append", job, str(tmp_path / "part"))
    assert drp.drpcli("jobs", "log", job).stdout == "from stdin\nfrom a file\n"


def test_deleting_a_job_deletes_its_log(drp):
    with drp.client() as c:
        machine = c.post("/machines", json={"Name": "jl"}).json()["Uuid"]
        job = c.post("/jobs", json={"Machine": machine}).json()["Uuid"]
        c.put(f"/jobs/{job}/log", content=b"hello\n").raise_for_status()
        log = drp.base_root / "job-logs" / job
        assert log.read_bytes() == b"hello\n"
        assert c.delete(f"/jobs/{job}").status_code == 200
        assert not log.exists()
        assert c.get(f"/jobs/{job}/log").status_code == 404
    import sqlite3
    db = sqlite3.connect(drp.base_root / "drp.db")
    rows = db.execute("SELECT kind, key, action FROM changes ORDER BY seq DESC LIMIT 2").fetchall()
    assert rows == [("blob", f"job-logs/{job}", "delete"), ("jobs", job, "delete")]

"""Issue 18 item 5: a full disk is 507 Insufficient Storage with the reason, nothing partial is
left, and the node keeps serving once there is space again (it is not a failed flush after
COMMIT, which stops the node)."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.drpserver import DrpServer
from tests.test_api import assert_error

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, unmounted at the end."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _files_on(mount) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), mount)
                  for d, _, names in os.walk(mount) for n in names)


def test_disk_full_is_507_and_the_node_keeps_serving(small_disk, tmp_path):
    server = DrpServer(small_disk / "root")
    server.log_path = tmp_path / "drp.log"  # the log must not take the small disk's space
    server.start()
    try:
        with server.client() as c:
            before = _files_on(small_disk)
            # An upload bigger than the disk: refused while its bytes are written.
            r = c.post("/files/big.img", content=b"x" * (3 << 20))
            err = assert_error(r, 507, "files")
            assert err["Type"] == "StorageError"
            assert "No space left on device" in err["Messages"][0]
            assert _files_on(small_disk) == before  # no temp file left behind
            assert c.get("/files/big.img").status_code == 404
            # Fill what is left: a file to free later, then objects until SQLite is full.
            assert c.post("/files/filler", content=b"y" * (600 << 10)).status_code == 201
            stored = 0
            for i in range(100):
                r = c.post("/machines", json={"Name": f"m{i}", "Params": {"pad": "z" * 100_000}})
                if r.status_code != 201:
                    break
                stored += 1
            err = assert_error(r, 507, "machines")
            assert err["Type"] == "StorageError" and "full" in err["Messages"][0]
            assert len(c.get("/machines").json()) == stored  # the refused one is not there
            # Space is back: the same node takes writes again (no restart).
            assert c.delete("/files/filler").status_code == 204
            r = c.post("/machines", json={"Name": "after"})
            assert r.status_code == 201, r.text
            assert len(c.get("/machines", params={"Name": "after"}).json()) == 1
            assert c.post("/files/small", content=b"s" * 1000).status_code == 201
        assert server.proc.poll() is None
    finally:
        server.stop()
        server.log.close()
    logs = server.logs()
    assert "disk full" in logs and "Traceback" not in logs, logs[-3000:]
    assert "could not be made durable" not in logs

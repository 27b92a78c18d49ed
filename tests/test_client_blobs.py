"""RackN's Python client (drppy-client) against a real drp: FilesApi and IsosApi (issue 16):
upload, list, download, head, delete, and the 404 after it."""
from __future__ import annotations

from drppy_client import ContentsApi, FilesApi, IsosApi
from drppy_client.models import BlobInfo, Content, ContentMetaData, ContentSummary

from tests.drppy import drppy, refusal_status  # noqa: F401  (the fixture)

PAYLOAD = "kernel bytes\n" * 100


def test_client_cannot_send_bytes(drppy):
    # The client is wrong for binary bodies: its rest.py sends a body with
    # application/octet-stream only when it is a str (bytes raise "Cannot prepare a request
    # message", status 0, before anything is sent), so the tests below upload text.
    assert refusal_status(lambda: drppy.api(FilesApi).upload_file("x.bin", body=b"\x00\x01")) == 0


def test_files_upload_list_get_head_delete(drppy):
    files = drppy.api(FilesApi)
    info = files.upload_file("boot/vmlinuz", body=PAYLOAD)
    assert isinstance(info, BlobInfo)  # dr-provision's BlobInfo is {Path, Size}
    assert (info.path, info.size) == ("/boot/vmlinuz", len(PAYLOAD))
    assert files.list_files() == ["boot/"]  # a directory listing, subdirectories with '/'
    assert files.list_files(path="boot") == ["vmlinuz"]
    got = files.get_file("boot/vmlinuz", _preload_content=False)
    assert got.data == PAYLOAD.encode()
    assert got.headers["Content-Type"].startswith("application/octet-stream")
    assert got.headers["Content-Length"] == str(len(PAYLOAD))
    files.head_file("boot/vmlinuz")
    files.delete_file("boot/vmlinuz")
    assert refusal_status(lambda: files.head_file("boot/vmlinuz")) == 404
    assert refusal_status(lambda: files.get_file("boot/vmlinuz")) == 404
    assert refusal_status(lambda: files.delete_file("boot/vmlinuz")) == 404


def test_isos_upload_list_get_head_delete(drppy):
    isos = drppy.api(IsosApi)
    info = isos.upload_iso("tiny.iso", body=PAYLOAD)
    assert isinstance(info, BlobInfo) and (info.path, info.size) == ("tiny.iso", len(PAYLOAD))
    assert isos.list_isos() == ["tiny.iso"]
    assert isos.get_iso("tiny.iso", _preload_content=False).data == PAYLOAD.encode()
    drppy.api(FilesApi).head_iso("tiny.iso")  # the client puts HEAD /isos/{path} on FilesApi
    isos.delete_iso("tiny.iso")
    assert isos.list_isos() == []
    assert refusal_status(lambda: drppy.api(FilesApi).head_iso("tiny.iso")) == 404
    assert refusal_status(lambda: isos.get_iso("tiny.iso")) == 404


# ---- contents ---------------------------------------------------------------------------------
def test_contents_create_list_get_delete(drppy):
    contents = drppy.api(ContentsApi)
    bundle = Content(meta=ContentMetaData(name="tiny", version="v1.0.0", description="a test"),
                     sections={"params": {"tiny-param": {"Name": "tiny-param",
                                                         "Schema": {"type": "string"}}}})
    summary = contents.create_content(body=bundle)
    assert isinstance(summary, ContentSummary)
    assert summary.meta.name == "tiny" and summary.meta.version == "v1.0.0"
    assert summary.counts == {"params": 1} and not summary.warnings
    listed = contents.list_contents()
    assert all(isinstance(s, ContentSummary) for s in listed)
    assert "tiny" in [s.meta.name for s in listed]
    got = contents.get_content("tiny")
    assert isinstance(got, Content) and got.meta.name == "tiny"
    assert got.sections["params"]["tiny-param"]["Name"] == "tiny-param"
    again = contents.upload_content("tiny", body=Content(
        meta=ContentMetaData(name="tiny", version="v1.0.1"), sections={}))
    assert isinstance(again, ContentSummary) and again.meta.version == "v1.0.1"
    misnamed = Content(meta=ContentMetaData(name="other"), sections={})
    assert refusal_status(lambda: contents.upload_content("tiny", body=misnamed)) == 422
    contents.delete_content("tiny")
    assert "tiny" not in [s.meta.name for s in contents.list_contents()]
    assert refusal_status(lambda: contents.get_content("tiny")) == 404
    assert refusal_status(lambda: contents.delete_content("tiny")) == 404

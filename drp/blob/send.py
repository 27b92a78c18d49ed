"""Streaming a blob back as an HTTP response: ETag/X-DRP-SHA256SUM, If-None-Match, Range, HEAD.

Shared by the API (/files, /isos, plugin binaries, job logs) and the static file server.
"""
from __future__ import annotations

import json
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from quart_trio.wrappers.response import TrioResponse as Response
from quart.wrappers.response import ResponseBody
from werkzeug.http import parse_etags, parse_if_range_header, parse_range_header

from drp.blob import storage
from drp.blob.gate import gate_for
from drp.errors import error_body
from drp.store import queries


# Files up to this size are read whole in the worker-thread hop that checks the path, reads the
# row and opens the file: a small file (a boot script, a template) is served in one hop, not
# four (`bench blobs`, 4 KiB file: server CPU per GET 1.95 -> 1.65 ms through the API, 1.80 ->
# 1.51 ms from the static port; GETs/s up ~15%).
SMALL = 64 << 10


@dataclass
class Opened:
    """An open regular file (or, when small, its bytes) and what the store knows of it."""
    fd: int | None
    size: int
    sha256: str | None  # None when the store holds no (matching) record of this file
    recorded_size: int | None = None  # the size in the store's blobs row, if it has one
    data: bytes | None = None  # the whole file, read when it was opened (fd is then None)

    def __post_init__(self) -> None:
        # A reply can be dropped unsent: a client that hangs up before its response starts
        # gets its handler cancelled before Quart enters the body, whose exit would close
        # the file. The descriptor is closed then too, once nothing refers to this any more.
        self._closer = None if self.fd is None else weakref.finalize(self, os.close, self.fd)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()  # runs at most once, and never again when collected
            self._closer = None
        self.fd = None


class FdBody(ResponseBody):
    """Response body streaming `length` bytes from `start` of an opened file; closes it after."""

    def __init__(self, opened: Opened, start: int, length: int):
        self.opened, self.start, self.length = opened, start, length

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self.opened.close()

    def __aiter__(self):
        if self.opened.data is not None:
            return _once(self.opened.data[self.start:self.start + self.length])
        return storage.read_range(self.opened.fd, self.start, self.length)


async def _once(data: bytes):
    yield data


def _open_sync(conn, locate: Callable[[], Path], path: str | None) -> Opened:
    """In a worker thread: the checked disk path, the blobs row of `path` (if any), the file,
    and a small file's bytes."""
    target = locate()
    row = queries.blob(conn, path) if path else None
    try:
        fd, size = storage.open_regular(target)
    except (NotADirectoryError, PermissionError) as e:  # not a file this server can serve
        raise FileNotFoundError(str(target)) from e
    sha = row["sha256"] if row and row["size"] == size and row["sha256"] else None
    opened = Opened(fd, size, sha, row["size"] if row else None)
    if size <= SMALL:
        try:
            opened.data = os.pread(fd, size, 0)
        finally:
            opened.close()
    return opened


async def open_blob(store, locate: Callable[[], Path], path: str | None) -> Opened:
    """Open the file `locate()` returns (it checks the path, raising storage.PathError) and pair
    it with the blobs row of `path`, retrying if a put or delete of that path overlapped; one
    worker-thread hop. FileNotFoundError when it is not a regular file this server can read."""
    async def read() -> Opened:
        return await store.read(lambda conn: _open_sync(conn, locate, path))
    if path is None:
        return await read()
    return await gate_for(store).stable(path, read)


@dataclass
class Reply:
    """What to answer a GET/HEAD of an opened blob, whatever serves it: status and headers,
    then `length` bytes of the file from `start` (none for HEAD, 304 and errors, whose JSON
    body is `error`)."""
    status: int
    headers: dict[str, str]
    start: int = 0
    length: int = 0
    error: bytes | None = None


def plan_reply(method: str, headers, opened: Opened, *, model: str = "", key: str = "",
               content_type: str = "application/octet-stream",
               size: int | None = None) -> Reply:
    """ETag/X-DRP-SHA256SUM, If-None-Match, Range with If-Range, HEAD, from the request's
    `headers` (a case-insensitive mapping). `size` caps what is served (a job log is served
    up to its recorded size, even while an append is being written past it)."""
    size = opened.size if size is None else min(size, opened.size)
    out = {"Accept-Ranges": "bytes", "Content-Type": content_type}
    etag = f"SHA256:{opened.sha256}" if opened.sha256 else None
    if etag:
        out["ETag"] = f'"{etag}"'
        out["X-DRP-SHA256SUM"] = opened.sha256
    inm = parse_etags(headers.get("If-None-Match"))
    if etag and inm and (inm.star_tag or inm.contains(etag)):
        return Reply(304, out)
    start, stop, status = 0, size, 200
    rng = parse_range_header(headers.get("Range"))
    if rng is not None and rng.units == "bytes" and len(rng.ranges) == 1 and _if_range_ok(
            headers, etag):
        span = rng.range_for_length(size)
        if span is None:
            body = error_body(416, f"range {headers.get('Range')} is outside 0-{size}",
                              model=model, key=key)
            return Reply(416, {**out, "Content-Range": f"bytes */{size}",
                               "Content-Type": "application/json"},
                         error=json.dumps(body).encode())
        start, stop = span
        status = 206
        out["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    out["Content-Length"] = str(stop - start)
    return Reply(status, out, start, 0 if method == "HEAD" else stop - start)


def blob_response(request, opened: Opened, *, model: str = "", key: str = "",
                  content_type: str = "application/octet-stream",
                  size: int | None = None) -> Response:
    """The Quart response for GET/HEAD of an opened blob (see plan_reply)."""
    reply = plan_reply(request.method, request.headers, opened, model=model, key=key,
                       content_type=content_type, size=size)
    if not reply.length:
        opened.close()
        return Response(reply.error, reply.status, reply.headers)
    return Response(FdBody(opened, reply.start, reply.length), reply.status, reply.headers)


def _if_range_ok(headers, etag: str | None) -> bool:
    """If-Range: apply the range only when the client's validator still matches."""
    if "If-Range" not in headers:
        return True
    return bool(etag) and parse_if_range_header(headers.get("If-Range")).etag == etag

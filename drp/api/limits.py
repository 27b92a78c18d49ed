"""Bounds on what one request may make the server hold or do: the size of a request body read
into memory, and the work and result of a JSON Patch. Each bound is a startup flag
(drp/config.py); a request past one gets 413 with dr-provision's error body, naming the limit
and the flag that raises it."""
from __future__ import annotations

import json

import jsonpatch
import jsonpointer
from quart import request

from drp.api.errors import ApiError
from drp.api.streaming import chunks_of

READ_PIECE = 64 << 10  # a body is taken from the connection as it comes, in pieces this big


def human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def too_large(what: str, limit: int, flag: str, model: str = "", key: str = "") -> ApiError:
    return ApiError(413, f"{what} is larger than the limit of {human(limit)} (the server's "
                    f"{flag} raises it)", model=model, key=key)


async def read_capped_body(limit: int, flag: str, what: str = "the request body",
                           model: str = "", key: str = "") -> bytes:
    """The whole request body, refused with 413 as soon as it is known to exceed `limit`:
    from Content-Length before reading anything, else while reading (chunked bodies). Never
    holds more than `limit` bytes of it, plus what the connection buffers (streaming.LIMIT)."""
    length = request.headers.get("Content-Length", "").strip()
    if length.isdigit():
        if int(length) > limit:
            raise too_large(what, limit, flag, model, key)
        return await request.get_data()  # h11 lets no more than Content-Length through
    pieces, size = [], 0
    async for piece in chunks_of(request.body, READ_PIECE):
        size += len(piece)
        if size > limit:
            raise too_large(what, limit, flag, model, key)
        pieces.append(piece)
    return b"".join(pieces)


def check_patch_ops(ops, limit: int, model: str, key: str) -> None:
    if isinstance(ops, list) and len(ops) > limit:
        raise ApiError(413, f"the JSON Patch has {len(ops)} operations, more than the limit of "
                       f"{limit} (the server's --max-patch-ops raises it)",
                       model=model, key=key)


def _size(value) -> int:
    return len(json.dumps(value))


def _taken_out(doc, path: str, inserts: bool) -> int:
    """The JSON size of the value an operation at `path` replaces or removes (0 when it only
    adds: a new member, or `inserts` into an array)."""
    try:
        parent, part = jsonpointer.JsonPointer(path).to_last(doc)
        if part is None:
            return _size(doc)
        if isinstance(parent, list):
            return 0 if inserts or part == "-" else _size(parent[part])
        return _size(parent[part]) if isinstance(parent, dict) and part in parent else 0
    except (jsonpointer.JsonPointerException, IndexError, KeyError, TypeError):
        return 0  # the operation itself will fail and say why


def _add(doc, path: str, value):
    """RFC 6902 `add` of a value the caller owns (jsonpatch would deep-copy it again)."""
    parent, part = jsonpointer.JsonPointer(path).to_last(doc)
    if part is None:
        return value
    if isinstance(parent, list):
        if part == "-":
            parent.append(value)
        elif 0 <= part <= len(parent):
            parent.insert(part, value)
        else:
            raise jsonpatch.JsonPatchConflict(f"cannot insert at {path}: outside of the list")
    elif isinstance(parent, dict):
        parent[part] = value
    else:
        raise jsonpatch.JsonPatchConflict(f"cannot add at {path}: not in an object or a list")
    return doc


def apply_patch(ops: list, doc, doc_size: int, limit: int, model: str, key: str):
    """Apply a JSON Patch to `doc` (changed in place: pass a copy you own) one operation at a
    time, refusing with 413 before the result can pass `limit` bytes of JSON.

    The running size is updated from the values each operation puts in and takes out, so the
    check costs what the patch moves, not the document's size per operation; copies (the one
    operation that can multiply a document) are capped at `limit` bytes in all, and made
    through JSON text rather than deepcopy (20x faster), so the 22 copies that double an
    array to 4M elements are refused within milliseconds. The exact size is checked at the
    end. Raises jsonpatch/jsonpointer errors as jsonpatch does."""
    estimate, copied = doc_size, 0

    def refuse() -> ApiError:
        return too_large("the patched object", limit, "--max-object-size", model, key)
    for op in ops:
        one = jsonpatch.JsonPatch([op])  # checks the operation's shape
        name, path = op["op"], op["path"]
        if name in ("add", "replace", "remove", "copy", "move"):
            estimate -= _taken_out(doc, path, inserts=name not in ("replace", "remove"))
        if name == "copy":
            if not isinstance(op.get("from"), str):
                raise jsonpatch.InvalidJsonPatch("a copy needs a 'from' pointer")
            text = json.dumps(jsonpointer.resolve_pointer(doc, op["from"]))
            copied += len(text)
            estimate += len(text) + len(path)
            if estimate > limit or copied > limit:
                raise refuse()
            doc = _add(doc, path, json.loads(text))
            continue
        if name in ("add", "replace"):
            estimate += _size(op.get("value")) + len(path)  # value, key and punctuation
        if estimate > limit:
            raise refuse()
        doc = one.apply(doc, in_place=True)
    if _size(doc) > limit:  # the estimate is close; this is exact
        raise refuse()
    return doc

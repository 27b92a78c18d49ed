"""drpcli verbs for files, isos, job logs, content bundles and plugin providers.

Transfers stream in 1 MiB chunks (constant memory), show a rich progress bar on stderr only when
stderr is a terminal, and print nothing extra when piped.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from pathlib import Path
from urllib.parse import quote

import httpx

from drp.cli.client import CliError, Client, error_text
from drp.cli.commands import command, describe, need

CHUNK = 1 << 20
TRANSFER_TIMEOUT = httpx.Timeout(60, read=None, write=None)  # an ISO may take minutes


@contextlib.contextmanager
def progress(label: str, total: int | None):
    """Yield advance(n). A rich progress bar on an interactive stderr, else nothing at all."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    with bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _chunks(f, advance):
    while chunk := f.read(CHUNK):
        advance(len(chunk))
        yield chunk


def upload(client: Client, url: str, src: str):
    """POST the bytes of file `src` (or - for stdin) to `url`; returns the server's JSON."""
    if src == "-":
        f, size = sys.stdin.buffer, None
    else:
        try:
            f = open(src, "rb")
        except OSError as e:
            raise CliError(f"cannot read {src}: {e.strerror}") from None
        size = os.fstat(f.fileno()).st_size
    headers = {"Content-Type": "application/octet-stream"}
    if size is not None:
        headers["Content-Length"] = str(size)
    with f, progress(f"upload {Path(src).name}", size) as advance:
        resp = client.request("POST", url, content=_chunks(f, advance), headers=headers,
                              timeout=TRANSFER_TIMEOUT)
    return resp.json()


def download(client: Client, url: str, dest: str) -> None:
    """GET `url` into `dest` (- for stdout), streaming; verifies the server's sha256. A file
    is written beside `dest` and renamed into place only when complete and verified."""
    try:
        with client.http.stream("GET", url, timeout=TRANSFER_TIMEOUT) as resp:
            if resp.status_code != 200:
                resp.read()
                raise CliError(error_text(resp))
            want = resp.headers.get("X-DRP-SHA256SUM")
            total = int(resp.headers["Content-Length"]) if "Content-Length" in resp.headers \
                else None
            if dest == "-":
                _receive(resp, sys.stdout.buffer, want, total, "stdout")
                sys.stdout.buffer.flush()
                return
            part = Path(dest).with_name(f".{Path(dest).name}.part")
            try:
                with open(part, "wb") as out:
                    _receive(resp, out, want, total, Path(dest).name)
                os.replace(part, dest)
            finally:
                part.unlink(missing_ok=True)
    except httpx.HTTPError as e:
        raise CliError(f"download from {client.endpoint} failed: {e}") from None
    except OSError as e:
        raise CliError(f"cannot write {dest}: {e.strerror or e}") from None


def _receive(resp, out, want: str | None, total: int | None, label: str) -> None:
    hasher = hashlib.sha256()
    with progress(f"download {label}", total) as advance:
        for chunk in resp.iter_bytes(CHUNK):
            hasher.update(chunk)
            out.write(chunk)
            advance(len(chunk))
    if want and hasher.hexdigest() != want:
        raise CliError(f"sha256 mismatch: got {hasher.hexdigest()}, server said {want}")


def _keyword(args: list[str], word: str, default: str | None, usage: str) -> str:
    """`SRC [word VALUE]` -> VALUE (or default)."""
    if len(args) == 1:
        if default is None:
            raise CliError(f"usage: drpcli {usage}")
        return default
    if len(args) != 3 or args[1] != word:
        raise CliError(f"usage: drpcli {usage}")
    return args[2]


# ---- files and isos --------------------------------------------------------------------------
def _url(kind: str, path: str) -> str:
    """/kind/<path>, percent-encoded; '.' and '..' segments are encoded too, so the server
    (not httpx's URL normalization) sees them and refuses them."""
    segments = [quote(s, safe="").replace(".", "%2E") if s in (".", "..") else quote(s, safe="")
                for s in path.lstrip("/").split("/")]
    return f"/{kind}/" + "/".join(segments)


def _blob_verbs(kind: str, model: str, flat: bool, example: str) -> None:
    what = "NAME" if flat else "PATH"
    where = (f"the {model}'s name under the server's {kind}/" if flat else
             f"the {model}'s path under the server's {kind}/ (a/b/c makes the directories)")
    local = Path(example).name

    @command(kind, "upload", "SRC [as DEST]",
             summary=f"Upload a local file to the server's {kind}/",
             arguments=(("SRC", "the local file, or - for stdin (then `as DEST` is needed)"),
                        ("DEST", where + "; default: SRC's file name")),
             example=f"drpcli {kind} upload ./{local} as {example}")
    def _upload(client, args):
        usage = f"{kind} upload SRC [as DEST]"
        need(args, 1, usage)
        dest = _keyword(args, "as", None if args[0] == "-" else Path(args[0]).name, usage)
        return upload(client, _url(kind, dest), args[0])

    @command(kind, "download", f"{what} [to DEST]",
             summary=f"Download a {model}, checking the server's sha256",
             arguments=((what, where),
                        ("DEST", f"the local file (written whole or not at all), or - for "
                                 f"stdout; default: {what}'s file name")),
             example=f"drpcli {kind} download {example} to ./{local}")
    def _download(client, args):
        usage = f"{kind} download {what} [to DEST]"
        need(args, 1, usage)
        dest = _keyword(args, "to", Path(args[0]).name, usage)
        download(client, _url(kind, args[0]), dest)

    @command(kind, "list", "" if flat else "[PATH]",
             summary=f"List the {kind}" if flat else
             "List the files and directories (a trailing /) in a directory",
             arguments=() if flat else (("PATH", "the directory; default: the top"),),
             example=f"drpcli {kind} list" + ("" if flat else f" {Path(example).parent}"))
    def _list(client, args):
        params = {"path": args[0]} if args and not flat else {}
        return client.json("GET", f"/{kind}", params=params)

    @command(kind, "exists", what, summary=f"Exit 0 if a {model} exists, else say so and exit 1",
             arguments=((what, where),), example=f"drpcli {kind} exists {example}")
    def _exists(client, args):
        need(args, 1, f"{kind} exists {what}")
        if client.request("HEAD", _url(kind, args[0]), ok=(200, 404)).status_code == 404:
            raise CliError(f"{model} {args[0]} does not exist")

    @command(kind, "destroy", what, summary=f"Delete a {model}", arguments=((what, where),),
             example=f"drpcli {kind} destroy {example}")
    def _destroy(client, args):
        need(args, 1, f"{kind} destroy {what}")
        client.request("DELETE", _url(kind, args[0]))
        return f"Deleted {model} {args[0]}"


describe("files", "Files in directories, served on the static port under /files/")
describe("isos", "ISO images, served on the static port under /isos/")
_blob_verbs("files", "file", flat=False, example="boot/ipxe.efi")
_blob_verbs("isos", "iso", flat=True, example="debian-12.iso")


# ---- job logs --------------------------------------------------------------------------------
@command("jobs", "log", "UUID", summary="Print a job's log to stdout",
         arguments=(("UUID", "the job's Uuid"),), example="drpcli jobs log <uuid>")
def _job_log(client, args):
    need(args, 1, "jobs log UUID")
    download(client, f"/jobs/{args[0]}/log", "-")


@command("jobs", "log-append", "UUID FILE|-", summary="Append to a job's log",
         arguments=(("UUID", "the job's Uuid"), ("FILE|-", "a local file, or - for stdin")),
         example="echo done | drpcli jobs log-append <uuid> -")
def _job_log_append(client, args):
    need(args, 2, "jobs log-append UUID FILE|-")
    if args[1] == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(args[1]).read_bytes()
        except OSError as e:
            raise CliError(f"cannot read {args[1]}: {e.strerror}") from None
    client.request("PUT", f"/jobs/{args[0]}/log", content=data,
                   headers={"Content-Type": "application/octet-stream"})


# ---- content bundles -------------------------------------------------------------------------
def _bundle_body(path: str) -> tuple[bytes, str]:
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None
    yaml_ext = path.endswith((".yaml", ".yml"))
    return raw, "application/yaml" if yaml_ext else "application/octet-stream"


BUNDLE = ("FILE", "the bundle in JSON or YAML (.yaml/.yml), or - for stdin")
describe("contents", "Content bundles: sets of objects installed (and removed) together")


@command("contents", "upload", "FILE",
         summary="Install a content bundle, or replace the installed one of its name",
         arguments=(BUNDLE,), example="drpcli contents upload ./my-content.yaml")
def _contents_upload(client, args):
    need(args, 1, "contents upload FILE")
    raw, ctype = _bundle_body(args[0])
    headers = {"Content-Type": ctype}
    resp = client.request("POST", "/contents", content=raw, headers=headers, ok=(201, 409))
    if resp.status_code == 409:  # as dr-provision's drpcli: upload replaces an installed one
        body = resp.json()
        if body.get("Type") != "POST" or not body.get("Key"):  # another conflict: say it
            raise CliError(error_text(resp))
        resp = client.request("PUT", f"/contents/{body['Key']}", content=raw, headers=headers)
    return resp.json()


@command("contents", "update", "NAME FILE",
         summary="Replace an installed content bundle with a new version",
         arguments=(("NAME", "the installed bundle's name"), BUNDLE),
         example="drpcli contents update my-content ./my-content.yaml")
def _contents_update(client, args):
    need(args, 2, "contents update NAME FILE")
    raw, ctype = _bundle_body(args[1])
    return client.request("PUT", f"/contents/{args[0]}", content=raw,
                          headers={"Content-Type": ctype}).json()


def _named_verbs(kind: str, model: str, path: str, example: str) -> None:
    """list / show / exists / destroy for a kind whose objects are named in the URL."""
    name = ("NAME", f"the {model}'s name")

    @command(kind, "list", summary=f"List the {kind}", example=f"drpcli {kind} list")
    def _list(client, args):
        return client.json("GET", path)

    @command(kind, "show", "NAME", summary=f"Show one {model}", arguments=(name,),
             example=f"drpcli {kind} show {example}")
    def _show(client, args):
        need(args, 1, f"{kind} show NAME")
        return client.json("GET", f"{path}/{args[0]}")

    @command(kind, "exists", "NAME",
             summary=f"Exit 0 if a {model} exists, else say 404 and exit 1",
             arguments=(name,), example=f"drpcli {kind} exists {example}")
    def _exists(client, args):
        need(args, 1, f"{kind} exists NAME")
        client.request("HEAD", f"{path}/{args[0]}")

    @command(kind, "destroy", "NAME", summary=f"Remove a {model}", arguments=(name,),
             example=f"drpcli {kind} destroy {example}")
    def _destroy(client, args):
        need(args, 1, f"{kind} destroy NAME")
        client.json("DELETE", f"{path}/{args[0]}")
        return f"Deleted {model} {args[0]}"


_named_verbs("contents", "content", "/contents", "my-content")


# ---- plugin providers ------------------------------------------------------------------------
PROVIDER = ("NAME", "the plugin provider's name")
describe("plugin_providers", "Plugin provider binaries the server runs plugins with")


@command("plugin_providers", "upload", "NAME from FILE",
         summary="Upload a plugin provider binary",
         arguments=(PROVIDER, ("FILE", "the local binary, or - for stdin")),
         example="drpcli plugin_providers upload ipmi from ./ipmi")
def _provider_upload(client, args):
    usage = "plugin_providers upload NAME from FILE"
    if len(args) != 3 or args[1] != "from":
        raise CliError(f"usage: drpcli {usage}")
    return upload(client, f"/plugin_providers/{args[0]}", args[2])


@command("plugin_providers", "download", "NAME [to DEST]",
         summary="Download a plugin provider binary, checking the server's sha256",
         arguments=(PROVIDER, ("DEST", "the local file, or - for stdout; default: NAME")),
         example="drpcli plugin_providers download ipmi to ./ipmi")
def _provider_download(client, args):
    usage = "plugin_providers download NAME [to DEST]"
    need(args, 1, usage)
    download(client, f"/plugin_providers/{args[0]}/binary", _keyword(args, "to", args[0], usage))


_named_verbs("plugin_providers", "plugin_provider", "/plugin_providers", "ipmi")

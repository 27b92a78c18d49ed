"""Helpers for the blob, content and static-server tests: change-log rows, raw HTTP requests
(httpx normalizes '..' away, so traversal attempts need a socket), drpcli with bytes output."""
from __future__ import annotations

import base64
import json
import os
import socket
import sqlite3
import ssl
import subprocess

from tests.drpserver import AUTH, BIN, DrpServer


def changes(drp: DrpServer, kind: str | None = None, key: str | None = None) -> list[dict]:
    """Change-log rows, oldest first, read from the server's drp.db."""
    conn = sqlite3.connect(f"file:{drp.base_root / 'drp.db'}?mode=ro", uri=True)
    try:
        sql, params = "SELECT seq, kind, key, action, body, data FROM changes WHERE 1=1", []
        if kind:
            sql += " AND kind=?"
            params.append(kind)
        if key:
            sql += " AND key=?"
            params.append(key)
        rows = conn.execute(sql + " ORDER BY seq", params).fetchall()
    finally:
        conn.close()
    return [{"seq": s, "kind": k, "key": ky, "action": a,
             "body": json.loads(b) if b else None, "data": bytes(d) if d is not None else None}
            for s, k, ky, a, b, d in rows]


def blob_row(drp: DrpServer, path: str) -> dict | None:
    conn = sqlite3.connect(f"file:{drp.base_root / 'drp.db'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT size, sha256, mode FROM blobs WHERE path=?",
                           (path,)).fetchone()
    finally:
        conn.close()
    return dict(zip(("size", "sha256", "mode"), row)) if row else None


def raw_request(host: str, port: int, target: str, *, method: str = "GET", tls: bool = False,
                auth: bool = True, body: bytes = b"", headers: dict | None = None,
                timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send one HTTP/1.1 request with `target` exactly as given; (status, headers, body)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        sock = ctx.wrap_socket(sock, server_hostname=host)
    hdrs = {"Host": f"{host}:{port}", "Connection": "close", **(headers or {})}
    if auth:
        hdrs["Authorization"] = "Basic " + base64.b64encode(":".join(AUTH).encode()).decode()
    if body or method in ("POST", "PUT"):
        hdrs["Content-Length"] = str(len(body))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    with sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        parsed = {k.strip().lower(): v.strip()
                  for k, _, v in (ln.partition(":") for ln in lines[1:])}
        # hypercorn keeps the connection open despite Connection: close; read what it said
        want = 0 if method == "HEAD" else int(parsed.get("content-length", 0))
        while len(payload) < want and (chunk := sock.recv(65536)):
            payload += chunk
    return status, parsed, payload


def drpcli_bytes(drp: DrpServer, *args: str, input: bytes | None = None,
                 check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "RS_ENDPOINT": drp.url}
    return subprocess.run([str(BIN / "drpcli"), *args], env=env, input=input,
                          capture_output=True, check=check, timeout=120)


def temp_files(root) -> list:
    return [p for p in root.rglob("*") if ".drp-tmp-" in p.name]

"""An httpx client for the dr-provision API, configured like drpcli (RS_ENDPOINT/RS_KEY/RS_TOKEN)."""
from __future__ import annotations

import json
import os
import warnings

import httpx

DEFAULT_ENDPOINT = "https://127.0.0.1:8092"
DEFAULT_KEY = "rocketskates:r0cketsk8ts"


class CliError(Exception):
    """Printed as one line on stderr; drpcli exits 1."""


def error_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        msgs = "; ".join(body.get("Messages") or []) or resp.reason_phrase
        where = " ".join(x for x in (body.get("Model"), body.get("Key")) if x)
        return f"{resp.status_code} {where}: {msgs}" if where else f"{resp.status_code}: {msgs}"
    except (ValueError, AttributeError):
        return f"{resp.status_code}: {resp.text.strip()[:200] or resp.reason_phrase}"


class Client:
    def __init__(self, endpoint: str | None = None, username: str | None = None,
                 password: str | None = None, token: str | None = None, timeout: float = 60):
        endpoint = (endpoint or os.environ.get("RS_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        token = token or os.environ.get("RS_TOKEN")
        auth = None
        headers = {}
        if token and not (username or password):
            headers["Authorization"] = f"Bearer {token}"
        else:
            key_user, _, key_pass = (os.environ.get("RS_KEY") or DEFAULT_KEY).partition(":")
            auth = (username or key_user, password if password is not None else key_pass)
        self.endpoint = endpoint
        # dr-provision ships a self-signed certificate; drpcli accepts it, and so do we.
        warnings.filterwarnings("ignore", message="Unverified HTTPS request")
        self.http = httpx.Client(base_url=endpoint + "/api/v3", auth=auth, headers=headers,
                                 verify=False, timeout=timeout)

    def request(self, method: str, path: str, *, ok=(200, 201, 204, 206, 304), **kw):
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise CliError(f"cannot reach {self.endpoint}: {e}") from None
        if resp.status_code not in ok:
            raise CliError(error_text(resp))
        return resp

    def json(self, method: str, path: str, body=None, **kw):
        if body is not None:
            kw["content"] = json.dumps(body)
            kw.setdefault("headers", {})["Content-Type"] = "application/json"
        resp = self.request(method, path, **kw)
        return resp.json() if resp.content else None

    def close(self):
        self.http.close()

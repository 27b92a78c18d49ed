"""Who is asking: HTTP Basic or `Authorization: Bearer <token>` against the store's users."""
from __future__ import annotations

import base64
import hashlib

import trio

from drp import auth
from drp.errors import ApiError
from drp.store.store import Store


def _unauthorized(why: str) -> ApiError:
    return ApiError(401, why, type_="AUTH_ERROR")


# Who a node that holds no users yet (a passive before its first catch-up) lets in: the
# default login and the cluster's own --ha-token, so operators can still ask it how it is doing.
_EMPTY_STORE_USER = {"Name": auth.DEFAULT_USER, "Roles": ["superuser"]}


class Authenticator:
    def __init__(self, store: Store, ha_token: str | None = None):
        self.store = store
        self.ha_token = ha_token
        # scrypt costs ~50 ms: remember good (user, password, stored hash) triples, so a
        # changed password or a replaced user misses the cache.
        self._good_basic: set[str] = set()
        # Users and the token secret, read once per change of their kind instead of twice per
        # request (each read is a worker-thread hop): (kind, key) -> (store version, object).
        self._objects: dict[tuple[str, str], tuple[tuple[int, int], dict | None]] = {}

    async def _get(self, kind: str, key: str) -> dict | None:
        version = self.store.version(kind)
        hit = self._objects.get((kind, key))
        if hit is not None and hit[0] == version:
            return hit[1]
        obj = await self.store.get(kind, key)
        if self.store.version(kind) == version:  # nothing of that kind committed meanwhile
            if len(self._objects) > 10_000:  # unknown names in forged tokens: stay bounded
                self._objects.clear()
            self._objects[(kind, key)] = (version, obj)
        return obj

    async def user(self, name: str) -> dict | None:
        return await self._get("users", name)

    async def secret(self) -> str:
        obj = await self._get("secrets", "token")
        if obj is None:
            raise _unauthorized("this node holds no users yet (a passive that has not caught up)")
        return obj["Secret"]

    async def authenticate(self, headers) -> dict:
        header = headers.get("Authorization", "")
        scheme, _, cred = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            return await self._basic(cred.strip())
        if scheme == "bearer":
            return await self.check_token(cred.strip())
        raise _unauthorized("authentication required: HTTP Basic or a Bearer token")

    async def _basic(self, cred: str) -> dict:
        try:
            name, _, password = base64.b64decode(cred).decode().partition(":")
        except Exception:
            raise _unauthorized("garbled Basic credentials") from None
        user = await self.user(name)
        if user is None and (name, password) == (auth.DEFAULT_USER, auth.DEFAULT_PASSWORD) \
                and await self._store_is_empty():
            return _EMPTY_STORE_USER
        if user is None or not user.get("PasswordHash"):
            raise _unauthorized("bad username or password")
        fingerprint = hashlib.sha256(
            f"{name}\0{password}\0{user['PasswordHash']}".encode()).hexdigest()
        if fingerprint not in self._good_basic:
            ok = await trio.to_thread.run_sync(auth.check_password, password,
                                               user["PasswordHash"])
            if not ok:
                raise _unauthorized("bad username or password")
            if len(self._good_basic) > 10_000:
                self._good_basic.clear()
            self._good_basic.add(fingerprint)
        return user

    async def check_token(self, token: str) -> dict:
        try:
            name = auth.token_user(token)
        except auth.TokenError as e:
            raise _unauthorized(str(e)) from None
        user = await self.user(name)
        if user is None and self.ha_token and token == self.ha_token \
                and await self._store_is_empty():
            return {**_EMPTY_STORE_USER, "Name": name}
        if user is None:
            raise _unauthorized("token for an unknown user")
        try:
            auth.verify_token(await self.secret(), token, user.get("Secret", ""))
        except auth.TokenError as e:
            raise _unauthorized(str(e)) from None
        return user


    async def _store_is_empty(self) -> bool:
        return await self.store.read(lambda c: c.execute(
            "SELECT 1 FROM objects WHERE kind IN ('users', 'secrets') LIMIT 1").fetchone() is None)


def is_superuser(user: dict) -> bool:
    return "superuser" in (user.get("Roles") or [])

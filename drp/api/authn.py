"""Who is asking: HTTP Basic or `Authorization: Bearer <token>` against the store's users."""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import time

import trio

from drp import auth, claims
from drp.api import throttle
from drp.api.errors import ApiError
from drp.config import Config
from drp.store.store import Store


log = logging.getLogger("drp.api")


def _unauthorized(why: str) -> ApiError:
    return ApiError(401, why, type_="AUTH_ERROR")


_TARPIT = 2.0  # longest a refused login is held before its 429


def _too_many(why: str, seconds: float) -> ApiError:
    retry = max(1, math.ceil(seconds))
    return ApiError(429, f"{why}; retry after {retry} s", type_="TooManyRequests",
                    headers={"Retry-After": str(retry)})


# Who a node that holds no users yet (a passive before its first catch-up) lets in: the
# default login and the cluster's own --ha-token, so operators can still ask it how it is doing.
_EMPTY_STORE_USER = {"Name": auth.DEFAULT_USER, "Roles": ["superuser"]}


class Authenticator:
    def __init__(self, store: Store, ha_token: str | None, cfg: Config):
        self.store = store
        self.ha_token = ha_token
        # Password guessing: failed attempts counted per user name and per source address,
        # hashes on threads of their own (drp/api/throttle.py).
        self.hashes = throttle.HashGate(cfg.auth_hash_threads, cfg.auth_hash_queue)
        self.user_failures = throttle.FailureCounter(cfg.auth_user_failures, cfg.auth_max_backoff)
        self.source_failures = throttle.FailureCounter(cfg.auth_source_failures,
                                                       cfg.auth_max_backoff)
        self.failed_log = throttle.FailedLoginLog(log)
        # scrypt costs ~50 ms: remember good (user, password, stored hash) triples, so a
        # changed password or a replaced user misses the cache.
        self._good_basic: set[str] = set()
        # Users and the token secret, read once per change of their kind instead of twice per
        # request (each read is a worker-thread hop): (kind, key) -> (store version, object).
        self._objects: dict[tuple[str, str], tuple[tuple[int, int], dict | None]] = {}
        # (user name, its Roles) -> (roles' store version, compiled claims)
        self._claims: dict[tuple[str, tuple], tuple[tuple[int, int], tuple]] = {}
        # The same, found by the user object itself (the one _get hands out while users do not
        # change): id(user) -> (user, (users, roles) versions, compiled claims). The entry
        # holds the user, so its id cannot be reused while the entry lives.
        self._claims_of: dict[int, tuple[dict, tuple, tuple]] = {}
        # Bearer tokens whose signature was checked: token -> ((users, secrets) versions, user,
        # expiry). A hit skips decoding and the HMAC; any commit to users or secrets (a new
        # password, a deleted user, a new cluster secret) misses, and expiry is checked on
        # every hit. Only good signatures get in, so forged tokens cannot fill it.
        self._tokens: dict[str, tuple[tuple, dict, float]] = {}

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

    async def claims(self, user: dict) -> tuple:
        """The user's compiled claims (drp.claims), remembered until roles change: a
        request costs a dict lookup, not a store read."""
        versions = (self.store.version("users"), self.store.version("roles"))
        mine = self._claims_of.get(id(user))
        if mine is not None and mine[0] is user and mine[1] == versions:
            return mine[2]
        roles = user.get("Roles")
        roles = tuple(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else ()
        cache_key = (str(user.get("Name", "")), roles)
        version = versions[1]
        hit = self._claims.get(cache_key)
        if hit is not None and hit[0] == version:
            compiled = hit[1]
        else:
            found = [claims.BUILTIN_ROLES.get(r) or await self._get("roles", r) for r in roles]
            compiled = claims.user_claims(cache_key[0], found)
            if len(self._claims) > 10_000:
                self._claims.clear()
            self._claims[cache_key] = (version, compiled)
        if self.store.version("users") == versions[0]:
            if len(self._claims_of) > 10_000:
                self._claims_of.clear()
            self._claims_of[id(user)] = (user, versions, compiled)
        return compiled

    async def secret(self) -> str:
        obj = await self._get("secrets", "token")
        if obj is None:
            raise _unauthorized("this node holds no users yet (a passive that has not caught up)")
        return obj["Secret"]

    async def authenticate(self, headers, remote_addr: str | None = None) -> dict:
        self.failed_log.flush()
        header = headers.get("Authorization", "")
        scheme, _, cred = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            return await self._basic(cred.strip(), throttle.source_key(remote_addr))
        if scheme == "bearer":
            return await self.check_token(cred.strip(), throttle.source_key(remote_addr))
        raise _unauthorized("authentication required: HTTP Basic or a Bearer token")

    async def _basic(self, cred: str, source: str) -> dict:
        try:
            name, _, password = base64.b64decode(cred).decode().partition(":")
        except Exception:
            raise _unauthorized("garbled Basic credentials") from None
        user = await self.user(name)
        if user is None and (name, password) == (auth.DEFAULT_USER, auth.DEFAULT_PASSWORD) \
                and await self._store_is_empty():
            return _EMPTY_STORE_USER
        stored = (user or {}).get("PasswordHash") or ""
        fingerprint = hashlib.sha256(f"{name}\0{password}\0{stored}".encode()).hexdigest()
        known_good = bool(stored) and fingerprint in self._good_basic
        key = name[:auth.MAX_NAME_CHARS]  # bounded keys: the counters' memory stays bounded
        source_wait = self.source_failures.wait(source)
        user_wait = self.user_failures.wait(key)
        # A password that worked before costs one sha256 (why valid logins are cheap). It
        # passes even while the name is in backoff if the source has not been guessing, so who
        # hammers a name cannot lock its owner out. A source in backoff gets no pass, and every
        # refused try at a name in backoff is charged to its source: otherwise "429 or 200"
        # would test cached passwords at request speed.
        if known_good and not source_wait and (
                not user_wait or self.source_failures.clean(source)):
            self.user_failures.forget(key)
            return user
        if source_wait or user_wait:
            if not source_wait:
                self.source_failures.charge(source)
            self.failed_log.failed(name, source, "throttled", quiet=True)
            wait = max(source_wait, user_wait)
            # Answer slowly too: a guesser that ignores Retry-After gets at most one answer
            # per 2 s per connection, not a flood of cheap 429s crowding out real clients.
            await trio.sleep(min(wait, _TARPIT))
            raise _too_many("too many failed logins for this user or from this address "
                            "(limits --auth-user-failures and --auth-source-failures per "
                            "minute)", wait - min(wait, _TARPIT))
        busy = self.hashes.busy()
        if busy:
            await trio.sleep(1.0)  # slowly, as above
            raise _too_many(busy, 1)
        # Charged before the hash: a burst of concurrent guesses is counted as it arrives.
        self.source_failures.charge(source)
        self.user_failures.charge(key)
        # Unknown users and users without a password cost a hash too (against a dummy), so
        # refusing them takes as long as refusing a real user.
        ok = await self.hashes.check_password(password, stored or auth.DUMMY_HASH) and bool(stored)
        if not ok:
            self.failed_log.failed(name, source, "bad username or password")
            raise _unauthorized("bad username or password")
        # A good login starts the user's count over: only who knows the password can do that,
        # so an attacker cannot unlock a victim's name. The source only gets this attempt
        # back: an attacker logging in to an account of their own between guesses must not
        # reset the count of the address they guess from.
        self.user_failures.forget(key)
        self.source_failures.refund(source)
        if len(self._good_basic) > 10_000:
            self._good_basic.clear()
        self._good_basic.add(fingerprint)
        return user

    async def check_token(self, token: str, source: str = "unknown") -> dict:
        # The signing key is the cluster secret + the user's own secret, so the user claim is
        # read before the signature can be checked: token_user() only hands it out as a short
        # string, used for nothing but the lookup of that user; verify_token() then checks the
        # HMAC before any claim is trusted. An unknown user is refused like a bad signature
        # (same message), so forged tokens do not tell which users exist.
        versions = (self.store.version("users"), self.store.version("secrets"))
        hit = self._tokens.get(token)
        if hit is not None and hit[0] == versions and time.time() < hit[2]:
            return hit[1]
        name = "(unreadable)"
        try:
            name = auth.token_user(token)
            user = await self.user(name)
            if user is None and self.ha_token \
                    and hmac.compare_digest(token.encode(), self.ha_token.encode()) \
                    and await self._store_is_empty():
                return {**_EMPTY_STORE_USER, "Name": name}
            checked = auth.verify_token(await self.secret(), token,
                                        (user or {}).get("Secret", ""))
            if user is None:
                raise auth.TokenError("token signature does not match this cluster "
                                      "(or its user is gone)")
        except auth.TokenError as e:
            self.failed_log.failed(name, source, str(e))
            raise _unauthorized(str(e)) from None
        # Kept only when nothing was committed to users or secrets while they were read.
        if (self.store.version("users"), self.store.version("secrets")) == versions:
            if len(self._tokens) > 10_000:
                self._tokens.clear()
            self._tokens[token] = (versions, user, checked["exp"])
        return user


    async def _store_is_empty(self) -> bool:
        return not await self.store.has_any("users", "secrets")

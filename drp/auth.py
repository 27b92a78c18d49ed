"""Passwords (scrypt) and signed tokens. Pure functions; the store holds users and the secret."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import time

DEFAULT_USER = "rocketskates"
DEFAULT_PASSWORD = "r0cketsk8ts"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class TokenError(Exception):
    pass


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt$%d$%d$%d$%s$%s" % (_SCRYPT["n"], _SCRYPT["r"], _SCRYPT["p"],
                                      salt.hex(), digest.hex())


# What a login for an unknown user (or one with no password) is checked against: the same
# scrypt cost as a real user's hash, so the time taken does not tell which users exist.
DUMMY_HASH = "scrypt$%d$%d$%d$%s$%s" % (_SCRYPT["n"], _SCRYPT["r"], _SCRYPT["p"], "00" * 16,
                                        "00" * 32)


def check_password(password: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, digest = stored.split("$")
    except (ValueError, AttributeError):
        return False
    if algo != "scrypt":
        return False
    got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), dklen=len(digest) // 2,
                         n=int(n), r=int(r), p=int(p))
    return hmac.compare_digest(got.hex(), digest)


def new_secret() -> str:
    return secrets.token_hex(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(secret: str, user: str, ttl: float, user_secret: str = "",
               now: float | None = None) -> tuple[str, dict]:
    """A token "<payload>.<hmac>" carrying the user and expiry. `user_secret` changes with the
    user's password so changing a password revokes the user's old tokens."""
    now = time.time() if now is None else now
    # Round the expiry up: truncating would cut up to a second off (a 1s token could be dead
    # on arrival).
    claims = {"u": user, "iat": int(now), "exp": math.ceil(now + ttl), "n": secrets.token_hex(4)}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new((secret + user_secret).encode(), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(sig)}", claims


# Bounds on what is read from a token before its signature is checked: a token is the only
# input an unauthenticated client controls that we decode, so it must stay small and typed.
MAX_TOKEN_CHARS = 4096
MAX_NAME_CHARS = 1024
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def _parts(token: str) -> tuple[str, bytes]:
    """(payload text, signature bytes) of a well-formed "<payload>.<sig>", or TokenError."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise TokenError(f"garbled token (more than {MAX_TOKEN_CHARS} characters)")
    payload, dot, sig = token.partition(".")
    if not dot or not _B64URL.fullmatch(payload) or not _B64URL.fullmatch(sig):
        raise TokenError("garbled token (want <base64url payload>.<base64url signature>)")
    try:
        return payload, _unb64(sig)
    except ValueError:
        raise TokenError("garbled token (signature is not base64url)") from None


def _claims(payload: str) -> dict:
    try:
        claims = json.loads(_unb64(payload))
    except (ValueError, RecursionError):  # not base64, not UTF-8, not JSON, nested too deep
        raise TokenError("garbled token (payload is not base64url JSON)") from None
    if not isinstance(claims, dict):
        raise TokenError("garbled token (payload is not a JSON object)")
    return claims


def token_user(token: str) -> str:
    """The user a token claims to be for, UNVERIFIED. The signing key is the cluster secret plus
    that user's own secret, so the claim must be read before the signature can be checked: it is
    only ever used as a lookup key, after checking it is a short string (a dict or list there
    must not reach a cache as a key); verify_token then checks the HMAC before any claim is
    trusted."""
    name = _claims(_parts(token)[0]).get("u")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
        raise TokenError(f"garbled token (claim u must be a user name of 1-{MAX_NAME_CHARS} "
                         "characters)")
    return name


def verify_token(secret: str, token: str, user_secret: str = "",
                 now: float | None = None) -> dict:
    """The token's claims, after its signature is checked, then the claims' types and expiry."""
    payload, sig = _parts(token)
    want = hmac.new((secret + user_secret).encode(), payload.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(sig, want):
        raise TokenError("token signature does not match this cluster (or its user is gone)")
    claims = _claims(payload)
    exp = claims.get("exp")
    if not isinstance(claims.get("u"), str) or isinstance(exp, bool) \
            or not isinstance(exp, (int, float)) or math.isnan(exp):
        raise TokenError("garbled token (claims u and exp must be a name and a number)")
    if (time.time() if now is None else now) >= exp:
        raise TokenError("token expired")
    return claims

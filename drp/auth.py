"""Passwords (scrypt) and signed tokens. Pure functions; the store holds users and the secret."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
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


def token_user(token: str) -> str:
    """The user a token claims to be for (unverified: look up their secret, then verify)."""
    try:
        payload = token.split(".")[0]
        return json.loads(_unb64(payload))["u"]
    except Exception:
        raise TokenError("garbled token") from None


def verify_token(secret: str, token: str, user_secret: str = "",
                 now: float | None = None) -> dict:
    try:
        payload, sig = token.split(".")
        want = hmac.new((secret + user_secret).encode(), payload.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(_unb64(sig), want):
            raise TokenError("token signature does not match this cluster")
        claims = json.loads(_unb64(payload))
    except TokenError:
        raise
    except Exception:
        raise TokenError("garbled token") from None
    if (time.time() if now is None else now) >= claims.get("exp", 0):
        raise TokenError("token expired")
    return claims

"""Secure params at rest: the value of a param whose definition says `Secure: true` is stored
and served as dr-provision's SecureData, {"Key", "Nonce", "Payload"} (each base64, as Go
marshals []byte), and only opened for a caller who asks `decode=true` and holds getSecure.

dr-provision seals with NaCl box (X25519, XSalsa20-Poly1305) to a key pair per object. The
`cryptography` library has no XSalsa20, so drp uses the same shape with what it has:
    Key     the sender's ephemeral X25519 public key (32 bytes), new for every value
    Nonce   24 random bytes, as NaCl's
    Payload AES-256-GCM of the value's JSON (ciphertext and 16-byte tag), under the key
            HKDF-SHA256 derives from X25519(ephemeral, store key) and both public keys
It is authenticated: a Payload, Nonce or Key changed by one bit does not open. The store key
is one X25519 private key per store, kept in the `secrets` kind (like the token secret) so it
replicates and every HA node opens what any of them sealed; made on first use, in the same
write that stores the first secure value.
"""
from __future__ import annotations

import base64
import binascii
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_KIND, SECRET_KEY = "secrets", "secure-params"  # the store key's record
FIELDS = frozenset({"Key", "Nonce", "Payload"})
NONCE_SIZE = 24
_INFO = b"drp secure param v1"
_RAW = serialization.Encoding.Raw


class SecureDataError(Exception):
    """A SecureData that is malformed or does not open with this store's key."""


def is_secure_data(value) -> bool:
    """Shaped as a SecureData (what decode opens; anything else is served as it is)."""
    return isinstance(value, dict) and value.keys() == FIELDS and all(
        isinstance(v, str) for v in value.values())


def new_record() -> dict:
    """The secrets record of a new store key."""
    raw = X25519PrivateKey.generate().private_bytes(
        _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return {"Name": SECRET_KEY, "Secret": base64.b64encode(raw).decode()}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(sd: dict, name: str, size: int | None = None) -> bytes:
    try:
        data = base64.b64decode(sd[name], validate=True)
    except (binascii.Error, ValueError):
        raise SecureDataError(f"SecureData {name} is not base64") from None
    if size is not None and len(data) != size:
        raise SecureDataError(f"SecureData {name} must be {size} bytes, not {len(data)}")
    return data


class Sealer:
    """Seals and opens values with one store key (its secrets record)."""

    def __init__(self, record: dict):
        self._private = X25519PrivateKey.from_private_bytes(
            base64.b64decode(record["Secret"]))
        self._public = self._private.public_key().public_bytes(
            _RAW, serialization.PublicFormat.Raw)

    def _aead(self, shared: bytes, sender: bytes) -> AESGCM:
        key = HKDF(hashes.SHA256(), 32, salt=None, info=_INFO + sender + self._public
                   ).derive(shared)
        return AESGCM(key)

    def seal(self, value) -> dict:
        ephemeral = X25519PrivateKey.generate()
        sender = ephemeral.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
        shared = ephemeral.exchange(self._private.public_key())
        nonce = os.urandom(NONCE_SIZE)
        payload = self._aead(shared, sender).encrypt(
            nonce, json.dumps(value, separators=(",", ":")).encode(), None)
        return {"Key": _b64(sender), "Nonce": _b64(nonce), "Payload": _b64(payload)}

    def open(self, sd) -> object:
        if not is_secure_data(sd):
            raise SecureDataError("not a SecureData: an object of Key, Nonce and Payload")
        sender = _unb64(sd, "Key", 32)
        nonce = _unb64(sd, "Nonce", NONCE_SIZE)
        payload = _unb64(sd, "Payload")
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(sender))
            plain = self._aead(shared, sender).decrypt(nonce, payload, None)
        except (InvalidTag, ValueError):
            raise SecureDataError("SecureData does not open with this server's key (sealed "
                                  "elsewhere, or changed)") from None
        return json.loads(plain)


_sealers: dict[str, Sealer] = {}  # by the record's Secret: a store key never changes


def sealer(record: dict) -> Sealer:
    secret = record["Secret"]
    found = _sealers.get(secret)
    if found is None:
        found = _sealers[secret] = Sealer(record)
    return found


def sealer_in(tx) -> Sealer:
    """The store key's Sealer inside a write, making the key (in this write) on first use."""
    record = tx.get(SECRET_KIND, SECRET_KEY)
    if record is None:
        record = new_record()
        tx.record(SECRET_KIND, SECRET_KEY, "create", record)
    return sealer(record)


def decoded(params: dict, opener: Sealer | None) -> dict:
    """params with every SecureData that opens with this store's key replaced by its value
    (dr-provision's decode); one that does not open is left as it is."""
    if opener is None:
        return params
    out = {}
    for name, value in params.items():
        if is_secure_data(value):
            try:
                value = opener.open(value)
            except SecureDataError:
                pass
        out[name] = value
    return out

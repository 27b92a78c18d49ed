"""Secure params at rest, in dr-provision's own format: the value of a param whose definition
says `Secure: true` is stored and served as a SecureData {"Key", "Nonce", "Payload"} (each
base64, as Go marshals []byte), and only opened for a caller who asks `decode=true` and holds
getSecure.

As dr-provision (its models.SecureData): a NaCl box (curve25519, XSalsa20-Poly1305) from an
ephemeral sender key pair to the key pair of the object that holds the value:
    Key     the sender's ephemeral public key (32 bytes), new for every value
    Nonce   24 random bytes
    Payload box ciphertext of the value's JSON (16-byte MAC first, no nonce prefix)
so a value RackN's client seals to GET /<kind>/<key>/pubkey opens here, and back.

dr-provision keeps one key pair per object (its secrets store, keyed by the object). drp derives
each object's private key instead, HKDF-SHA256 over (kind, key) from one store secret kept in the
replicated `secrets` kind (the record below, like the token secret): every HA node, a passive
too, gets the same key pair for an object without writing anything, so it answers the pubkey
route and opens what any node sealed. The secret is made on first use, in the same write that
stores the first secure value (or by the pubkey route). A deleted object re-created under the
same key gets the same key pair again (dr-provision would make a new one; nothing depends on it).

Stores from before this change hold values of drp's first scheme: X25519 to the store secret as
a key, HKDF, AES-256-GCM, the same three fields. They still open (a small fallback opener) and are
kept as they are, never re-sealed on read: a read on a passive cannot write, and a value that
opens is as good as a new one. A value sent sealed the old way is accepted (it opens) and stored
as it came.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

SECRET_KIND, SECRET_KEY = "secrets", "secure-params"  # the store secret's record
FIELDS = frozenset({"Key", "Nonce", "Payload"})
KEY_SIZE, NONCE_SIZE, MAC_SIZE = 32, Box.NONCE_SIZE, 16
_OBJECT_INFO = b"drp secure param object key v2\0"  # domain of the per-object derivation
_LEGACY_INFO = b"drp secure param v1"  # the first scheme's HKDF info
_RAW = serialization.Encoding.Raw
_NOT_OPEN = "SecureData does not open with this server's key (sealed elsewhere, or changed)"


class SecureDataError(Exception):
    """A SecureData that is malformed or does not open with this server's key."""


def is_secure_data(value) -> bool:
    """Shaped as a SecureData (what decode opens; anything else is served as it is)."""
    return isinstance(value, dict) and value.keys() == FIELDS and all(
        isinstance(v, str) for v in value.values())


def new_record() -> dict:
    """The secrets record of a new store secret (32 random bytes)."""
    return {"Name": SECRET_KEY, "Secret": _b64(os.urandom(KEY_SIZE))}


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


def _fields(sd) -> tuple[bytes, bytes, bytes]:
    """(Key, Nonce, Payload) of a SecureData, checked as dr-provision's Validate does."""
    if not is_secure_data(sd):
        raise SecureDataError("not a SecureData: an object of Key, Nonce and Payload")
    sender, nonce = _unb64(sd, "Key", KEY_SIZE), _unb64(sd, "Nonce", NONCE_SIZE)
    payload = _unb64(sd, "Payload")
    if len(payload) < MAC_SIZE:
        raise SecureDataError(f"SecureData Payload is shorter than the {MAC_SIZE}-byte MAC: "
                              "corrupted")
    return sender, nonce, payload


def seal_to(public: bytes, value) -> dict:
    """A SecureData of `value` sealed to a curve25519 public key (what RackN's client does)."""
    ephemeral = PrivateKey.generate()
    nonce = os.urandom(NONCE_SIZE)
    payload = Box(ephemeral, PublicKey(public)).encrypt(
        json.dumps(value, separators=(",", ":")).encode(), nonce).ciphertext
    return {"Key": _b64(bytes(ephemeral.public_key)), "Nonce": _b64(nonce),
            "Payload": _b64(payload)}


class ObjectKey:
    """One object's key pair: seals to it, opens what was sealed to it (or, the fallback, to
    the store secret by the first scheme)."""

    def __init__(self, private: bytes, ring: "Keyring"):
        self._private = PrivateKey(private)
        self.public = bytes(self._private.public_key)
        self.public_b64 = _b64(self.public)  # what GET /<kind>/<key>/pubkey answers
        self._ring = ring

    def seal(self, value) -> dict:
        return seal_to(self.public, value)

    def open(self, sd) -> object:
        sender, nonce, payload = _fields(sd)
        try:
            plain = Box(self._private, PublicKey(sender)).decrypt(payload, nonce)
        except CryptoError:
            return self._ring.open(sd)  # sealed by the first scheme, or not to this key
        return _loads(plain)


class Keyring:
    """The store secret (its secrets record): every object's key pair, and the first scheme's
    opener."""

    def __init__(self, record: dict):
        self._secret = base64.b64decode(record["Secret"])
        # the first scheme used the secret itself as an X25519 private key
        self._legacy = X25519PrivateKey.from_private_bytes(self._secret)
        self._legacy_public = self._legacy.public_key().public_bytes(
            _RAW, serialization.PublicFormat.Raw)
        self.for_object = functools.lru_cache(maxsize=4096)(self._derive)

    def _derive(self, kind: str, key: str) -> ObjectKey:
        """for_object(kind, key): the object's key pair, the same on every node."""
        info = _OBJECT_INFO + kind.encode() + b"\0" + key.encode()
        private = HKDF(hashes.SHA256(), KEY_SIZE, salt=None, info=info).derive(self._secret)
        return ObjectKey(private, self)

    def open(self, sd) -> object:
        """Open a value of the first scheme (AES-GCM to the store secret); a SecureData of
        dr-provision's scheme needs its object's key (for_object)."""
        sender, nonce, payload = _fields(sd)
        try:
            shared = self._legacy.exchange(X25519PublicKey.from_public_bytes(sender))
            key = HKDF(hashes.SHA256(), 32, salt=None,
                       info=_LEGACY_INFO + sender + self._legacy_public).derive(shared)
            plain = AESGCM(key).decrypt(nonce, payload, None)
        except (InvalidTag, ValueError):
            raise SecureDataError(_NOT_OPEN) from None
        return _loads(plain)


def _loads(plain: bytes) -> object:
    try:
        return json.loads(plain)
    except (UnicodeDecodeError, ValueError):
        raise SecureDataError("SecureData opens, but not to a JSON value") from None


_rings: dict[str, Keyring] = {}  # by the record's Secret: a store secret never changes


def keyring(record: dict) -> Keyring:
    secret = record["Secret"]
    found = _rings.get(secret)
    if found is None:
        found = _rings[secret] = Keyring(record)
    return found


def keyring_in(tx) -> Keyring:
    """The store's Keyring inside a write, making the secret (in this write) on first use."""
    record = tx.get(SECRET_KIND, SECRET_KEY)
    if record is None:
        record = new_record()
        tx.record(SECRET_KIND, SECRET_KEY, "create", record)
    return keyring(record)


def decoded(params: dict, opener: Keyring | ObjectKey | None, kind: str = "",
            key: str = "") -> dict:
    """params with every SecureData that opens replaced by its value (dr-provision's decode);
    one that does not open is left as it is. `opener` is the holding object's ObjectKey, or the
    Keyring with that object's kind and key (the Keyring alone opens first-scheme values only)."""
    if opener is None:
        return params
    if isinstance(opener, Keyring) and kind:
        opener = opener.for_object(kind, key)
    out = {}
    for name, value in params.items():
        if is_secure_data(value):
            try:
                value = opener.open(value)
            except SecureDataError:
                pass
        out[name] = value
    return out

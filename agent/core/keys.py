"""Small checks shared by the core's modules: status-go only ever puts 33-byte compressed keys on the wire."""

from __future__ import annotations

import coincurve

from . import secp256k1
from .errors import MalformedKey

__all__ = ["require_compressed", "public_from_secret"]


#: points already found valid (a peer's identity and ratchet keys repeat on every message; parsing one costs
#: a square root, ~5-9 µs). Bounded: cleared when full. Only valid points are kept, so a hit proves validity.
_VALID: dict[bytes, None] = {}
_VALID_MAX = 4096


def require_compressed(data: bytes, what: str) -> bytes:
    """Return ``data`` if it is a valid 33-byte compressed secp256k1 point (go-ethereum DecompressPubkey)."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != 33:
        raise MalformedKey(f"{what} must be a 33-byte compressed secp256k1 key")
    key = bytes(data)
    if key not in _VALID:
        secp256k1.public_key(key)
        if len(_VALID) >= _VALID_MAX:
            _VALID.clear()
        _VALID[key] = None
    return key


def public_from_secret(secret: bytes) -> bytes:
    """33-byte compressed public key of a host-held secp256k1 scalar (ephemeral or ratchet key)."""
    if not secp256k1.valid_secret(secret):
        raise MalformedKey("private scalar must be 32 bytes with 0 < d < n")
    return bytes(coincurve.PrivateKey(bytes(secret)).public_key.format(compressed=True))

"""Small checks shared by the core's modules: status-go only ever puts 33-byte compressed keys on the wire."""

from __future__ import annotations

import coincurve

from . import secp256k1
from .errors import MalformedKey

__all__ = ["require_compressed", "public_from_secret"]


def require_compressed(data: bytes, what: str) -> bytes:
    """Return ``data`` if it is a valid 33-byte compressed secp256k1 point (go-ethereum DecompressPubkey)."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != 33:
        raise MalformedKey(f"{what} must be a 33-byte compressed secp256k1 key")
    secp256k1.public_key(bytes(data))
    return bytes(data)


def public_from_secret(secret: bytes) -> bytes:
    """33-byte compressed public key of a host-held secp256k1 scalar (ephemeral or ratchet key)."""
    if not secp256k1.valid_secret(secret):
        raise MalformedKey("private scalar must be 32 bytes with 0 < d < n")
    return bytes(coincurve.PrivateKey(bytes(secret)).public_key.format(compressed=True))

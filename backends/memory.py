"""A KeyOps over a private scalar held in process memory (coincurve).

Used by the software backend once its key file is decrypted, by tests, and by the vector replayer, whose
vectors carry private keys. Never used for a token-held key.
"""

from __future__ import annotations

import coincurve

from agent.core import secp256k1
from agent.core.errors import MalformedKey

__all__ = ["MemoryKey"]


class MemoryKey:
    """secp256k1 key in memory; ``sign`` is RFC 6979 deterministic and low-S, like go-ethereum ``crypto.Sign``."""

    __slots__ = ("_key", "_pub")

    def __init__(self, secret: bytes) -> None:
        if not secp256k1.valid_secret(secret):
            raise MalformedKey("private scalar must be 32 bytes with 0 < d < n")
        self._key = coincurve.PrivateKey(bytes(secret))
        self._pub = self._key.public_key.format(compressed=True)

    @classmethod
    def generate(cls) -> "MemoryKey":
        """A fresh random key (coincurve draws from the OS CSPRNG)."""
        return cls(coincurve.PrivateKey().secret)

    def public_key(self) -> bytes:
        return self._pub

    def sign(self, digest: bytes) -> bytes:
        if len(digest) != 32:
            raise ValueError("digest must be 32 bytes")
        return self._key.sign_recoverable(digest, hasher=None)

    def dh(self, peer_public: bytes) -> bytes:
        return secp256k1.public_key(peer_public).multiply(self._key.secret).format(compressed=False)[1:33]

    def secret_for_export(self) -> bytes:
        """The raw scalar, for the software key file and migration only; never logged."""
        return self._key.secret

    def __repr__(self) -> str:  # never show the secret
        return f"MemoryKey(pub={self._pub.hex()})"

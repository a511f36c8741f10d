"""The one interface through which the core uses an identity key or a signed prekey.

It lives beside its consumer, the core, so that the core depends on nothing; the PKCS#11 and software
backends in ``backends/`` implement it. No method exposes private key bytes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["KeyOps"]


@runtime_checkable
class KeyOps(Protocol):
    """Operations on one secp256k1 private key held somewhere the core cannot see."""

    def public_key(self) -> bytes:
        """The 33-byte compressed SEC1 public key."""
        ...

    def sign(self, digest: bytes) -> bytes:
        """Sign a 32-byte digest; return 65 bytes ``R‖S‖V`` with low S and V in {0,1}."""
        ...

    def dh(self, peer_public: bytes) -> bytes:
        """ECDH with a peer point (33 or 65 bytes); return the 32-byte big-endian x-coordinate."""
        ...

"""Keccak-256 as Ethereum and status-go use it (the legacy padding 0x01, not SHA3-256)."""

from __future__ import annotations

from Crypto.Hash import keccak as _keccak

__all__ = ["keccak256"]


def keccak256(*parts: bytes) -> bytes:
    """Return Keccak-256 of the concatenation of ``parts`` (pycryptodome, digest_bits=256)."""
    h = _keccak.new(digest_bits=256)
    for p in parts:
        h.update(p)
    return h.digest()

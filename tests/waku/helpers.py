"""Small KeyOps doubles for the Waku tests (counting calls, token-like signatures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.core import secp256k1
from backends.memory import MemoryKey

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "waku_payload.json"


def load_vectors() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(VECTORS.read_text())
    return doc


def h(value: str) -> bytes:
    return bytes.fromhex(value)


def draws(*chunks: bytes) -> "Draws":
    return Draws(list(chunks))


class Draws:
    """An injected RNG that hands out recorded chunks in order and insists on their exact sizes."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __call__(self, n: int) -> bytes:
        chunk = self.chunks.pop(0)
        assert len(chunk) == n, f"recorded {len(chunk)} bytes, {n} drawn"
        return chunk


class CountingKey:
    """Wraps a MemoryKey and counts sign/dh calls: a stand-in for 'how many token operations were spent'."""

    def __init__(self, secret: bytes) -> None:
        self.inner = MemoryKey(secret)
        self.dh_calls = 0
        self.sign_calls = 0

    def public_key(self) -> bytes:
        return self.inner.public_key()

    def sign(self, digest: bytes) -> bytes:
        self.sign_calls += 1
        return self.inner.sign(digest)

    def dh(self, peer_public: bytes) -> bytes:
        self.dh_calls += 1
        return self.inner.dh(peer_public)


class HighSKey(CountingKey):
    """Signs like a careless token: the same (r, s) but S flipped to n − S and V dropped (64 bytes r‖s)."""

    def sign(self, digest: bytes) -> bytes:
        low = super().sign(digest)
        s = int.from_bytes(low[32:64], "big")
        return low[:32] + (secp256k1.CURVE_ORDER - s).to_bytes(32, "big")

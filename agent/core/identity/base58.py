"""Base58 (Bitcoin alphabet) with and without the double-SHA-256 checksum.

Written here rather than pulled in as a dependency: it is twenty lines, and the zQ3 form and the
xprv test vectors are the only users. Inputs here are public keys, so no constant-time care is taken.
"""

from __future__ import annotations

import hashlib

__all__ = ["ALPHABET", "b58encode", "b58decode", "b58check_encode", "b58check_decode", "Base58Error"]

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


class Base58Error(ValueError):
    """Text that is not Base58 (a character outside the alphabet, or a bad checksum)."""


def b58encode(data: bytes) -> str:
    """Encode bytes; each leading zero byte becomes a leading ``1``."""
    n = int.from_bytes(data, "big")
    out: list[str] = []
    while n:
        n, r = divmod(n, 58)
        out.append(ALPHABET[r])
    zeros = len(data) - len(bytes(data).lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Decode Base58 text; raise :class:`Base58Error` on any character outside the alphabet."""
    n = 0
    for ch in text:
        try:
            n = n * 58 + _INDEX[ch]
        except KeyError:
            raise Base58Error(f"character {ch!r} is not in the Base58 alphabet") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def _checksum(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()[:4]


def b58check_encode(data: bytes) -> str:
    """Base58 with the 4-byte double-SHA-256 checksum appended (xprv/xpub, addresses)."""
    return b58encode(bytes(data) + _checksum(bytes(data)))


def b58check_decode(text: str) -> bytes:
    """Inverse of :func:`b58check_encode`; raise :class:`Base58Error` when the checksum does not match."""
    raw = b58decode(text)
    if len(raw) < 4 or _checksum(raw[:-4]) != raw[-4:]:
        raise Base58Error("Base58Check checksum mismatch")
    return raw[:-4]

"""The ways Status writes a chat public key, and the one parser that accepts them all.

- ``0x04…``: ``"0x"`` + lower-case hex of the 65-byte uncompressed key (132 characters), status-go's
  contact and chat id;
- compressed hex ``0x02…``/``0x03…`` (66 hex digits, ``0x`` optional);
- ``zQ3sh…``: ``"z"`` (multibase base58btc) + Base58(``e7 01`` (multicodec secp256k1-pub as a varint) +
  33-byte compressed key): what users see, always 49 characters;
- links ``https://status.app/u#zQ3…`` and ``https://status.app/u/<data>#zQ3…`` (the data part is
  unsigned profile data, so only the fragment key is read), and the legacy
  ``https://join.status.im/u/<key>``.

Everything else is rejected with :class:`~agent.core.errors.BadIdentity`. Surrounding whitespace is
stripped (copy-paste adds it); whitespace inside is an error, never silently removed.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from .. import secp256k1
from ..errors import BadIdentity, MalformedKey
from .base58 import Base58Error, b58decode, b58encode

__all__ = [
    "MULTICODEC_SECP256K1_PUB",
    "SHARE_LINK_PREFIX",
    "legacy_key",
    "zq3_encode",
    "zq3_decode",
    "share_link",
    "parse_share_link",
    "parse_peer_identity",
]

MULTICODEC_SECP256K1_PUB = b"\xe7\x01"  # varint of 0xe7; 2/ACCOUNT's "0xea 0x01" example is a typo (BLS)
SHARE_LINK_PREFIX = "https://status.app/u#"
ZQ3_CHARS = 49  # "z" + 48 Base58 characters for every 35-byte e7 01 ‖ 02/03 ‖ X
MAX_IDENTITY_CHARS = 2048  # a profile link with a long description is ~300 characters
_HEX_RE = re.compile(r"[0-9a-fA-F]*", re.ASCII)
_DATA_RE = re.compile(r"[A-Za-z0-9_=-]+", re.ASCII)  # base64url with padding (status-go's URL data)
_STATUS_HOSTS = ("status.app",)
_LEGACY_HOSTS = ("join.status.im",)
_ACCEPTED = "expected a 0x04… key, a compressed hex key, a zQ3… key or a https://status.app/u… link"


def _point(data: bytes) -> bytes:
    """Validate a SEC1 point and return it compressed; off-curve and bad prefixes become BadIdentity."""
    try:
        return secp256k1.compress(data)
    except MalformedKey as exc:
        raise BadIdentity(f"not a valid secp256k1 public key: {exc}") from None


def legacy_key(pub: bytes) -> str:
    """``0x04…``: the 132-character form status-go uses as contact id, chat id and topic name."""
    return "0x" + secp256k1.decompress(pub).hex()


def zq3_encode(pub: bytes) -> str:
    """``zQ3sh…`` form of a public key given compressed or uncompressed."""
    return "z" + b58encode(MULTICODEC_SECP256K1_PUB + secp256k1.compress(pub))


def zq3_decode(text: str) -> bytes:
    """Parse a ``zQ3…`` key into the 33-byte compressed point; raise :class:`BadIdentity` otherwise."""
    if not isinstance(text, str) or not text.startswith("z"):
        raise BadIdentity("a compressed Status key starts with 'z' (multibase base58btc)")
    if len(text) != ZQ3_CHARS:
        # every valid key encodes to exactly 49 characters, so this catches truncation early and clearly
        raise BadIdentity(f"compressed key has {len(text)} characters, a zQ3… key has {ZQ3_CHARS} (truncated?)")
    try:
        raw = b58decode(text[1:])
    except Base58Error as exc:
        raise BadIdentity(f"compressed key is not base58: {exc}") from None
    if len(raw) != 35:
        raise BadIdentity(f"compressed key decodes to {len(raw)} bytes, expected 35 (e7 01 + 33-byte key)")
    if raw[:2] != MULTICODEC_SECP256K1_PUB:
        raise BadIdentity(f"compressed key has multicodec {raw[:2].hex()}, expected e701 (secp256k1-pub)")
    if raw[2] not in (2, 3):
        raise BadIdentity("compressed key does not hold a compressed (02/03) point")
    return _point(raw[2:])


def share_link(pub: bytes) -> str:
    """``https://status.app/u#zQ3…``: the key-only profile link status-go builds."""
    return SHARE_LINK_PREFIX + zq3_encode(pub)


def _key_text(text: str) -> bytes:
    """A bare key in any accepted non-link form."""
    if text.startswith("z"):
        return zq3_decode(text)
    if text[:2] in ("0x", "0X"):
        body = text[2:]
        if not _HEX_RE.fullmatch(body):
            raise BadIdentity("hex key contains a non-hex character")
        if len(body) == 130:
            if body[:2] != "04":
                raise BadIdentity("a 132-character key must start 0x04 (uncompressed)")
            return _point(bytes.fromhex(body))
        if len(body) == 66:
            if body[:2] not in ("02", "03"):
                raise BadIdentity("a compressed hex key must start 02 or 03")
            return _point(bytes.fromhex(body))
        raise BadIdentity(f"hex key has {len(body)} digits after 0x; expected 130 (0x04…) or 66 (0x02/0x03…)")
    if _HEX_RE.fullmatch(text):
        if len(text) != 66:
            raise BadIdentity(
                f"hex key without 0x has {len(text)} digits; only a compressed key (66) may omit 0x"
            )
        if text[:2] not in ("02", "03"):
            raise BadIdentity("a compressed hex key must start 02 or 03")
        return _point(bytes.fromhex(text))
    raise BadIdentity(_ACCEPTED)


def parse_share_link(url: str) -> bytes:
    """The 33-byte key of a Status profile link; raise :class:`BadIdentity` for any other URL."""
    if not isinstance(url, str):
        raise BadIdentity("link must be text")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadIdentity("link is not a well-formed URL") from None
    if parts.scheme.lower() != "https":
        raise BadIdentity("a Status link must use https")
    host = (parts.hostname or "").lower()
    if parts.username is not None or parts.password is not None or port is not None:
        raise BadIdentity("a Status link has no user, password or port")
    if parts.query:
        raise BadIdentity("a Status profile link has no query string")
    if host in _STATUS_HOSTS:
        if parts.path != "/u" and not (
            parts.path.startswith("/u/") and _DATA_RE.fullmatch(parts.path[3:])
        ):
            raise BadIdentity("not a Status profile link (expected /u#… or /u/<data>#…)")
        if not parts.fragment:
            raise BadIdentity("Status profile link has no key after '#'")
        if not parts.fragment.startswith("zQ3"):
            # status-go treats any non-zQ3sh fragment as an ENS name, which it cannot resolve offline either
            raise BadIdentity("Status profile link names an ENS name or unknown form, not a zQ3… key")
        return zq3_decode(parts.fragment)
    if host in _LEGACY_HOSTS:
        # legacy https://join.status.im/u/<0x04… or zQ3…>: the key is the last path segment
        if parts.fragment or not (parts.path.startswith("/u/") or parts.path.startswith("/user/")):
            raise BadIdentity("not a Status profile link (expected join.status.im/u/<key>)")
        return _key_text(parts.path.split("/", 2)[2])
    raise BadIdentity(f"links are only accepted from status.app (got host {host!r})")


def parse_peer_identity(text: str) -> bytes:
    """Any accepted form of a Status chat key → 33-byte compressed point, or :class:`BadIdentity`.

    Accepts ``0x04…`` (132 chars), compressed hex (with or without ``0x``), ``zQ3…`` and Status profile
    links. Surrounding whitespace is stripped; anything inside the text must be exact.
    """
    if not isinstance(text, str):
        raise BadIdentity("peer identity must be text")
    if len(text) > MAX_IDENTITY_CHARS:
        raise BadIdentity(f"peer identity is longer than {MAX_IDENTITY_CHARS} characters")
    s = text.strip()
    if not s:
        raise BadIdentity("peer identity is empty; " + _ACCEPTED)
    if any(ch.isspace() for ch in s):
        raise BadIdentity("peer identity contains whitespace inside it")
    if not s.isascii() or not s.isprintable():
        raise BadIdentity("peer identity contains non-ASCII or control characters")
    if "://" in s:
        return parse_share_link(s)
    return _key_text(s)

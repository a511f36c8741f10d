"""Contact exchange: our signed bundle as a compact contact card (``kac1`` text and QR), and importing one.

This is keyagent's own card format, not Status's contact-code topic (:mod:`agent.core.waku.topics`,
:mod:`agent.core.identity.contact_code`); the CLI still calls the text a "contact code".
Contact card = ``"kac1"`` + Base58Check(Bundle protobuf). Base58 survives copy-paste and chat apps, the
checksum catches typos before the signature check, and the prefix versions the format. A bundle with one
prekey is ~190 bytes, so the code is ~270 characters: a version 10-12 QR code at medium error correction.

Importing verifies the bundle's signature (a code can only introduce keys its identity signed) and returns
a fingerprint for face-to-face comparison: the Status chat key (zQ3…, what Status shows) and a safety
number of 12 groups of 5 digits from Keccak-256 of the identity key, easy to read aloud.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.core.bundle import verify_bundle
from agent.core.errors import MalformedMessage
from agent.core.hashing import keccak256
from agent.core.identity.base58 import Base58Error, b58check_decode, b58check_encode
from agent.core.identity.formats import zq3_encode
from agent.core.wire import decode_bundle

if TYPE_CHECKING:
    from .sessions import SessionManager

__all__ = ["PREFIX", "Contact", "encode_card", "decode_card", "safety_number", "import_card", "render_qr"]

PREFIX = "kac1"
_MAX_CODE = 4096  # a bundle has at most 3 prekeys; anything longer is not ours


@dataclass(frozen=True)
class Contact:
    """A verified contact: identity key, the chat key Status shows, the safety number, the installations."""

    identity: bytes
    chat_key: str
    safety_number: str
    installations: tuple[str, ...]
    bundle: bytes


def encode_card(bundle: bytes) -> str:
    """The contact code of a serialised Bundle."""
    return PREFIX + b58check_encode(bundle)


def safety_number(identity: bytes) -> str:
    """12 groups of 5 digits from Keccak-256(identity): the same on both phones iff the key is the same."""
    digest = keccak256(b"keyagent safety number v1", identity)
    n = int.from_bytes(digest, "big")
    groups = []
    for _ in range(12):
        n, g = divmod(n, 100000)
        groups.append(f"{g:05d}")
    return " ".join(groups)


def decode_card(code: str) -> Contact:
    """Parse and verify a contact code (surrounding whitespace ignored); MalformedMessage or a signature error."""
    if not isinstance(code, str):
        raise MalformedMessage("a contact code is text")
    text = "".join(code.split())
    if len(text) > _MAX_CODE or not text.startswith(PREFIX):
        raise MalformedMessage(f"not a keyagent contact code (expected {PREFIX}…)")
    try:
        raw = b58check_decode(text[len(PREFIX):])
    except (Base58Error, ValueError) as exc:
        raise MalformedMessage(f"contact code is damaged: {exc}") from None
    bundle = decode_bundle(raw)
    identity = verify_bundle(bundle)
    return Contact(identity, zq3_encode(identity), safety_number(identity),
                   tuple(sorted(bundle.signed_pre_keys)), raw)


def import_card(manager: "SessionManager", code: str) -> Contact:
    """Verify a contact code and store its bundle (a peer, or one of our own devices awaiting approval)."""
    contact = decode_card(code)
    manager.add_peer_bundle(contact.bundle)
    return contact


def render_qr(code: str, kind: str = "text") -> bytes:
    """The contact code as a QR code: ``text`` (terminal, UTF-8 half blocks), ``svg`` or ``png`` bytes.

    Uses segno (pure Python, maintained); imported lazily so the agent runs without it.
    """
    try:
        import segno
    except ImportError as exc:  # pragma: no cover - segno is a declared dependency of the CLI
        raise RuntimeError("QR output needs the 'segno' package") from exc
    import io

    qr = segno.make(code, error="m", micro=False)
    buf = io.BytesIO()
    if kind == "text":
        text = io.StringIO()
        qr.terminal(out=text, compact=True, border=2)
        return text.getvalue().encode("utf-8")
    if kind == "svg":
        qr.save(buf, kind="svg", scale=4, border=2)
    elif kind == "png":
        qr.save(buf, kind="png", scale=4, border=2)
    else:
        raise ValueError("kind must be text, svg or png")
    return buf.getvalue()

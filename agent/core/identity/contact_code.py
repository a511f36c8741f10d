"""The contact-code topic of a chat key: where Status publishes that key's signed X3DH bundle.

status-go ``transport.ContactCodeTopic``: the chat id is ``"0x" + hex(uncompressed key) + "-contact-code"``;
it is a symmetric ("public chat") filter, so the Waku content topic is
``/waku/1/0x<Keccak256(chat id)[:4]>/rfc26`` and the AES-256-GCM key is
``PBKDF2-HMAC-SHA256(chat id, salt="", 65356 iterations, 32 bytes)`` (65356, not 65536: the value in every
status-go and Whisper version). Anyone who knows the public key can compute both, so nothing here is
secret in the usual sense; the token is only needed to sign what is published there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..hashing import keccak256
from .formats import legacy_key

__all__ = ["SYMKEY_PBKDF2_ITERATIONS", "ContactCode", "content_topic", "symmetric_key", "contact_code"]

SYMKEY_PBKDF2_ITERATIONS = 65356


def content_topic(chat_id: str) -> str:
    """RFC 26 content topic of a chat id: ``/waku/1/0x`` + first 4 bytes of Keccak-256 + ``/rfc26``."""
    return "/waku/1/0x" + keccak256(chat_id.encode("utf-8"))[:4].hex() + "/rfc26"


def symmetric_key(chat_id: str) -> bytes:
    """status-go's ``addSymmetric`` key for a public chat id (PBKDF2-HMAC-SHA256, empty salt)."""
    return hashlib.pbkdf2_hmac("sha256", chat_id.encode("utf-8"), b"", SYMKEY_PBKDF2_ITERATIONS, 32)


@dataclass(frozen=True)
class ContactCode:
    """Chat id, content topic and 32-byte symmetric key of one identity's contact-code filter."""

    chat_id: str
    content_topic: str
    sym_key: bytes
    pubsub_topic: str = ""  # empty: the node's default shard, as status-go leaves it


def contact_code(pub: bytes) -> ContactCode:
    """The contact-code filter of a public key (33 or 65 bytes)."""
    chat_id = legacy_key(pub) + "-contact-code"
    return ContactCode(chat_id, content_topic(chat_id), symmetric_key(chat_id))

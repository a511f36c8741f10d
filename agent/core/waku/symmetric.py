"""Symmetric Waku payloads: AES-256-GCM, ``wire = C ‖ tag(16) ‖ nonce(12)``, no associated data.

Used for the negotiated topic (key from the two identities' ECDH), public chats and contact-code topics
(key = PBKDF2 of the chat name). No token is involved once the key is known.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import DecryptFailed, MalformedKey, WireTooShort

__all__ = ["KEY_LEN", "NONCE_LEN", "TAG_LEN", "OVERHEAD", "seal_symmetric", "open_symmetric"]

KEY_LEN = 32  # Go aesKeyLength; js-waku's "length: 128" label notwithstanding, a 32-byte key is AES-256
NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = TAG_LEN + NONCE_LEN  # 28


def _aead(key: bytes) -> AESGCM:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
        raise MalformedKey("symmetric key must be 32 bytes")
    return AESGCM(bytes(key))


def seal_symmetric(envelope: bytes, key: bytes, *, nonce: bytes) -> bytes:
    """Encrypt ``envelope`` under a 32-byte key with an injected 12-byte nonce (never reuse one per key)."""
    if not isinstance(nonce, (bytes, bytearray)) or len(nonce) != NONCE_LEN:
        raise ValueError("AES-GCM nonce must be 12 bytes")
    return _aead(key).encrypt(bytes(nonce), bytes(envelope), None) + bytes(nonce)


def open_symmetric(wire: bytes, key: bytes) -> bytes:
    """Decrypt a symmetric wire; :class:`DecryptFailed` on a wrong key or any tampering."""
    aead = _aead(key)
    if not isinstance(wire, (bytes, bytearray, memoryview)):
        raise WireTooShort(f"wire must be bytes, not {type(wire).__name__}")
    data = bytes(wire)
    if len(data) <= OVERHEAD:  # an envelope is never empty; js-waku refuses these too
        raise WireTooShort(f"symmetric wire must be longer than {OVERHEAD} bytes")
    try:
        return aead.decrypt(data[-NONCE_LEN:], data[:-NONCE_LEN], None)
    except InvalidTag:
        raise DecryptFailed("AES-GCM tag mismatch (tampered, or another key)") from None

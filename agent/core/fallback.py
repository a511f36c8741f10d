"""DH fallback for a peer without a bundle (status-go ``encryptWithDH`` / ``DecryptWithDH``).

Key = x-coordinate of DH(ephemeral, IK_peer), used directly as an AES-256 key; AES-256-GCM without AD;
payload = ciphertext ‖ tag(16) ‖ nonce(12) (the nonce is *appended*). The message goes under the map
key ``"none"`` with ``DH_header.key`` = the compressed ephemeral key.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import secp256k1
from .errors import DecryptFailed
from .keyops import KeyOps
from .keys import public_from_secret, require_compressed

__all__ = ["encrypt", "decrypt", "NONCE_LEN", "TAG_LEN"]

NONCE_LEN = 12
TAG_LEN = 16


def encrypt(recipient_identity: bytes, plaintext: bytes, ephemeral_secret: bytes, nonce: bytes) -> tuple[bytes, bytes]:
    """Return ``(ephemeral_pub33, payload)``; ``ephemeral_secret`` and ``nonce`` come from the caller's RNG."""
    if len(nonce) != NONCE_LEN:
        raise ValueError("nonce must be 12 bytes")
    recipient_identity = require_compressed(recipient_identity, "recipient identity key")
    key = secp256k1.dh_x(ephemeral_secret, recipient_identity)
    return public_from_secret(ephemeral_secret), AESGCM(key).encrypt(nonce, plaintext, None) + nonce


def decrypt(my_identity: KeyOps, ephemeral_pub: bytes, payload: bytes) -> bytes:
    """Decrypt a DH-fallback payload with our identity key (through KeyOps); DecryptFailed if it does not open."""
    ephemeral_pub = require_compressed(ephemeral_pub, "DH header key")
    if len(payload) < NONCE_LEN + TAG_LEN:
        raise DecryptFailed("DH payload shorter than tag and nonce")
    key = my_identity.dh(ephemeral_pub)
    try:
        return AESGCM(key).decrypt(payload[-NONCE_LEN:], payload[:-NONCE_LEN], None)
    except InvalidTag:
        raise DecryptFailed("DH payload does not authenticate") from None

"""Content topics and symmetric keys status-go derives for the Waku payload layer.

* Every RFC 26 content topic is ``/waku/1/0x{hex(Keccak-256(name)[:4])}/rfc26``.
* Symmetric chat keys (public chats, contact codes, the negotiated topic) are status-go's
  ``AddSymKeyFromPassword``: PBKDF2-HMAC-SHA256 of the name, empty salt, **65356** iterations (sic, not 65536).
* The negotiated secret is the ECDH x-coordinate of the two identity keys; its name is its lowercase hex.
  Computing it needs our identity, so it goes through :class:`KeyOps` (one token call, cacheable per contact).
* The partitioned topic of a key is ``contact-discovery-{X mod 5000}``: 1:1 ECIES traffic to that key.
"""

from __future__ import annotations

import hashlib

from .. import secp256k1
from ..errors import MalformedKey
from ..hashing import keccak256
from ..keyops import KeyOps

__all__ = [
    "PBKDF2_ITERATIONS",
    "PARTITIONS",
    "topic_bytes",
    "content_topic",
    "key_from_password",
    "negotiated_secret",
    "negotiated_name",
    "negotiated_key",
    "negotiated_topic",
    "partitioned_name",
    "partitioned_topic",
    "contact_code_name",
    "contact_code_topic",
    "contact_code_key",
]

PBKDF2_ITERATIONS = 65356  # the constant in every status-go / Whisper version; not a typo for 65536
PARTITIONS = 5000  # status-go nPartitions


def topic_bytes(name: str) -> bytes:
    """The 4-byte Waku topic of a chat name: Keccak-256 of its UTF-8 bytes, first four bytes."""
    return keccak256(name.encode("utf-8"))[:4]


def content_topic(name: str) -> str:
    """The RFC 26 content topic string for a chat name."""
    return f"/waku/1/0x{topic_bytes(name).hex()}/rfc26"


def key_from_password(name: str) -> bytes:
    """status-go ``AddSymKeyFromPassword``: PBKDF2-HMAC-SHA256(name, salt = b"", 65356, 32 bytes)."""
    return hashlib.pbkdf2_hmac("sha256", name.encode("utf-8"), b"", PBKDF2_ITERATIONS, 32)


def negotiated_secret(me: KeyOps, peer_pub: bytes) -> bytes:
    """x(IK_me · IK_peer), 32 bytes: one ECDH with our identity (in the token with the PKCS#11 backend).

    The peer key is validated on the host first, so a malformed key never reaches the token.
    """
    peer = secp256k1.decompress(peer_pub)  # MalformedKey on anything that is not a curve point
    secret = me.dh(peer)
    if len(secret) != 32:
        raise MalformedKey("ECDH result must be a 32-byte x-coordinate")
    return bytes(secret)


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, (bytes, bytearray)) or len(secret) != 32:
        raise MalformedKey("negotiated secret must be 32 bytes")


def negotiated_name(secret: bytes) -> str:
    """The negotiated chat's filter name: lowercase hex of the secret, no ``0x``."""
    _check_secret(secret)
    return bytes(secret).hex()


def negotiated_key(secret: bytes) -> bytes:
    """The negotiated topic's AES-256-GCM key: PBKDF2 of the secret's hex string (not the secret itself)."""
    return key_from_password(negotiated_name(secret))


def negotiated_topic(secret: bytes) -> str:
    """The negotiated topic's content topic."""
    return content_topic(negotiated_name(secret))


def partitioned_name(pub: bytes) -> str:
    """``contact-discovery-{X mod 5000}`` for a public key in either SEC1 form."""
    x = int.from_bytes(secp256k1.decompress(pub)[1:33], "big")
    return f"contact-discovery-{x % PARTITIONS}"


def partitioned_topic(pub: bytes) -> str:
    """Content topic of a key's partition, where 1:1 messages to that key travel (shared by ~1/5000 of users)."""
    return content_topic(partitioned_name(pub))


def contact_code_name(pub: bytes) -> str:
    """status-go ``ContactCodeTopic``: ``0x{hex(uncompressed key)}-contact-code``."""
    return "0x" + secp256k1.decompress(pub).hex() + "-contact-code"


def contact_code_topic(pub: bytes) -> str:
    """Content topic of a key's contact-code channel (bundle advertisements)."""
    return content_topic(contact_code_name(pub))


def contact_code_key(pub: bytes) -> bytes:
    """Symmetric key of a key's contact-code channel (anyone who knows the key can derive it)."""
    return key_from_password(contact_code_name(pub))

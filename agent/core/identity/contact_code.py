"""The contact-code filter of a chat key: where Status publishes that key's signed X3DH bundle.

status-go ``transport.ContactCodeTopic``: the chat id is ``"0x" + hex(uncompressed key) + "-contact-code"``;
it is a symmetric ("public chat") filter, so the Waku content topic is
``/waku/1/0x<Keccak256(chat id)[:4]>/rfc26`` and the AES-256-GCM key is
``PBKDF2-HMAC-SHA256(chat id, salt="", 65356 iterations, 32 bytes)``. The derivations themselves live in
:mod:`agent.core.waku.topics` (the Waku layer owns topics and keys); this module only bundles them per
identity. Anyone who knows the public key can compute all three, so nothing here is secret in the usual
sense; the token is only needed to sign what is published there.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..waku import topics

__all__ = ["SYMKEY_PBKDF2_ITERATIONS", "ContactCode", "content_topic", "symmetric_key", "contact_code"]

SYMKEY_PBKDF2_ITERATIONS = topics.PBKDF2_ITERATIONS
content_topic = topics.content_topic
symmetric_key = topics.key_from_password


@dataclass(frozen=True)
class ContactCode:
    """Chat id, content topic and 32-byte symmetric key of one identity's contact-code filter."""

    chat_id: str
    content_topic: str
    sym_key: bytes
    pubsub_topic: str = ""  # empty: the node's default shard, as status-go leaves it


def contact_code(pub: bytes) -> ContactCode:
    """The contact-code filter of a public key (33 or 65 bytes); MalformedKey for anything else."""
    chat_id = topics.contact_code_name(pub)
    return ContactCode(chat_id, topics.contact_code_topic(pub), topics.contact_code_key(pub))

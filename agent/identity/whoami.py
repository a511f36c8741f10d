"""The ``whoami`` document: every form of a chat key a Status user recognises, for the CLI to print.

``keyagent whoami`` shows our own identity (with its key UID and installation), ``keyagent identity`` a
peer's (from any written form of its key). The contact-code fields are also what the daemon's identity
answer carries. The pure forms (zQ3…, share link, names, emoji and colour hash) come from
:mod:`agent.core.identity`; the key UID from :mod:`agent.identity.record`.
"""

from __future__ import annotations

import threading
from functools import lru_cache

from agent.core import secp256k1
from agent.core.identity import contact_code, legacy_key, share_link, visual_fields, zq3_encode
from agent.identity.record import ORIGIN_CHAT_KEY, StatusRecord, read_status_record

__all__ = [
    "contact_code_fields",
    "identity_document",
    "offline_document",
    "identity_text",
    "peer_document",
]


@lru_cache(maxsize=16)
def _contact_code_cached(pub33: bytes) -> tuple[str, str, bytes]:
    cc = contact_code(pub33)  # PBKDF2 with 65356 rounds: worth caching per identity
    return cc.chat_id, cc.content_topic, cc.sym_key


_cc_mu = threading.Lock()


def contact_code_fields(pub: bytes) -> dict[str, str]:
    """``contact_code_chat_id``, ``contact_code_topic`` and the hex ``contact_code_key`` of a key.

    Public knowledge (anyone who knows the key can compute them): where Status apps look for this identity's
    signed bundle, so an app can publish ours there.
    """
    with _cc_mu:
        chat_id, topic, key = _contact_code_cached(secp256k1.compress(pub))
    return {"contact_code_chat_id": chat_id, "contact_code_topic": topic, "contact_code_key": "0x" + key.hex()}


def identity_document(
    pub: bytes,
    record: StatusRecord,
    installation_id: str,
    *,
    visual: bool = True,
    contact: bool = True,
) -> dict[str, object]:
    """Everything ``keyagent whoami --json`` prints: the Status forms of the key, its UID, the installation,
    the share link, optionally the contact-code filter and the face-to-face checks (name, emoji, colour)."""
    pub33 = secp256k1.compress(pub)
    doc: dict[str, object] = {
        "identity": pub33.hex(),  # compressed hex, as `keyagent sessions`/`add-bundle` print identities
        "public_key": legacy_key(pub33),
        "compressed_key": zq3_encode(pub33),
        "key_uid": record.key_uid,
        "key_uid_origin": record.key_uid_origin,
        "installation_id": installation_id,
        "share_link": share_link(pub33),
        "address": "0x" + secp256k1.address(pub33).hex(),
    }
    if record.encryption_public_key:
        doc["encryption_public_key"] = record.encryption_public_key
    if contact:
        doc.update(contact_code_fields(pub33))
    if visual:
        doc.update(visual_fields(pub33))  # alias, emoji_hash, color_hash ([[length, colour], …]), color_id
    return doc


def offline_document(home: str, *, visual: bool = True, contact: bool = True) -> dict[str, object]:
    """The whoami document from ``HOME/config.json`` alone, for when no agent runs.

    The installation id lives in the agent's store, which is only opened with the key unlocked, so it is
    empty here. Raises backends' BackendConfigError when the home is not provisioned.
    """
    from backends.home import load_config

    cfg = load_config(home)
    pub = bytes.fromhex(cfg["identity_public_key"])
    return identity_document(pub, read_status_record(home, pub), "", visual=visual, contact=contact)


_TEXT_FIELDS = (
    ("alias", "Name"),
    ("emoji_hash", "Emoji hash"),
    ("color_hash", "Colour hash"),
    ("compressed_key", "Chat key"),
    ("public_key", "Public key"),
    ("share_link", "Share link"),
    ("key_uid", "Key UID"),
    ("installation_id", "Installation"),
    ("address", "Address"),
    ("contact_code_topic", "Contact code topic"),
    ("contact_code_key", "Contact code key"),
)


def identity_text(doc: dict[str, object]) -> str:
    """The document for a person: name, emoji and colour hash and the zQ3… key first, as Status shows them."""
    width = max(len(label) for _, label in _TEXT_FIELDS) + 1
    lines = []
    for key, label in _TEXT_FIELDS:
        if key not in doc:
            continue
        value = doc[key]
        if key == "color_hash" and isinstance(value, list):
            # [[segment length, colour index], …]: written "length×colour" so two people can compare them aloud
            value = " ".join(f"{seg[0]}×{seg[1]}" for seg in value if isinstance(seg, list) and len(seg) == 2)
        elif key == "installation_id" and not value:
            value = "(unknown: the agent is not running or not unlocked yet)"
        elif key == "key_uid" and doc.get("key_uid_origin") == ORIGIN_CHAT_KEY:
            value = f"{value} (of the chat key: this identity was not imported from a recovery phrase)"
        lines.append(f"{label + ':':<{width}} {value}")
    return "\n".join(lines)


def peer_document(text: str, *, contact: bool = True) -> dict[str, object]:
    """Any written form of a peer's chat key → all its forms, the face-to-face checks (name, emoji hash, colour
    hash) and, with ``contact``, the contact-code filter where that peer publishes its bundle.

    For contact import: two people compare the name and emoji hash aloud before trusting a pasted key. The key
    UID and installation ids of a peer cannot be known from its key, so they are absent. BadIdentity on bad text.
    """
    from agent.core.identity import parse_peer_identity

    pub33 = parse_peer_identity(text)
    doc: dict[str, object] = {
        "identity": pub33.hex(),
        "public_key": legacy_key(pub33),
        "compressed_key": zq3_encode(pub33),
        "share_link": share_link(pub33),
        "address": "0x" + secp256k1.address(pub33).hex(),
    }
    if contact:
        doc.update(contact_code_fields(pub33))
    doc.update(visual_fields(pub33))
    return doc

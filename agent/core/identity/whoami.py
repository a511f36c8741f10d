"""The fields ``keyagent whoami`` shows: everything a Status user recognises their identity by."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import MalformedKey
from .formats import legacy_key, share_link, zq3_encode

__all__ = ["whoami_fields", "whoami_text"]

_KEY_UID_RE = re.compile(r"0x[0-9a-f]{64}", re.ASCII)


def whoami_fields(pub33: bytes, key_uid: str, installation_id: str) -> dict[str, str]:
    """``public_key`` (0x04…), ``compressed_key`` (zQ3…), ``key_uid``, ``installation_id``, ``share_link``.

    The key UID cannot be recomputed from the chat key (it hashes the master key), so it is passed in as
    recorded at import; see :func:`agent.core.identity.derive.key_uid`.
    """
    if not _KEY_UID_RE.fullmatch(key_uid):
        raise MalformedKey("key UID must be 0x followed by 64 lower-case hex digits")
    if not isinstance(installation_id, str) or not installation_id:
        raise MalformedKey("installation id must be a non-empty string")
    return {
        "public_key": legacy_key(pub33),
        "compressed_key": zq3_encode(pub33),
        "key_uid": key_uid,
        "installation_id": installation_id,
        "share_link": share_link(pub33),
    }


_LABELS = (
    ("alias", "Name"),
    ("emoji_hash", "Emoji hash"),
    ("compressed_key", "Chat key"),
    ("public_key", "Public key"),
    ("share_link", "Share link"),
    ("key_uid", "Key UID"),
    ("installation_id", "Installation"),
)


def whoami_text(fields: Mapping[str, object]) -> str:
    """The fields for a person, one per line: the name and emoji hash (when given, e.g. merged from
    :func:`agent.core.identity.names.visual_fields`) and the zQ3… key first, as Status shows them."""
    width = max(len(label) for _, label in _LABELS)
    return "\n".join(f"{label + ':':<{width + 1}} {fields[key]}" for key, label in _LABELS if key in fields)

"""Status identities: recovery phrase → chat key, key UID, the written forms of a key, contact codes.

Pure (no disk except read-only package data: the BIP39 word list inside the ``mnemonic`` package and
status-go's MPL-2.0 alias/emoji lists in :mod:`.statusdata`; no randomness).
Derivation is hashlib + hmac + coincurve rather than bip-utils: see :mod:`.bip32` and :mod:`.bip39`
for why, and for what Python can and cannot zero.
"""

from __future__ import annotations

from .bip32 import ExtendedKey, PathError, derive_child, derive_path, master_key, parse_path
from .bip39 import PhraseError, PhraseProblem, check_phrase, normalize_phrase, phrase_to_seed
from .contact_code import ContactCode, contact_code
from .derive import (
    CHAT_PATH,
    ENCRYPTION_PATH,
    PATHS,
    DerivedIdentity,
    PhraseWarning,
    derive_identity,
    derive_secrets,
    key_uid,
)
from .formats import legacy_key, parse_peer_identity, parse_share_link, share_link, zq3_decode, zq3_encode
from .names import alias, color_hash, color_id, emoji_hash, visual_fields

__all__ = [
    "alias",
    "color_hash",
    "color_id",
    "emoji_hash",
    "CHAT_PATH",
    "ENCRYPTION_PATH",
    "PATHS",
    "ContactCode",
    "DerivedIdentity",
    "ExtendedKey",
    "PathError",
    "PhraseError",
    "PhraseProblem",
    "PhraseWarning",
    "check_phrase",
    "contact_code",
    "derive_child",
    "derive_identity",
    "derive_path",
    "derive_secrets",
    "key_uid",
    "legacy_key",
    "master_key",
    "normalize_phrase",
    "parse_path",
    "parse_peer_identity",
    "parse_share_link",
    "phrase_to_seed",
    "share_link",
    "visual_fields",
    "zq3_decode",
    "zq3_encode",
]

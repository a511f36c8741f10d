"""Our Status identity as the home records it: the key UID in ``HOME/config.json``.

Not pure (reads and writes ``HOME/config.json``); the pure parts live in :mod:`agent.core.identity`.

Where the key UID lives: the top-level ``"status"`` object of ``HOME/config.json`` (backends.home keeps
unknown top-level keys)::

    "status": {
      "key_uid": "0x<64 hex>",                 # sha256 of the BIP32 master public key: only known at import
      "key_uid_origin": "recovery_phrase",
      "encryption_public_key": "0x04…"         # m/43'/60'/1581'/1'/0: Status's database password
    }

A home whose key was generated or adopted (not imported from a phrase) has no master key, so no recorded
UID; its ``key_uid`` is then what Status computes for an account imported from a raw private key, the
SHA-256 of the chat key itself, and ``key_uid_origin`` says ``"chat_key"`` so nobody mistakes it for the
phrase's UID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agent.core import secp256k1
from agent.core.error_codes import CodedError, ErrorCode
from agent.core.identity import DerivedIdentity, key_uid
from backends.home_config import HomeConfigError, read_home_config

__all__ = [
    "STATUS_SECTION",
    "ORIGIN_PHRASE",
    "ORIGIN_CHAT_KEY",
    "StatusRecord",
    "IdentityMismatchError",
    "status_section",
    "record_phrase_identity",
    "read_status_record",
]

STATUS_SECTION = "status"
ORIGIN_PHRASE = "recovery_phrase"
ORIGIN_CHAT_KEY = "chat_key"
_KEY_UID_RE = re.compile(r"0x[0-9a-f]{64}", re.ASCII)


class IdentityMismatchError(CodedError, ValueError):
    """The home's key is not the key the phrase derives: nothing is recorded."""

    code = ErrorCode.IDENTITY_CHANGED


@dataclass(frozen=True)
class StatusRecord:
    """The recorded (or, without a phrase, computed) Status facts of the home's identity."""

    key_uid: str
    key_uid_origin: str  # "recovery_phrase" or "chat_key"
    encryption_public_key: str = ""  # "0x04…" when imported from a phrase, else ""


def status_section(derived: DerivedIdentity) -> dict[str, str]:
    """The ``"status"`` config object for an identity derived from a phrase (public facts only)."""
    return {
        "key_uid": derived.key_uid,
        "key_uid_origin": ORIGIN_PHRASE,
        "encryption_public_key": "0x" + derived.encryption_public_key.hex(),
    }


def record_phrase_identity(home: str, derived: DerivedIdentity) -> dict[str, Any]:
    """Add the ``"status"`` section to a provisioned home's config (atomic rewrite, 0600).

    Refuses (IdentityMismatchError, nothing written) when the config names another identity key.
    """
    from backends.home import load_config, write_config

    cfg = load_config(home)
    if bytes.fromhex(cfg["identity_public_key"]) != derived.chat_public_key:
        raise IdentityMismatchError("the home's identity key is not the key this recovery phrase derives")
    new = dict(cfg)
    new[STATUS_SECTION] = status_section(derived)
    write_config(home, new)
    return new


def _read_config(home: str) -> dict[str, Any] | None:
    """The config's JSON object, or None for any file that is missing, unreadable, oversize or not an object."""
    try:
        doc = read_home_config(home)
    except HomeConfigError:
        return None
    return doc if isinstance(doc, dict) else None


def read_status_record(home: str, pub33: bytes) -> StatusRecord:
    """The recorded key UID of ``pub33`` in ``home``, else the chat-key UID (never raises on a bad file).

    A ``"status"`` section is only believed when the config's identity key is ``pub33`` (a section left
    over from another identity must not label this one).
    """
    cfg = _read_config(home)
    sec = cfg.get(STATUS_SECTION) if cfg is not None else None
    if cfg is not None and isinstance(sec, dict) and cfg.get("identity_public_key") == pub33.hex():
        uid = sec.get("key_uid")
        enc = sec.get("encryption_public_key", "")
        if isinstance(uid, str) and _KEY_UID_RE.fullmatch(uid):
            origin = sec.get("key_uid_origin")
            return StatusRecord(uid, origin if isinstance(origin, str) and origin else ORIGIN_PHRASE,
                                enc if isinstance(enc, str) else "")
    return StatusRecord(key_uid(secp256k1.decompress(pub33)), ORIGIN_CHAT_KEY)

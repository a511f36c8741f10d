"""Our Status identity as the home records it: phrase import, the key UID, and the ``whoami`` document.

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

import json
import os
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, BinaryIO, Callable

from agent.core import secp256k1
from agent.core.error_codes import CodedError, ErrorCode
from agent.core.identity import (
    DerivedIdentity,
    contact_code,
    key_uid,
    legacy_key,
    share_link,
    visual_fields,
    zq3_encode,
)
from agent.identity_input import Mode, read_and_derive
from backends.files import FileTooLarge, read_capped

__all__ = [
    "STATUS_SECTION",
    "CONFIG_NAME",
    "StatusRecord",
    "IdentityMismatchError",
    "status_section",
    "record_phrase_identity",
    "provision_from_phrase",
    "read_status_record",
    "contact_code_fields",
    "identity_document",
    "offline_document",
    "identity_text",
    "identity_text_key",
    "peer_document",
    "PhraseImport",
    "init_from_phrase",
    "IMPORTED_NOTICE",
]

STATUS_SECTION = "status"
CONFIG_NAME = "config.json"
ORIGIN_PHRASE = "recovery_phrase"
ORIGIN_CHAT_KEY = "chat_key"
_KEY_UID_RE = re.compile(r"0x[0-9a-f]{64}", re.ASCII)
_MAX_CONFIG = 1 << 20


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


def provision_from_phrase(home: str, backend_kind: str, derived: DerivedIdentity, **provision: Any) -> dict[str, Any]:
    """Provision ``home`` with the phrase-derived chat key (backends.home.provision_identity) and record its UID.

    The key goes into the token as a SENSITIVE, non-EXTRACTABLE object (which the token marks as imported,
    i.e. not NEVER_EXTRACTABLE), or into the software key file. If recording the UID fails the provisioned
    home is left as it is (its key is right; ``record_phrase_identity`` can be run again) and the error raised.
    The caller still wipes ``derived``; the one immutable copy made here for the backend is dropped at once.
    """
    from backends.home import provision_identity

    secret = bytes(derived.chat_secret)  # the backends take bytes; Python cannot zero this copy, only drop it
    try:
        provision_identity(home, backend_kind, import_secret=secret, **provision)
    finally:
        del secret
    return record_phrase_identity(home, derived)


def _read_config(home: str) -> dict[str, Any] | None:
    path = os.path.join(home, CONFIG_NAME)
    try:
        raw = read_capped(path, _MAX_CONFIG)
    except (OSError, FileTooLarge):
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
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


def identity_text_key(data: bytes) -> bytes | None:
    """For a socket field that takes a peer key: the 33-byte key of identity *text*, or None for raw key bytes.

    Raw keys are 33 or 65 bytes; no written form (0x04… 132, hex 66/68, zQ3… 49, links 70+ characters) has
    either length, so the two cannot be confused. Printable ASCII of any other length is parsed with
    :func:`agent.core.identity.parse_peer_identity` (BadIdentity, code BAD_IDENTITY, when it is no Status key);
    None means "treat as raw bytes" (the caller's own length/curve checks then give BAD_REQUEST).
    """
    if len(data) in (33, 65) or not data.strip() or not data.isascii():
        return None
    text = bytes(data).decode("ascii")
    if not text.strip().isprintable():
        return None
    from agent.core.identity import parse_peer_identity

    return parse_peer_identity(text)


#: What the user is told after a token import: the token itself records the key as imported, so a later audit
#: (pkcs11-tool --list-objects) shows it SENSITIVE but not "never extractable" / "local", and that is the truth.
IMPORTED_NOTICE = (
    "the chat key was IMPORTED into the token: it is stored sensitive and non-extractable, but it is not "
    '"never extractable": it existed outside the token (derived from your recovery phrase, which can '
    "re-create it anywhere). Keep the phrase offline."
)


@dataclass(frozen=True)
class PhraseImport:
    """What ``keyagent init --from-phrase`` reports: public facts only."""

    config: dict[str, Any]
    public_key: bytes  # 33-byte compressed chat key
    key_uid: str
    problems: tuple[str, ...]  # phrase problems (bad checksum, unknown word, word count): derived anyway


def init_from_phrase(
    home: str,
    backend_kind: str,
    *,
    stdin: BinaryIO | None = None,
    mode: Mode = "auto",
    pinentry_program: str | None = None,
    warn: Callable[[str], None] | None = None,
    **provision: Any,
) -> PhraseImport:
    """Read a recovery phrase (stdin / pinentry / terminal, never argv or env), derive the chat key exactly as
    Status does, provision the home with it, record its key UID; the phrase and seed buffers are zeroed as soon
    as the key is derived, the chat secret as soon as it is stored (also on failure).

    ``warn(text)`` receives one line per phrase problem (default: stderr); a bad checksum warns but derives, as
    Status does. ``provision`` goes to :func:`backends.home.provision_identity` (module, token, pin,
    passphrase, ...). Nothing here logs: the only output is ``warn`` lines, which never quote the phrase.
    """
    import sys
    import warnings

    from agent.core.identity import PhraseWarning
    def _stderr(text: str) -> None:
        print(f"keyagent: warning: {text}", file=sys.stderr)

    say = warn or _stderr
    if os.path.exists(os.path.join(home, CONFIG_NAME)):
        from backends.errors import KeyExists

        raise KeyExists(f"{os.path.join(home, CONFIG_NAME)} already exists; this home is provisioned")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PhraseWarning)  # reported once below, from derived.problems
        derived = read_and_derive(stdin, mode=mode, pinentry_program=pinentry_program)
    try:
        problems = tuple(p.value + "; deriving anyway, as Status does" for p in derived.problems)
        for line in problems:
            say(line)
        cfg = provision_from_phrase(home, backend_kind, derived, **provision)
        return PhraseImport(cfg, derived.chat_public_key, derived.key_uid, problems)
    finally:
        derived.wipe()


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

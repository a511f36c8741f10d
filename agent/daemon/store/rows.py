"""The row codec every store shares: records and write operations, the data key, sealing, and the neutral row
form (table, column values) that a storage engine turns into its own SQL.

Encrypted at rest
    A random 32-byte data key is never stored. It is derived from a Diffie-Hellman of the identity key (held by
    the backend: the token, or the software key file) with a random public point saved in ``meta``:
    ``data_key = HKDF-SHA256(IK.dh(P), salt="keyagent/store", info="data key v1")``. The ratchet state and the
    shared key of every session are sealed with AES-256-GCM under that key; the associated data binds the
    ciphertext to its table, column and row id, so a sealed value cannot be moved to another row. Whatever
    holds the rows (a SQLite file, a PostgreSQL server and its replicas and backups) therefore sees no session
    key without the token. A key-check value detects a store opened with the wrong identity
    (``StoreKeyMismatch``) before anything is written.

Engines know nothing of this: they store the values :meth:`RowCodec.encode` gives them, hand back rows in the
column order of :data:`TABLES`, and the codec checks and decodes those.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import coincurve
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.core import secp256k1
from agent.core.error_codes import CodedError, ErrorCode
from agent.core.keyops import KeyOps

__all__ = [
    "StoreError",
    "StoreFailed",
    "StoreKeyMismatch",
    "StoreVersionTooNew",
    "StoreCorrupt",
    "StoreUnavailable",
    "SessionRecord",
    "SessionSummary",
    "InstallationRecord",
    "OwnSpkRecord",
    "PutSession",
    "PutInstallation",
    "PutOwnSpk",
    "PutMeta",
    "PutPeerReply",
    "DeleteSession",
    "Op",
    "Write",
    "TABLES",
    "KEY_META",
    "RowCodec",
    "new_key_wrapping",
]


class StoreError(CodedError, RuntimeError):
    """Base of the store's errors; the daemon reports these as internal/state errors, not bad input."""

    code = ErrorCode.STATE_ERROR


class StoreFailed(StoreError):
    """A commit failed; memory and disk may differ, so nothing more is accepted until a restart."""


class StoreUnavailable(StoreFailed):
    """The database server cannot be reached (down, restarting, or cut off): retry once it is back; nothing
    that was not reported durable was handed out."""


class StoreKeyMismatch(StoreError):
    """The store's data key does not unwrap with this identity: wrong key, wrong token, or tampered meta."""


class StoreVersionTooNew(StoreError):
    """The database was written by a newer agent whose schema we do not know."""


class StoreCorrupt(StoreError):
    """A sealed value failed authentication (tampered or moved between rows)."""


# --- records --------------------------------------------------------------------------------------------------


@dataclass
class SessionRecord:
    """One pairwise Double Ratchet session with one installation of one identity.

    ``bundle_id`` is the responder's SPK (33 bytes), as on the wire in ``DRHeader.id``; ``ephemeral`` is the
    initiator's EK, which makes a session id unique even when the same SPK was used twice.
    """

    sid: bytes
    identity: bytes
    installation_id: str
    bundle_id: bytes
    ephemeral: bytes
    initiator: bool
    confirmed: bool
    expired: bool
    created_ns: int
    last_used_ns: int
    send_hwm: int
    sk: bytes
    state: bytes


@dataclass(frozen=True)
class SessionSummary:
    """The unsealed columns of a session row (listing and upkeep need no keys)."""

    sid: bytes
    identity: bytes
    installation_id: str
    bundle_id: bytes
    initiator: bool
    confirmed: bool
    expired: bool
    created_ns: int
    last_used_ns: int


@dataclass
class InstallationRecord:
    """A device of an identity (ours or a peer's), as learnt from its latest signed bundle."""

    identity: bytes
    installation_id: str
    spk: bytes | None
    spk_version: int
    protocol_version: int
    timestamp_ns: int
    enabled: bool
    first_seen_ns: int


@dataclass
class OwnSpkRecord:
    """Metadata of one of our signed prekeys; the private half lives in the backend (token or key file)."""

    version: int
    public: bytes
    created_ns: int
    expired_ns: int | None
    destroyed: bool


@dataclass(frozen=True)
class PutSession:
    rec: SessionRecord


@dataclass(frozen=True)
class PutInstallation:
    rec: InstallationRecord


@dataclass(frozen=True)
class PutOwnSpk:
    rec: OwnSpkRecord


@dataclass(frozen=True)
class PutMeta:
    key: str
    value: bytes


@dataclass(frozen=True)
class PutPeerReply:
    """When we last answered this peer with our bundle (the per-peer rate limit survives restarts)."""

    identity: bytes
    at_ns: int


@dataclass(frozen=True)
class DeleteSession:
    """Forget a session for good (expired and unused past the retention period): its keys leave the disk."""

    sid: bytes


Op = Union[PutSession, PutInstallation, PutOwnSpk, PutMeta, PutPeerReply, DeleteSession]


@dataclass(frozen=True)
class Write:
    """One row write in engine-neutral form: ``put`` replaces the row whose key columns match ``values``
    (all columns of ``table`` in :data:`TABLES` order); ``delete`` removes the row with key ``values``."""

    kind: str  # "put" | "delete"
    table: str
    values: tuple[object, ...]


#: table -> (columns in row order, number of leading key columns); every engine's schema has these columns
TABLES: dict[str, tuple[tuple[str, ...], int]] = {
    "meta": (("key", "value"), 1),
    "own_spks": (("version", "public", "created_ns", "expired_ns", "destroyed"), 1),
    "installations": (("identity", "installation_id", "spk", "spk_version", "protocol_version", "timestamp_ns",
                       "enabled", "first_seen_ns"), 2),
    "sessions": (("sid", "identity", "installation_id", "bundle_id", "ephemeral", "initiator", "confirmed",
                  "expired", "created_ns", "last_used_ns", "send_hwm", "sk", "state"), 1),
    "peer_replies": (("identity", "at_ns"), 1),
}

#: the meta rows that hold the data-key wrapping; written once, when a store is created, never by a batch
KEY_META = ("wrap_point", "key_check")

SESSION_SUMMARY_COLUMNS = ("sid", "identity", "installation_id", "bundle_id", "initiator", "confirmed", "expired",
                           "created_ns", "last_used_ns")

_CHECK_PLAINTEXT = b"keyagent store key check v1"
_AD_PREFIX = b"keyagent/store/v1|"


def _blob(v: object) -> bytes:
    # SQLite columns are dynamically typed: a hand-edited row could hold anything; bytes(5) would be 5 zeros
    if isinstance(v, memoryview):  # PostgreSQL's bytea arrives as a memoryview
        return bytes(v)
    if not isinstance(v, bytes):
        raise StoreCorrupt(f"state row holds {type(v).__name__} where bytes belong")
    return v


def _text(v: object) -> str:
    if not isinstance(v, str):
        raise StoreCorrupt(f"state row holds {type(v).__name__} where text belongs")
    return v


def _int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise StoreCorrupt(f"state row holds {type(v).__name__} where an integer belongs")
    return v


def _derive_data_key(identity: KeyOps, point: bytes) -> bytes:
    shared = identity.dh(point)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"keyagent/store", info=b"data key v1").derive(shared)


def _random_secret(rng: Callable[[int], bytes]) -> bytes:
    while True:
        s = rng(32)
        if secp256k1.valid_secret(s):
            return s


def new_key_wrapping(identity: KeyOps, rng: Callable[[int], bytes] = os.urandom) -> dict[str, bytes]:
    """The meta rows of a new store: a random public point (its secret is dropped at once, so only IK can redo
    the DH) and the key check sealed under the key that DH gives."""
    point = coincurve.PrivateKey(_random_secret(rng)).public_key.format(compressed=True)
    key = _derive_data_key(identity, point)
    nonce = rng(12)
    return {"wrap_point": point, "key_check": nonce + AESGCM(key).encrypt(nonce, _CHECK_PLAINTEXT, b"key_check")}


class RowCodec:
    """Seals, encodes and decodes the rows of one store under its data key (unwrapped from its meta rows)."""

    def __init__(self, identity: KeyOps, key_meta: dict[str, object], *,
                 rng: Callable[[int], bytes] = os.urandom) -> None:
        self._rng = rng
        self._aead = AESGCM(self._unwrap(identity, key_meta))

    @staticmethod
    def _unwrap(identity: KeyOps, rows: dict[str, object]) -> bytes:
        try:
            key = _derive_data_key(identity, _blob(rows.get("wrap_point")))
        except (ValueError, StoreCorrupt):  # not a curve point: the meta row was tampered with
            raise StoreKeyMismatch("this store's key wrapping is damaged") from None
        check = rows.get("key_check", b"")
        if isinstance(check, memoryview):
            check = bytes(check)
        if not isinstance(check, bytes):
            raise StoreKeyMismatch("this store's key check is damaged")
        try:
            if AESGCM(key).decrypt(check[:12], check[12:], b"key_check") != _CHECK_PLAINTEXT:
                raise InvalidTag
        except (InvalidTag, ValueError):
            raise StoreKeyMismatch("this store's state was sealed for another identity key") from None
        return key

    # --- sealing ----------------------------------------------------------------------------------------------

    def seal(self, value: bytes, *ad_parts: bytes) -> bytes:
        """AES-256-GCM under the data key; ``ad_parts`` name the slot (table, column, row id)."""
        nonce = self._rng(12)
        return nonce + self._aead.encrypt(nonce, value, _AD_PREFIX + b"|".join(ad_parts))

    def unseal(self, blob: bytes, *ad_parts: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], _AD_PREFIX + b"|".join(ad_parts))
        except (InvalidTag, ValueError):
            raise StoreCorrupt("a sealed state value failed authentication") from None

    # --- rows out ---------------------------------------------------------------------------------------------

    def encode(self, op: Op) -> Write:
        """The row write of one operation (sealing happens here, in the submitting thread)."""
        if isinstance(op, PutSession):
            r = op.rec
            return Write("put", "sessions", (
                r.sid, r.identity, r.installation_id, r.bundle_id, r.ephemeral, int(r.initiator),
                int(r.confirmed), int(r.expired), r.created_ns, r.last_used_ns, r.send_hwm,
                self.seal(r.sk, b"sessions", b"sk", r.sid),
                self.seal(r.state, b"sessions", b"state", r.sid),
            ))
        if isinstance(op, PutInstallation):
            i = op.rec
            return Write("put", "installations", (
                i.identity, i.installation_id, i.spk, i.spk_version, i.protocol_version, i.timestamp_ns,
                int(i.enabled), i.first_seen_ns,
            ))
        if isinstance(op, PutOwnSpk):
            s = op.rec
            return Write("put", "own_spks", (s.version, s.public, s.created_ns, s.expired_ns, int(s.destroyed)))
        if isinstance(op, PutMeta):
            if op.key in KEY_META:
                raise ValueError("the data-key wrapping is not writable")
            return Write("put", "meta", (op.key, op.value))
        if isinstance(op, DeleteSession):
            return Write("delete", "sessions", (op.sid,))
        if isinstance(op, PutPeerReply):
            return Write("put", "peer_replies", (op.identity, op.at_ns))
        raise TypeError(f"unknown store op {op!r}")

    # --- rows in (column order of TABLES) ---------------------------------------------------------------------

    def session(self, r: Sequence[object]) -> SessionRecord:
        sid = _blob(r[0])
        return SessionRecord(
            sid=sid,
            identity=_blob(r[1]),
            installation_id=_text(r[2]),
            bundle_id=_blob(r[3]),
            ephemeral=_blob(r[4]),
            initiator=bool(_int(r[5])),
            confirmed=bool(_int(r[6])),
            expired=bool(_int(r[7])),
            created_ns=_int(r[8]),
            last_used_ns=_int(r[9]),
            send_hwm=_int(r[10]),
            sk=self.unseal(_blob(r[11]), b"sessions", b"sk", sid),
            state=self.unseal(_blob(r[12]), b"sessions", b"state", sid),
        )

    @staticmethod
    def session_summary(r: Sequence[object]) -> SessionSummary:
        """A row of :data:`SESSION_SUMMARY_COLUMNS`."""
        return SessionSummary(_blob(r[0]), _blob(r[1]), _text(r[2]), _blob(r[3]), bool(_int(r[4])),
                              bool(_int(r[5])), bool(_int(r[6])), _int(r[7]), _int(r[8]))

    @staticmethod
    def session_peer(r: Sequence[object]) -> tuple[bytes, str]:
        return _blob(r[0]), _text(r[1])

    @staticmethod
    def installation(r: Sequence[object]) -> InstallationRecord:
        return InstallationRecord(
            identity=_blob(r[0]),
            installation_id=_text(r[1]),
            spk=None if r[2] is None else _blob(r[2]),
            spk_version=_int(r[3]),
            protocol_version=_int(r[4]),
            timestamp_ns=_int(r[5]),
            enabled=bool(_int(r[6])),
            first_seen_ns=_int(r[7]),
        )

    @staticmethod
    def own_spk(r: Sequence[object]) -> OwnSpkRecord:
        return OwnSpkRecord(_int(r[0]), _blob(r[1]), _int(r[2]), None if r[3] is None else _int(r[3]),
                            bool(_int(r[4])))

    @staticmethod
    def meta_value(v: object) -> bytes:
        return _blob(v)

    @staticmethod
    def peer_reply(r: Sequence[object]) -> tuple[bytes, int]:
        return _blob(r[0]), _int(r[1])

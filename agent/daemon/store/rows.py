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

Authenticated at rest
    Every row carries a ``mac`` column: HMAC-SHA256, under a key derived from the data key, over the table name
    and every other column of the row in a length-prefixed encoding. A session's sealed ``sk`` and ``state`` are
    bound to that MAC too (it is part of their associated data), so an identity, installation, send mark or
    flag edited offline, a sealed value from another row or from an older version of the same row, or a row
    copied under another id fails (``StoreCorrupt``); a session id is also recomputed from its parts. The
    data-key rows (``wrap_point``, ``key_check``) need no MAC: the key check authenticates them. Not detected by
    MACs: a whole row replaced by an older, validly MAC'd version of itself (that is a rollback of the store;
    :mod:`agent.daemon.store.anchor` detects a rolled-back store as a whole).

Engines know nothing of this: they store the values :meth:`RowCodec.encode` gives them, hand back rows in the
column order of :data:`TABLES`, and the codec checks and decodes those.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, Union

import coincurve
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.core import secp256k1
from agent.core.error_codes import CodedError, ErrorCode
from agent.core.keyops import KeyOps

log = logging.getLogger(__name__)

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
    "DeletePeerReply",
    "DeleteInstallation",
    "PutStranger",
    "DeleteStranger",
    "DeleteSession",
    "Op",
    "Write",
    "TABLES",
    "KEY_META",
    "RowCodec",
    "new_key_wrapping",
    "session_id",
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

    def copy(self) -> "SessionRecord":
        """A shallow copy (what a write takes: the live record keeps changing), without copy.copy's overhead."""
        new = object.__new__(SessionRecord)
        new.__dict__.update(self.__dict__)
        return new


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


class Serialisable(Protocol):
    """A value serialised only when written (a ratchet's :class:`~agent.core.ratchet.StateSnapshot`)."""

    def to_bytes(self) -> bytes: ...


@dataclass(frozen=True)
class PutSession:
    """``state``, when given, is the row's state in place of ``rec.state`` (made into bytes by the commit that
    writes it: of several versions of one session queued for one commit, only the last is ever serialised)."""

    rec: SessionRecord
    state: Serialisable | None = None


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
class PutStranger:
    """An identity first learned from a message that reads without a session, and when: the oldest of these is
    forgotten again past the cap (sessions.py, "What a stranger can make us store")."""

    identity: bytes
    learned_ns: int


@dataclass(frozen=True)
class DeleteStranger:
    identity: bytes


@dataclass(frozen=True)
class DeleteInstallation:
    """Forget one installation of a peer we have no session with (a stranger's bundle, evicted)."""

    identity: bytes
    installation_id: str


@dataclass(frozen=True)
class DeletePeerReply:
    """Forget when we last answered this peer: the time is older than the reply interval and limits nothing."""

    identity: bytes


@dataclass(frozen=True)
class DeleteSession:
    """Forget a session for good (expired and unused past the retention period): its keys leave the disk."""

    sid: bytes


Op = Union[PutSession, PutInstallation, PutOwnSpk, PutMeta, PutPeerReply, DeletePeerReply, DeleteInstallation,
           PutStranger, DeleteStranger, DeleteSession]


@dataclass(frozen=True)
class Write:
    """One row write in engine-neutral form: ``put`` replaces the row whose key columns match ``values``
    (all columns of ``table`` in :data:`TABLES` order); ``delete`` removes the row with key ``values``."""

    kind: str  # "put" | "delete"
    table: str
    values: tuple[object, ...]


#: table -> (columns in row order, number of leading key columns); every engine's schema has these columns
TABLES: dict[str, tuple[tuple[str, ...], int]] = {
    "meta": (("key", "value", "mac"), 1),
    "own_spks": (("version", "public", "created_ns", "expired_ns", "destroyed", "mac"), 1),
    "installations": (("identity", "installation_id", "spk", "spk_version", "protocol_version", "timestamp_ns",
                       "enabled", "first_seen_ns", "mac"), 2),
    "sessions": (("sid", "identity", "installation_id", "bundle_id", "ephemeral", "initiator", "confirmed",
                  "expired", "created_ns", "last_used_ns", "send_hwm", "sk", "state", "mac"), 1),
    "peer_replies": (("identity", "at_ns", "mac"), 1),
    "strangers": (("identity", "learned_ns", "mac"), 1),
}

#: the tables born with MACs (SQLite schema 5, PostgreSQL schema 3): no row of theirs ever lacked one
_BORN_MACED = frozenset({"strangers"})

#: the columns of each table before MACs existed (schema 3 and older): what a migration reads to add them
UNMACED: dict[str, tuple[str, ...]] = {t: cols[:-1] for t, (cols, _n) in TABLES.items() if t not in _BORN_MACED}

#: the meta rows that hold the data-key wrapping; written once, when a store is created, never by a batch
KEY_META = ("wrap_point", "key_check")

#: the unsealed columns of a session row and its MAC: what a summary reads (enough to authenticate it)
SESSION_SUMMARY_COLUMNS = ("sid", "identity", "installation_id", "bundle_id", "ephemeral", "initiator", "confirmed",
                           "expired", "created_ns", "last_used_ns", "send_hwm", "mac")

_CHECK_PLAINTEXT = b"keyagent store key check v1"
_AD_PREFIX = b"keyagent/store/v1|"
_MAC_PREFIX = b"keyagent/store/row-mac/v1"


@functools.lru_cache(maxsize=4096)
def session_id(identity: bytes, installation_id: str, bundle_id: bytes, ephemeral: bytes) -> bytes:
    """Local row id of a session (never on the wire): derived from its parts, so a row cannot be re-filed under
    another id; SHA-256 because it is computed on every X3DH message (twice: remembered for the busy ones; a
    status-go peer sends the X3DH header on every message until we answer)."""
    h = hashlib.sha256(b"keyagent/session\x00")
    for part in (identity, installation_id.encode(), bundle_id, ephemeral):
        h.update(len(part).to_bytes(4, "big") + part)
    return h.digest()[:16]


def _canonical(table: str, values: Sequence[object]) -> bytes:
    """An unambiguous encoding of a row's values (type tag, length, bytes) for its MAC."""
    out = [_MAC_PREFIX, len(table).to_bytes(1, "big"), table.encode()]
    for v in values:
        if v is None:
            out.append(b"N")
        elif isinstance(v, int):  # bools were stored as 0/1 ints; both sides MAC the int
            out.append(b"I" + int(v).to_bytes(9, "big", signed=True))
        elif isinstance(v, bytes):
            out.append(b"B" + len(v).to_bytes(4, "big") + v)
        elif isinstance(v, str):
            b = v.encode("utf-8", "surrogatepass")
            out.append(b"S" + len(b).to_bytes(4, "big") + b)
        else:
            raise TypeError(f"cannot MAC a {type(v).__name__}")
    return b"".join(out)


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


class _NoncePool:
    """Random AES-GCM nonces read from the OS 4 KiB at a time: every state write seals two values, and a
    ``getrandom`` system call per nonce was a measurable part of a decrypt. Only nonces come from here (never a
    key), the pool is emptied in a forked child so two processes never draw the same bytes, and it is
    thread-safe (rows are sealed in whichever thread submits a batch, sessions by the commit leader)."""

    _SIZE = 4096

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._buf = b""
        self._pos = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._buf, self._pos = b"", 0

    def take(self, n: int) -> bytes:
        with self._mu:
            if self._pos + n > len(self._buf):
                self._buf, self._pos = os.urandom(self._SIZE), 0
            out = self._buf[self._pos:self._pos + n]
            self._pos += n
            return out


_NONCES = _NoncePool()


class RowCodec:
    """Seals, encodes and decodes the rows of one store under its data key (unwrapped from its meta rows)."""

    def __init__(self, identity: KeyOps, key_meta: dict[str, object], *,
                 rng: Callable[[int], bytes] = os.urandom) -> None:
        # the OS's randomness, pooled for nonces; a caller's own rng (tests) is used as given
        self._rng = _NONCES.take if rng is os.urandom else rng
        key = self._unwrap(identity, key_meta)
        self._aead = AESGCM(key)
        self._mac_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"keyagent/store",
                             info=b"row mac key v1").derive(key)

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

    # --- row MACs ---------------------------------------------------------------------------------------------

    def mac(self, table: str, values: Sequence[object]) -> bytes:
        """The MAC of one row's values (every column but the sealed ones and the MAC itself)."""
        return hmac.new(self._mac_key, _canonical(table, values), hashlib.sha256).digest()

    def _check(self, table: str, values: Sequence[object], stored: object) -> bytes:
        if stored is None:
            raise StoreCorrupt(f"a {table} row has no MAC")
        got = _blob(stored)
        want = self.mac(table, values)
        if not hmac.compare_digest(got, want):
            raise StoreCorrupt(f"a {table} row failed authentication (edited, or copied from another row)")
        return got

    def add_mac(self, table: str, old: Sequence[object]) -> tuple[object, ...]:
        """A row written before MACs existed (columns of :data:`UNMACED`), as it is written now: its MAC added,
        a session's sealed values resealed to be bound to it. For the schema migration only."""
        if table != "sessions":
            return (*old, self.mac(table, [_typed(v) for v in old]))
        sid = _blob(old[0])
        head = [_typed(v) for v in old[:11]]
        sk = self.unseal(_blob(old[11]), b"sessions", b"sk", sid)
        state = self.unseal(_blob(old[12]), b"sessions", b"state", sid)
        tag = self.mac("sessions", head)
        return (*old[:11], self.seal(sk, b"sessions", b"sk", sid, tag), self.seal(state, b"sessions", b"state", sid, tag),
                tag)

    # --- rows out ---------------------------------------------------------------------------------------------

    def encode(self, op: Op) -> Write:
        """The row write of one operation (sealing happens here, in the submitting thread)."""
        if isinstance(op, PutSession):
            r = op.rec
            head = (r.sid, r.identity, r.installation_id, r.bundle_id, r.ephemeral, int(r.initiator),
                    int(r.confirmed), int(r.expired), r.created_ns, r.last_used_ns, r.send_hwm)
            tag = self.mac("sessions", head)
            return Write("put", "sessions", (
                *head,
                self.seal(r.sk, b"sessions", b"sk", r.sid, tag),
                self.seal(r.state if op.state is None else op.state.to_bytes(), b"sessions", b"state", r.sid, tag),
                tag,
            ))
        if isinstance(op, PutInstallation):
            i = op.rec
            return self._row("installations", (
                i.identity, i.installation_id, i.spk, i.spk_version, i.protocol_version, i.timestamp_ns,
                int(i.enabled), i.first_seen_ns,
            ))
        if isinstance(op, PutOwnSpk):
            s = op.rec
            return self._row("own_spks", (s.version, s.public, s.created_ns, s.expired_ns, int(s.destroyed)))
        if isinstance(op, PutMeta):
            if op.key in KEY_META:
                raise ValueError("the data-key wrapping is not writable")
            return self._row("meta", (op.key, op.value))
        if isinstance(op, DeleteSession):
            return Write("delete", "sessions", (op.sid,))
        if isinstance(op, PutPeerReply):
            return self._row("peer_replies", (op.identity, op.at_ns))
        if isinstance(op, DeletePeerReply):
            return Write("delete", "peer_replies", (op.identity,))
        if isinstance(op, DeleteInstallation):
            return Write("delete", "installations", (op.identity, op.installation_id))
        if isinstance(op, PutStranger):
            return self._row("strangers", (op.identity, op.learned_ns))
        if isinstance(op, DeleteStranger):
            return Write("delete", "strangers", (op.identity,))
        raise TypeError(f"unknown store op {op!r}")

    def _row(self, table: str, values: tuple[object, ...]) -> Write:
        return Write("put", table, (*values, self.mac(table, values)))

    # --- rows in (column order of TABLES; every row is authenticated before it is used) -----------------------

    def _session_head(self, r: Sequence[object]) -> tuple[bytes, list[object]]:
        """The unsealed columns of a session row (``r[0:11]``), authenticated against the MAC in ``r[mac_at]``
        and with the session id recomputed from its parts; returns (MAC, typed values)."""
        head: list[object] = [_blob(r[0]), _blob(r[1]), _text(r[2]), _blob(r[3]), _blob(r[4])]
        head += [_int(v) for v in r[5:11]]
        tag = self._check("sessions", head, r[-1])
        sid, identity, iid, bundle_id, ephemeral = head[:5]
        assert isinstance(sid, bytes) and isinstance(identity, bytes) and isinstance(iid, str)
        assert isinstance(bundle_id, bytes) and isinstance(ephemeral, bytes)
        if session_id(identity, iid, bundle_id, ephemeral) != sid:
            raise StoreCorrupt("a session row is filed under an id that is not its own")
        return tag, head

    def session(self, r: Sequence[object]) -> SessionRecord:
        tag, h = self._session_head(r)
        sid = _blob(r[0])
        return SessionRecord(
            sid=sid,
            identity=_blob(h[1]),
            installation_id=_text(h[2]),
            bundle_id=_blob(h[3]),
            ephemeral=_blob(h[4]),
            initiator=bool(h[5]),
            confirmed=bool(h[6]),
            expired=bool(h[7]),
            created_ns=_int(h[8]),
            last_used_ns=_int(h[9]),
            send_hwm=_int(h[10]),
            sk=self.unseal(_blob(r[11]), b"sessions", b"sk", sid, tag),
            state=self.unseal(_blob(r[12]), b"sessions", b"state", sid, tag),
        )

    def session_summary(self, r: Sequence[object]) -> SessionSummary:
        """A row of :data:`SESSION_SUMMARY_COLUMNS`, authenticated."""
        _tag, h = self._session_head(r)
        return SessionSummary(_blob(h[0]), _blob(h[1]), _text(h[2]), _blob(h[3]), bool(h[5]), bool(h[6]),
                              bool(h[7]), _int(h[8]), _int(h[9]))

    def session_summaries(self, rows: Sequence[Sequence[object]]) -> list[SessionSummary]:
        """Summaries of many rows for listing and upkeep: a row that fails authentication is left out (and
        logged), never used; the requests that need that session get its ``StoreCorrupt``."""
        out: list[SessionSummary] = []
        for r in rows:
            try:
                out.append(self.session_summary(r))
            except StoreCorrupt as exc:
                log.warning("state: ignoring a session row (%s)", exc)
        return out

    def session_peer(self, r: Sequence[object]) -> tuple[bytes, str]:
        """The installation of a row of :data:`SESSION_SUMMARY_COLUMNS`, authenticated."""
        _tag, h = self._session_head(r)
        return _blob(h[1]), _text(h[2])

    def installation(self, r: Sequence[object]) -> InstallationRecord:
        rec = InstallationRecord(
            identity=_blob(r[0]),
            installation_id=_text(r[1]),
            spk=None if r[2] is None else _blob(r[2]),
            spk_version=_int(r[3]),
            protocol_version=_int(r[4]),
            timestamp_ns=_int(r[5]),
            enabled=bool(_int(r[6])),
            first_seen_ns=_int(r[7]),
        )
        self._check("installations", (rec.identity, rec.installation_id, rec.spk, rec.spk_version,
                                      rec.protocol_version, rec.timestamp_ns, _int(r[6]), rec.first_seen_ns), r[8])
        return rec

    def own_spk(self, r: Sequence[object]) -> OwnSpkRecord:
        rec = OwnSpkRecord(_int(r[0]), _blob(r[1]), _int(r[2]), None if r[3] is None else _int(r[3]),
                           bool(_int(r[4])))
        self._check("own_spks", (rec.version, rec.public, rec.created_ns, rec.expired_ns, _int(r[4])), r[5])
        return rec

    def meta_value(self, key: str, value: object, mac: object) -> bytes:
        v = _blob(value)
        if key not in KEY_META:  # the key-wrapping rows are authenticated by the key check instead
            self._check("meta", (key, v), mac)
        return v

    def identity_time(self, table: str, r: Sequence[object]) -> tuple[bytes, int]:
        """A row of a table of (identity, time, mac): ``peer_replies`` and ``strangers``."""
        identity, at = _blob(r[0]), _int(r[1])
        self._check(table, (identity, at), r[2])
        return identity, at


def _typed(v: object) -> object:
    """A value as read back (PostgreSQL's bytea comes as a memoryview) in the type the MAC encodes."""
    return bytes(v) if isinstance(v, memoryview) else v
